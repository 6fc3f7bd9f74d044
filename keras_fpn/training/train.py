"""``keras-fpn train``: Model.fit with the run directory as the single artifact.

Training state survives a kill: ``BackupAndRestore`` saves weights, optimizer
state (including the step counter the LR schedule reads) and the epoch number
to ``RUN/backup`` every ``backup_every_steps`` steps and at each epoch end; a
rerun of the same command resumes from the last backup (the interrupted
epoch restarts from its first batch with the backed-up weights). Backbone
freezing for the first ``train.freeze_backbone_epochs`` epochs is a separate
``fit`` phase (Keras fixes the trainable set at compile time); ``RUN/state.json``
records which phase finished.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras

from keras_fpn.config import Config, save_config
from keras_fpn.data.splits import load_datasets
from keras_fpn.rundir import save_labels, with_num_classes, write_text_atomic
from keras_fpn.training.callbacks import (BackupEveryStepsAndEpoch, CocoEvalCheckpoint, SegEvalCheckpoint,
                                          WarmupCosine)

BACKBONE_PREFIXES = ("fpn_", "head_", "box_deltas", "class_logits", "seg_", "image")


def model_anchors(model_cfg):
    """The model's ``[A, 4]`` anchors (``keras_fpn.ops.anchors.model_anchors``, ``neck`` aware)."""
    from keras_fpn.ops.anchors import model_anchors as anchors_of

    return anchors_of(model_cfg)


def matcher_options(cfg: Config) -> dict:
    """``build_detection_dataset``'s anchor and matcher keywords of a config."""
    from keras_fpn.ops.anchors import model_level_sizes

    t = cfg.train
    return dict(anchors=model_anchors(cfg.model), matcher=t.matcher, positive_iou=t.positive_iou,
                negative_iou=t.negative_iou, level_sizes=model_level_sizes(cfg.model),
                atss_top_k=t.atss_top_k, scale_factors=tuple(cfg.model.box_scale_factors))


def training_pipeline(cfg: Config, dataset, *, training: bool, batch_size: int | None = None, seed=None,
                      deterministic: bool = False):
    """The tf.data pipeline of a config (shared by train and QAT fine-tuning); by ``model.task``.
    ``deterministic``: keep the element order under parallel maps (see the builders)."""
    from keras_fpn.data.augment import AugmentConfig
    from keras_fpn.data.pipeline import build_detection_dataset, build_segmentation_dataset
    from keras_fpn.models.backbones import NORMALIZATION

    augment = AugmentConfig(hflip=cfg.data.hflip, scale_jitter=cfg.data.scale_jitter,
                            photometric=cfg.data.photometric)
    if cfg.model.task == "segmentation":
        return build_segmentation_dataset(
            dataset, image_size=cfg.model.image_size, normalization=NORMALIZATION[cfg.model.backbone],
            batch_size=batch_size or cfg.train.batch_size, training=training,
            augment=augment if training else None, ignore_label=cfg.model.ignore_label,
            seed=cfg.train.seed if seed is None else seed, cache=cfg.data.cache, strict=cfg.data.strict,
            deterministic=deterministic)
    return build_detection_dataset(
        dataset, image_size=cfg.model.image_size, normalization=NORMALIZATION[cfg.model.backbone],
        batch_size=batch_size or cfg.train.batch_size, training=training,
        augment=augment if training else None, **matcher_options(cfg),
        seed=cfg.train.seed if seed is None else seed, cache=cfg.data.cache, strict=cfg.data.strict,
        deterministic=deterministic)


def losses(cfg: Config) -> tuple[dict, dict]:
    """``(losses, loss_weights)`` keyed by output name, for ``model.task``."""
    from keras_fpn.ops.losses import BoxLoss, FocalLoss

    t = cfg.train
    if cfg.model.task == "segmentation":
        from keras_fpn.ops.seg_losses import SegmentationLoss

        return ({"seg_logits": SegmentationLoss(ignore_label=cfg.model.ignore_label, dice_weight=t.dice_weight)},
                {"seg_logits": 1.0})
    return ({"box_deltas": BoxLoss(delta=t.box_loss_delta),
             "class_logits": FocalLoss(alpha=t.focal_alpha, gamma=t.focal_gamma)},
            {"box_deltas": t.box_loss_weight, "class_logits": 1.0})


def _optimizer(cfg: Config, schedule):
    t = cfg.train
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=t.momentum, weight_decay=t.weight_decay,
                                    clipnorm=t.clipnorm, nesterov=False)
    return keras.optimizers.AdamW(schedule, weight_decay=t.weight_decay, clipnorm=t.clipnorm)


