"""Training watches itself: one line when the loss has not fallen, or evaluation finds nothing.

Two checks, each a pure function of numbers (tested) and wired into ``fit`` by ``TrainingWatch``:

- ``stalled_loss``: after ``after_steps`` steps, the mean of the last ``window`` per-step
  losses must lie at least ``min_drop`` (a fraction) below the mean of the first ``window``.
  Measured (DESIGN.md, "Recipes"): a head that learns is 22-70 % below its start (1.13) after
  40-60 steps; the 80-class plateau of the old head init moved 2 % in 96 steps.
- ``no_detection``: an evaluation whose best score stays at or below
  ``model.postprocess.score_threshold`` finds nothing at all (AP 0.000 for want of any
  detection, not of good ones); the line reports the highest score seen.

Each says what to try, in one line, once per run (printed and logged on ``keras_fpn.training``).
"""
from __future__ import annotations

import logging
import math

import keras

logger = logging.getLogger("keras_fpn.training")

#: the loss ``TrainingWatch`` follows when the model has it (the detector's class loss), else ``loss``
WATCHED_LOSSES = ("class_logits_loss", "loss")


def stalled_loss(losses, *, after_steps: int, min_drop: float, window: int = 10, name: str = "loss") -> str | None:
    """The one-line warning when ``losses`` (per-step values, step 1 first) did not fall enough, else None.

    Nothing is said before ``after_steps`` values exist. ``first`` / ``last`` are the means of the
    first and last ``window`` values; the drop is ``1 - last / first``.
    """
    if len(losses) < after_steps or len(losses) < 2:
        return None
    window = max(1, min(window, len(losses) // 2))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    drop = 1.0 - last / first if first > 0 else 0.0
    if drop >= min_drop:
        return None
    if drop < 0:
        hint = "the loss rose: lower train.learning_rate or raise train.warmup_epochs"
    else:
        hint = ("still on its starting plateau: train longer (train.epochs), check the boxes with "
                "`keras-fpn data preview`, or raise train.learning_rate")
    change = round(-100 * drop, 1) + 0.0   # + 0.0: no "-0.0"
    return (f"train watch: {name} {first:.3f} -> {last:.3f} over the first {len(losses)} steps "
            f"({change:+.1f} %, expected at most {-100 * min_drop:.0f} %): {hint}")


def no_detection(max_score: float, score_threshold: float, epoch: int) -> str | None:
    """The one-line warning when no score of an evaluation exceeds ``score_threshold``, else None."""
    if max_score > score_threshold:
        return None
    return (f"train watch: epoch {epoch}: no detection above model.postprocess.score_threshold "
            f"{score_threshold:g} on the validation images (max score {max_score:.4f}): the model has not "
            "learned the classes yet; train longer (train.epochs), check the labels with `keras-fpn data "
            "preview`, or lower the threshold to see what it finds")


def max_class_score(model, batches) -> float | None:
    """The highest sigmoid class score of ``model`` over ``batches`` (images, or (images, ...) tuples);
    None for a model without a ``class_logits`` output (nothing to score)."""
    import numpy as np

    best = None
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        outputs = model(images, training=False)
        if not isinstance(outputs, dict) or "class_logits" not in outputs:
            return None
        top = float(np.max(np.asarray(outputs["class_logits"])))
        best = max(best or 0.0, 1.0 / (1.0 + math.exp(-top)))
    return best


class TrainingWatch(keras.callbacks.Callback):
    """Runs the two checks during ``fit``; each warns at most once per run.

    Args:
      after_steps: steps before the loss check (counted from this ``fit``'s first step).
      min_drop: the fraction the watched loss must have fallen by then.
      val_batches: re-iterable image batches of the validation split (for the highest score),
        or None to skip the detection check.
      score_threshold: ``model.postprocess.score_threshold``.
      say: where a warning goes (default: print and log).
    """

    def __init__(self, *, after_steps: int, min_drop: float = 0.1, val_batches=None,
                 score_threshold: float = 0.05, say=None):
        super().__init__()
        self.after_steps = int(after_steps)
        self.min_drop = float(min_drop)
        self.val_batches = val_batches
        self.score_threshold = float(score_threshold)
        self.say = say or _say
        self.losses: list = []
        self.warnings: list = []
        self._key = None
        self._epoch_sum = (0.0, 0)   # Keras logs the running mean of the epoch: undo it per step
        self._loss_done = False
        self._detect_done = False

    def on_train_begin(self, logs=None):
        # a resumed run or a later phase starts trained: its loss has nothing left to leave
        self._loss_done = self._loss_done or int(self.model.optimizer.iterations.numpy()) > 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_sum = (0.0, 0)

    def on_train_batch_end(self, batch, logs=None):
        if self._loss_done or not logs:
            return
        key = self._key or next((k for k in WATCHED_LOSSES if k in logs), None)
        if key is None:
            return
        self._key = key
        total, count = self._epoch_sum
        mean = float(logs[key])
        self.losses.append(mean * (count + 1) - total)
        self._epoch_sum = (mean * (count + 1), count + 1)
        if len(self.losses) >= self.after_steps:
            self._loss_done = True
            self._warn(stalled_loss(self.losses, after_steps=self.after_steps, min_drop=self.min_drop,
                                    name=key.replace("class_logits_loss", "class loss")))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        ap = logs.get("val_AP")
        if self._detect_done or self.val_batches is None or ap is None or math.isnan(ap) or ap > 0.0:
            return
        self._detect_done = True
        best = max_class_score(self.model, self.val_batches)
        if best is not None:
            self._warn(no_detection(best, self.score_threshold, epoch + 1))

    def _warn(self, line):
        if line:
            self.warnings.append(line)
            self.say(line)


def watch_for(cfg, task, val_set, steps_per_epoch: int) -> TrainingWatch:
    """The ``TrainingWatch`` of a run: the loss check after ``max(60, 2 x warmup)`` steps (at most the
    whole run), a 10 % drop required; the detection check on the validation images."""
    warmup = int(cfg.train.warmup_epochs * steps_per_epoch)
    after = min(cfg.train.epochs * steps_per_epoch, max(60, 2 * warmup))
    return TrainingWatch(after_steps=after, min_drop=0.1, val_batches=task.pipeline(cfg, val_set, training=False),
                         score_threshold=cfg.model.postprocess.score_threshold)


def _say(line: str) -> None:
    print("\n" + line, flush=True)
    logger.warning(line)
