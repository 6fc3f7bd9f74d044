"""``keras-fpn train``: Model.fit with the run directory as the single artifact.

Training state survives a kill: ``BackupAndRestore`` saves weights, optimizer
state (including the step counter the LR schedule reads) and the epoch number
to ``RUN/backup`` every ``backup_every_steps`` steps and at each epoch end; a
rerun of the same command resumes from the last backup (the interrupted
epoch restarts from its first batch with the backed-up weights). Backbone
freezing for the first ``train.freeze_backbone_epochs`` epochs is a separate
``fit`` phase (Keras fixes the trainable set at compile time); ``RUN/state.json``
records which phase finished.

``train.strategy`` / ``train.mixed_precision`` (several GPUs or machines, float16 /
bfloat16 compute) are set up by ``keras_fpn.training.distribute``, whose docstring
states how batches, losses, BatchNorm, checkpoints and evaluation behave there; the
``default`` strategy without mixed precision is the single-device training unchanged.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras

from keras_fpn.config import Config, save_config
from keras_fpn.data.splits import load_datasets
from keras_fpn.models.factory import build_model
from keras_fpn.rundir import save_labels, with_num_classes, write_text_atomic
from keras_fpn.tasks import get_task
from keras_fpn.training import distribute
from keras_fpn.training.callbacks import BackupEveryStepsAndEpoch, EvalCheckpoint
from keras_fpn.training.optimizer import build_optimizer

BACKBONE_PREFIXES = ("fpn_", "head_", "box_deltas", "class_logits", "seg_", "image")


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


def precise_bn_batches(cfg: Config, train_set):
    """Un-augmented image batches of the first ``train.precise_bn_batches`` x ``batch_size``
    training images for precise BN (``recompute_bn_statistics``), or None when it is off."""
    if not cfg.train.precise_bn_batches:
        return None
    n = min(cfg.train.precise_bn_batches * cfg.train.batch_size, len(train_set))
    task = get_task(cfg.model.task)
    return task.pipeline(cfg, train_set.subset(range(n)), training=False).map(lambda x, y: x)


def new_model(cfg: Config, place, element_spec):
    """The model of ``cfg`` for training under ``place`` (``distribute.placement``): built in the
    strategy's scope, BatchNorm synchronized over several replicas, Keras' multi-worker
    work-arounds applied (``element_spec``: the training pipeline's)."""
    with place.scope():
        model = build_model(cfg.model)
    if place.replicas > 1:
        distribute.synchronize_batchnorm(model)
    if place.kind == "multi_worker":
        distribute.work_around_keras_multi_worker(model, element_spec)
    return model


def compile_model(model, cfg: Config, place, train_ds, steps_per_epoch: int, *, first_epoch: int = 0) -> None:
    """Compile ``model`` with the task's losses and the optimizer (``replicas`` of ``place``), build the
    optimizer and the loss trackers, and start the step counter at ``first_epoch``."""
    loss, weights = get_task(cfg.model.task).losses(cfg)
    with place.scope():
        model.compile(optimizer=build_optimizer(cfg, steps_per_epoch, replicas=place.replicas), loss=loss,
                      loss_weights=weights)
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(first_epoch * steps_per_epoch)  # the schedule continues across phases
        build_loss_trackers(model, train_ds)


def train(cfg: Config, run_dir: str | os.PathLike, *, backup_every_steps: int = 50, verbose: int | str = "auto") -> dict:
    """Train the detector or segmenter of ``cfg`` into ``run_dir`` (resuming if a backup exists).

    Returns:
      ``{"run_dir", "epochs", "seconds", "best": {...}, "eval": {...}}``.
    """
    place = distribute.placement(cfg.train)  # first: multi_worker starts TensorFlow's collective runtime
    with distribute.precision_policy(cfg.train.mixed_precision):
        return _train(cfg, Path(run_dir), place, backup_every_steps=backup_every_steps, verbose=verbose)


def _train(cfg: Config, run: Path, place, *, backup_every_steps: int, verbose) -> dict:
    task = get_task(cfg.model.task)
    out = place.write_dir(run)  # the run directory on the chief, a temporary one on other workers
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.train.seed)
    train_set, val_set = load_datasets(cfg)
    if val_set is None:
        train_set, val_set = train_set.split(0.1, seed=cfg.train.seed)
    cfg = with_num_classes(cfg, train_set.label_map.num_classes)
    if place.chief:
        save_config(cfg, run / "config.yaml")
        save_labels(run / "labels.txt", train_set.label_map.names)

    steps = cfg.train.steps_per_epoch or max(len(train_set) // cfg.train.batch_size, 1)
    train_ds = task.pipeline(cfg, train_set, training=True, deterministic=place.kind == "multi_worker").repeat()
    model = new_model(cfg, place, train_ds.element_spec)
    bn_batches = precise_bn_batches(cfg, train_set)
    if place.distributed:
        train_ds = distribute.distribute_options(train_ds)
        bn_batches = bn_batches if bn_batches is None else distribute.distribute_options(bn_batches)

    distribute.restore_from_chief(run, place)  # before the first fit only: no worker moves on without the chief
    state_path = run / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    freeze = min(cfg.train.freeze_backbone_epochs, cfg.train.epochs)
    phases = ([("frozen", 0, freeze)] if freeze else []) + [("full", freeze, cfg.train.epochs)]
    started = time.time()
    for phase, first, last in phases:
        if state.get("phase_done") == phase or (phase == "frozen" and state.get("phase_done") == "full"):
            continue
        if phase == "full" and state.get("phase_done") == "frozen":
            model.load_weights(run / "last.weights.h5")
        _set_backbone_trainable(model, phase != "frozen")
        compile_model(model, cfg, place, train_ds, steps, first_epoch=first)
        history = [keras.callbacks.CSVLogger(str(run / "history.csv"), append=True)] if place.chief else []
        board = [keras.callbacks.TensorBoard(str(run / "logs"), write_graph=False, profile_batch=0)] \
            if place.chief else []
        callbacks = [
            BackupEveryStepsAndEpoch(str(out / "backup"), save_freq=backup_every_steps),
            EvalCheckpoint(out, task.epoch_evaluator(val_set, cfg), every=cfg.train.eval_every,
                           last_epoch=cfg.train.epochs, monitor=cfg.train.checkpoint_metric, bn_batches=bn_batches,
                           bn_strategy=place.strategy if place.distributed else None, chief=place.chief),
            *history, keras.callbacks.TerminateOnNaN(), *board,
        ]
        val_ds = task.pipeline(cfg, val_set, training=False) if cfg.train.checkpoint_metric == "val_loss" else None
        if val_ds is not None and place.distributed:
            val_ds = distribute.distribute_options(val_ds)
        model.fit(train_ds, epochs=last, initial_epoch=first, steps_per_epoch=steps,
                  validation_data=val_ds, callbacks=callbacks, verbose=verbose, shuffle=False)
        if model.stop_training and not (out / "last.weights.h5").is_file():
            raise RuntimeError("training stopped (NaN loss) before the first epoch ended")
        state = {"phase_done": phase}
        if place.chief:
            _write_state(state_path, state)
    place.finish(run)
    best = json.loads((run / "best.json").read_text()) if (run / "best.json").is_file() else None
    evaluation = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else None
    return {"run_dir": str(run), "epochs": cfg.train.epochs, "seconds": time.time() - started,
            "best": best, "eval": evaluation}


def _write_state(path: Path, state: dict) -> None:
    write_text_atomic(path, json.dumps(state))