def build_loss_trackers(model, data) -> None:
    """Create the compiled loss's per-output trackers eagerly, before ``fit`` traces the train step.

    With several outputs Keras 3 adds one ``Mean`` tracker per loss the first time the
    loss runs; on the TensorFlow backend without a distribution strategy that is inside
    the first trace of the train step, and a ``tf.function`` that creates variables is
    traced a second time. One loss call on zero targets and predictions of one example
    (shapes from ``data.element_spec`` and the model's outputs; nothing is read from the
    pipeline) builds them: the demo detector's first step took 36 s before, 20 s after.
    ``fit`` resets the trackers at each epoch.
    """
    specs = keras.tree.flatten(data.element_spec[1]) + keras.tree.flatten(model.output)
    if any(d is None for s in specs for d in s.shape[1:]):
        return  # a dynamic target shape: let the first trace build them

    def one_zero(spec):
        return keras.ops.zeros((1, *spec.shape[1:]), keras.backend.standardize_dtype(spec.dtype))

    model.compute_loss(y=keras.tree.map_structure(one_zero, data.element_spec[1]),
                       y_pred=keras.tree.map_structure(one_zero, model.output), training=False)


def _set_backbone_trainable(model, trainable: bool) -> None:
    for layer in model.layers:
        if not layer.name.startswith(BACKBONE_PREFIXES):
            layer.trainable = trainable


def _precise_bn_batches(cfg: Config, train_set):
    """Un-augmented image batches of the first training images for precise BN (or None)."""
    if not cfg.train.precise_bn_batches:
        return None
    n = min(cfg.train.precise_bn_batches * cfg.train.batch_size, len(train_set))
    return training_pipeline(cfg, train_set.subset(range(n)), training=False).map(lambda x, y: x)


def train(cfg: Config, run_dir: str | os.PathLike, *, backup_every_steps: int = 50, verbose: int | str = "auto") -> dict:
    """Train the detector or segmenter of ``cfg`` into ``run_dir`` (resuming if a backup exists).

    Returns:
      ``{"run_dir", "epochs", "seconds", "best": {...}, "eval": {...}}``.
    """
    from keras_fpn.models.factory import build_model

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.train.seed)
    train_set, val_set = load_datasets(cfg)
    if val_set is None:
        train_set, val_set = train_set.split(0.1, seed=cfg.train.seed)
    cfg = with_num_classes(cfg, train_set.label_map.num_classes)
    save_config(cfg, run / "config.yaml")
    save_labels(run / "labels.txt", train_set.label_map.names)

    steps = cfg.train.steps_per_epoch or max(len(train_set) // cfg.train.batch_size, 1)
    total = steps * cfg.train.epochs
    schedule = WarmupCosine(cfg.train.learning_rate, int(cfg.train.warmup_epochs * steps), total)
    train_ds = training_pipeline(cfg, train_set, training=True).repeat()
    model = build_model(cfg.model)
    loss, weights = losses(cfg)

    state_path = run / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    freeze = min(cfg.train.freeze_backbone_epochs, cfg.train.epochs)
    phases = ([("frozen", 0, freeze)] if freeze else []) + [("full", freeze, cfg.train.epochs)]
    evaluator = SegEvalCheckpoint if cfg.model.task == "segmentation" else CocoEvalCheckpoint
    started = time.time()
    for phase, first, last in phases:
        if state.get("phase_done") == phase or (phase == "frozen" and state.get("phase_done") == "full"):
            continue
        if phase == "full" and state.get("phase_done") == "frozen":
            model.load_weights(run / "last.weights.h5")
        _set_backbone_trainable(model, phase != "frozen")
        model.compile(optimizer=_optimizer(cfg, schedule), loss=loss, loss_weights=weights)
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(first * steps)  # the schedule continues across phases
        build_loss_trackers(model, train_ds)
        callbacks = [
            BackupEveryStepsAndEpoch(str(run / "backup"), save_freq=backup_every_steps),
            evaluator(run, val_set, cfg.model, every=cfg.train.eval_every,
                      last_epoch=cfg.train.epochs, monitor=cfg.train.checkpoint_metric,
                      bn_batches=_precise_bn_batches(cfg, train_set)),
            keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.TensorBoard(str(run / "logs"), write_graph=False, profile_batch=0),
        ]
        val_ds = training_pipeline(cfg, val_set, training=False) if cfg.train.checkpoint_metric == "val_loss" else None
        model.fit(train_ds, epochs=last, initial_epoch=first, steps_per_epoch=steps,
                  validation_data=val_ds, callbacks=callbacks, verbose=verbose, shuffle=False)
        if model.stop_training and not (run / "last.weights.h5").is_file():
            raise RuntimeError("training stopped (NaN loss) before the first epoch ended")
        state = {"phase_done": phase}
        _write_state(state_path, state)
    best = json.loads((run / "best.json").read_text()) if (run / "best.json").is_file() else None
    evaluation = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else None
    return {"run_dir": str(run), "epochs": cfg.train.epochs, "seconds": time.time() - started,
            "best": best, "eval": evaluation}


def _write_state(path: Path, state: dict) -> None:
    write_text_atomic(path, json.dumps(state))

