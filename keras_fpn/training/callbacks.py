"""Learning-rate schedule and callbacks of ``keras-fpn train``."""
from __future__ import annotations

import json
import math
import weakref
from pathlib import Path

import keras

from fpn_edge.atomic import atomic_path


@keras.saving.register_keras_serializable(package="keras_fpn")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int):
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)
        self._traced = None   # (graph weakref, step object, rate tensor) of the last traced call

    def __call__(self, step):
        # Keras' AdamW asks for the rate once per variable (weight decay) while the train step
        # is traced: ~130 copies of the same ops cost ~5 s of tracing on the demo detector.
        # Within one graph the rate of the same step variable is one tensor: reuse it.
        import tensorflow as tf

        graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        if graph is not None and self._traced is not None and self._traced[0]() is graph \
                and self._traced[1] is step:
            return self._traced[2]
        rate = self._rate(step)
        if graph is not None:
            self._traced = (weakref.ref(graph), step, rate)
        return rate

    def _rate(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.base_lr * step / max(self.warmup_steps, 1)
        progress = keras.ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        cosine = 0.5 * self.base_lr * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


class BackupEveryStepsAndEpoch(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that saves every ``save_freq`` steps *and* at each epoch end
    (Keras saves at epoch ends only when ``save_freq="epoch"``)."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()


_BN_FORWARD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def recompute_bn_statistics(model, batches) -> int:
    """Precise BN: replace every BatchNorm's moving mean/variance by the average of
    its batch statistics over ``batches`` (an iterable of image batches), with the
    current weights frozen.

    Why: moving averages lag behind weights that still change quickly; measured on
    the synthetic demo, eval-mode AP50 went from 0.01 to 0.45 on the same weights.

    How: with every momentum set to 0 a training-mode forward pass leaves exactly
    that batch's mean and (biased) variance in the moving statistics; they are read
    after each batch and averaged. The forward pass is one compiled ``tf.function``
    (an eager call cost 13.5 s for 20 batches of 16 at 160 px), traced once per model.

    Returns:
      The number of batches used.
    """
    import numpy as np
    import tensorflow as tf

    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    saved = [l.momentum for l in bns]
    stats = [(l.moving_mean, l.moving_variance) for l in bns]
    before = [[np.asarray(v) for v in pair] for pair in stats]
    sums = [[np.zeros(v.shape, np.float64) for v in pair] for pair in stats]
    count = 0
    try:
        for layer in bns:
            layer.momentum = 0.0
        forward = _BN_FORWARD.get(model)
        if forward is None:  # traced once per model, always with momentum 0; holds no strong
            ref = weakref.ref(model)  # reference to the model, so the cache entry dies with it
            forward = _BN_FORWARD[model] = tf.function(lambda x: ref()(x, training=True))
        for count, images in enumerate(batches, start=1):
            forward(images)
            for acc, pair in zip(sums, stats):
                for a, v in zip(acc, pair):
                    a += np.asarray(v)
    except BaseException:  # leave the statistics as they were
        for old, pair in zip(before, stats):
            for o, v in zip(old, pair):
                v.assign(o)
        raise
    finally:
        for layer, momentum in zip(bns, saved):
            layer.momentum = momentum
    if count:
        for acc, pair in zip(sums, stats):
            for a, v in zip(acc, pair):
                v.assign((a / count).astype(np.float32))
    return count


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy a checkpoint file atomically (``fpn_edge.atomic``; the best checkpoint = the last one)."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _save_atomic(model, path: Path) -> None:
    """Save ``model`` to ``path`` (``.keras``: the model, ``.weights.h5``: its weights) atomically."""
    with atomic_path(path) as tmp:  # the temporary name keeps the suffix Keras picks the format by
        if path.name.endswith(".weights.h5"):
            model.save_weights(tmp)
        else:
            model.save(tmp)


class CocoEvalCheckpoint(keras.callbacks.Callback):
    """At each epoch end: save ``last.*``; every ``every`` epochs and at the last one,
    recompute BN statistics (precise BN, when ``bn_batches`` is given), COCO-evaluate on
    the val split and log ``val_AP``/``val_AP50`` into the epoch logs; when the monitored
    metric improved, save ``best.*`` and ``eval.json``.

    Monitors ``val_AP`` (higher is better, only on eval epochs) or ``val_loss``.
    Subclasses change what is evaluated by overriding ``evaluate`` and ``log_keys``.
    The best value survives restarts through ``RUN/best.json``.
    """

    def __init__(self, run_dir, val_dataset, model_cfg, *, every: int, last_epoch: int,
                 monitor: str, batch_size: int = 8, bn_batches=None):
        super().__init__()
        self.bn_batches = bn_batches  # a re-iterable of image batches for precise BN, or None
        self.run_dir = Path(run_dir)
        self.val_dataset = val_dataset
        self.model_cfg = model_cfg
        self.every = every
        self.last_epoch = last_epoch
        self.monitor = monitor
        self.batch_size = batch_size
        self._detect = None
        state = self.run_dir / "best.json"
        self.best = json.loads(state.read_text())["value"] if state.is_file() else None

    def _improved(self, value) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.monitor == "val_loss" else value > self.best

    #: the epoch-log columns ``evaluate`` fills (NaN on epochs without an evaluation)
    log_keys = ("val_AP", "val_AP50")

    def evaluate(self, epoch: int) -> tuple:
        """Evaluate the model on the val split: ``(metrics for eval.json, {log key: value})``."""
        from keras_fpn.evaluation import coco_evaluate, detection_function, predict_dataset

        if self._detect is None:  # traced once per training run, not once per evaluation
            self._detect = detection_function(self.model, self.model_cfg)
        results = predict_dataset(self.model, self.val_dataset, self.model_cfg, batch_size=self.batch_size,
                                  detect=self._detect)
        metrics = coco_evaluate(self.val_dataset, results)
        print(f"\nepoch {epoch + 1}: val AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  "
              f"AP_small {metrics['AP_small']:.4f}")
        return metrics, {"val_AP": metrics["AP"], "val_AP50": metrics["AP50"]}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        metrics = None
        step = int(self.model.optimizer.iterations.numpy())
        lr = self.model.optimizer.learning_rate
        logs["step"] = step
        logs["learning_rate"] = float(lr(step) if callable(lr) else lr)
        # Fixed CSV columns: NaN on epochs without an evaluation.
        logs.update({key: float("nan") for key in self.log_keys})
        is_eval = self.val_dataset is not None and (
            (self.every and (epoch + 1) % self.every == 0) or epoch + 1 == self.last_epoch)
        # Precise BN only where the statistics are used: an evaluation, the last epoch,
        # or a val_loss monitor (which may save best.* on any epoch). Training itself uses
        # batch statistics, so skipping it elsewhere changes no weight (and saved 2-3 s of
        # the demo's ~22 s epochs).
        if self.bn_batches is not None and (is_eval or epoch + 1 == self.last_epoch
                                            or self.monitor == "val_loss"):
            recompute_bn_statistics(self.model, self.bn_batches)
        if is_eval:
            metrics, values = self.evaluate(epoch)
            logs.update(values)
        _save_atomic(self.model, self.run_dir / "last.weights.h5")
        _save_atomic(self.model, self.run_dir / "last.keras")
        value = logs.get(self.monitor)
        if self._improved(value):
            self.best = float(value)
            for name in ("weights.h5", "keras"):  # the same weights: copy the files, do not save again
                _copy_atomic(self.run_dir / f"last.{name}", self.run_dir / f"best.{name}")
            _write_json(self.run_dir / "best.json", {"epoch": epoch + 1, "metric": self.monitor, "value": self.best})
            if metrics is not None:
                _write_json(self.run_dir / "eval.json", {"epoch": epoch + 1, "split": "val", **metrics})


class SegEvalCheckpoint(CocoEvalCheckpoint):
    """``CocoEvalCheckpoint`` for segmenters: logs ``val_mIoU`` and ``val_boundary_F``
    (``keras_fpn.seg_evaluation``) and monitors ``val_mIoU`` (higher is better) or ``val_loss``."""

    log_keys = ("val_mIoU", "val_boundary_F")

    def evaluate(self, epoch: int) -> tuple:
        from keras_fpn.seg_evaluation import evaluate_segmentation

        metrics = evaluate_segmentation(self.model, self.val_dataset, self.model_cfg, batch_size=self.batch_size)
        print(f"\nepoch {epoch + 1}: val mIoU {metrics['mIoU']:.4f}  boundary F@{metrics['boundary_tolerance_px']}px "
              f"{metrics['boundary_F']:.4f}")
        return metrics, {"val_mIoU": metrics["mIoU"], "val_boundary_F": metrics["boundary_F"]}


def _write_json(path: Path, data) -> None:
    from keras_fpn.rundir import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2))
