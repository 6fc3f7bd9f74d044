"""``keras-fpn train``: Model.fit with the run directory as the single artifact.

Training state survives a kill or a full disk: the resume backup
(``keras_fpn.training.checkpoints.BackupEveryStepsAndEpoch``) saves weights,
optimizer state (including the step counter the LR schedule reads) and the epoch
number to ``RUN/backup`` every ``backup_every_steps`` steps and at each epoch end,
after that epoch's checkpoints are written and verified; a rerun of the same
command resumes from the last backup (the interrupted epoch restarts from its first
batch with the backed-up weights; its history rows are dropped and written again).
Backbone freezing for the first ``train.freeze_backbone_epochs`` epochs is a separate
``fit`` phase (Keras fixes the trainable set at compile time); ``RUN/state.json``
records which phase finished. ``RUN/fingerprint.json`` records the config and labels
the run was trained with; another config is refused unless ``force``.

``train.strategy`` / ``train.mixed_precision`` (several GPUs or machines, float16 /
bfloat16 compute) are set up by ``keras_fpn.training.distribute``, whose docstring
states how batches, losses, BatchNorm, checkpoints and evaluation behave there; the
``default`` strategy without mixed precision is the single-device training unchanged.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
from pathlib import Path

import keras

from fpn_edge.atomic import write_text_atomic
from keras_fpn.config import Config, config_yaml
from keras_fpn.data.dataset import drop_undecodable
from keras_fpn.data.splits import load_datasets
from keras_fpn.models.factory import build_model
from keras_fpn.rundir import (FINGERPRINT, RunDirError, discard_training, fingerprint_differences, read_labels,
                              save_labels, with_num_classes, write_fingerprint)
from keras_fpn.tasks import get_task
from keras_fpn.training import distribute
from keras_fpn.training.callbacks import EvalCheckpoint, HistoryCSV
from keras_fpn.training.checkpoints import BackupEveryStepsAndEpoch, complete_pair, load_checkpoint, read_backup
from keras_fpn.training.optimizer import build_optimizer
from keras_fpn.training.recipe import with_schedule
from keras_fpn.training.watch import watch_for

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


class TrainingError(ValueError):
    """Training cannot go on (a NaN loss, a run directory it cannot write); the message is one line."""


def train(cfg: Config, run_dir: str | os.PathLike, *, backup_every_steps: int = 50, verbose: int | str = "auto",
          force: bool = False) -> dict:
    """Train the detector or segmenter of ``cfg`` into ``run_dir`` (resuming if a backup exists).

    Nothing is written before the data, the run directory's fingerprint and the model are
    checked. A run directory trained with another config or other labels
    (``keras_fpn.rundir.fingerprint_differences``) is refused, naming the differences,
    unless ``force``: then its training is discarded (``discard_training``) and starts anew.

    Returns:
      ``{"run_dir", "epochs", "seconds", "best": {...}, "eval": {...}}``.

    Raises:
      RunDirError: another fingerprint, an unreadable checkpoint or backup, a file it cannot write.
      TrainingError: the loss became NaN (the checkpoints keep the last finite epoch).
    """
    place = distribute.placement(cfg.train)  # first: multi_worker starts TensorFlow's collective runtime
    with distribute.precision_policy(cfg.train.mixed_precision):
        return _train(cfg, Path(run_dir), place, backup_every_steps=backup_every_steps, verbose=verbose,
                      force=force)


def _train(cfg: Config, run: Path, place, *, backup_every_steps: int, verbose, force: bool) -> dict:
    task = get_task(cfg.model.task)
    out = place.write_dir(run)  # the run directory on the chief, a temporary one on other workers
    if run.exists() and not run.is_dir():
        raise RunDirError(f"{run}: exists and is not a directory")
    keras.utils.set_random_seed(cfg.train.seed)
    train_set, val_set = load_datasets(cfg)
    if val_set is None:
        train_set, val_set = train_set.split(0.1, seed=cfg.train.seed)
    val_set = drop_undecodable(val_set, cfg.data.strict)  # evaluation counts only images it can read
    if not len(val_set):
        raise ValueError(f"{cfg.data.val or cfg.data.train}: no validation image can be decoded")
    cfg = with_schedule(with_num_classes(cfg, train_set.label_map.num_classes), len(train_set))
    labels = train_set.label_map.names
    if place.chief:
        _claim(run, cfg, labels, force)

    steps = cfg.train.steps_per_epoch or max(len(train_set) // cfg.train.batch_size, 1)
    train_ds = task.pipeline(cfg, train_set, training=True, deterministic=place.kind == "multi_worker").repeat()
    model = new_model(cfg, place, train_ds.element_spec)  # a backbone weights error leaves the run directory as it was
    bn_batches = precise_bn_batches(cfg, train_set)
    if place.distributed:
        train_ds = distribute.distribute_options(train_ds)
        bn_batches = bn_batches if bn_batches is None else distribute.distribute_options(bn_batches)
    with _write_errors(run):
        if place.chief:
            _record(run, cfg, labels)
        out.mkdir(parents=True, exist_ok=True)
        distribute.restore_from_chief(run, place)  # before the first fit only: no worker moves on without the chief
        state = _start_state(run, out)
    freeze = min(cfg.train.freeze_backbone_epochs, cfg.train.epochs)
    phases = ([("frozen", 0, freeze)] if freeze else []) + [("full", freeze, cfg.train.epochs)]
    started = time.time()
    for phase, first, last in phases:
        if state.get("phase_done") == phase or (phase == "frozen" and state.get("phase_done") == "full"):
            continue
        if phase == "full" and state.get("phase_done") == "frozen":
            load_checkpoint(model, run / "last.weights.h5")
        _set_backbone_trainable(model, phase != "frozen")
        compile_model(model, cfg, place, train_ds, steps, first_epoch=first)
        checkpoint = EvalCheckpoint(out, task.epoch_evaluator(val_set, cfg), every=cfg.train.eval_every,
                                    last_epoch=cfg.train.epochs, monitor=cfg.train.checkpoint_metric,
                                    bn_batches=bn_batches, bn_strategy=place.strategy if place.distributed else None,
                                    chief=place.chief)
        # Order matters at each epoch end: checkpoints, history and logs first, the backup last, so that
        # the backup only marks an epoch finished once everything else of it is on disk.
        chief_only = [HistoryCSV(run / "history.csv"), watch_for(cfg, task, val_set, steps),
                      keras.callbacks.TensorBoard(str(run / "logs"), write_graph=False, profile_batch=0)]
        callbacks = [
            checkpoint,
            *(chief_only if place.chief else []),
            keras.callbacks.TerminateOnNaN(),
            BackupEveryStepsAndEpoch(out / "backup", backup_every_steps, phase=phase,
                                     after_restore=checkpoint.write_missing_last),
        ]
        val_ds = task.pipeline(cfg, val_set, training=False) if cfg.train.checkpoint_metric == "val_loss" else None
        if val_ds is not None and place.distributed:
            val_ds = distribute.distribute_options(val_ds)
        with _write_errors(run):
            if place.chief:
                _trim_history(run / "history.csv", _resume_epoch(out, phase, first))
            model.fit(train_ds, epochs=last, initial_epoch=first, steps_per_epoch=steps,
                      validation_data=val_ds, callbacks=callbacks, verbose=verbose, shuffle=False)
        if checkpoint.nan_epoch is not None:
            raise TrainingError(f"{run}: training stopped in epoch {checkpoint.nan_epoch}: the loss is NaN or "
                                "infinite; the checkpoints keep the last finished epoch (lower train.learning_rate "
                                "or raise train.warmup_epochs, in a new --run-dir or with --force)")
        state = {"phase_done": phase}
        with _write_errors(run):
            if place.chief:  # the chief's record is every worker's (all restart from the same phase)
                _write_state(run / "state.json", state)  # before the backup goes: a kill in between loses nothing
        shutil.rmtree(out / "backup", ignore_errors=True)
    with _write_errors(run):
        for which in ("last", "best") if place.chief else ():  # a finished run whose checkpoint lost a file
            complete_pair(model, run, which)
    place.finish(run)
    best = json.loads((run / "best.json").read_text()) if (run / "best.json").is_file() else None
    evaluation = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else None
    return {"run_dir": str(run), "epochs": cfg.train.epochs, "seconds": time.time() - started,
            "best": best, "eval": evaluation}


def _claim(run: Path, cfg: Config, labels, force: bool) -> None:
    """Refuse a run directory trained with another config or labels (or, with ``force``, discard it)."""
    try:
        diffs = fingerprint_differences(run, cfg, labels) if run.is_dir() else None
    except RunDirError:  # an unreadable record: refused like another config, unless force
        if not force:
            raise
        diffs = ["unreadable"]
    if not diffs:
        return
    if not force:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise RunDirError(f"{run}: trained with another config or dataset ({shown}); train into a new "
                          "--run-dir, or pass --force to discard its training and start anew")
    discard_training(run)


def _record(run: Path, cfg: Config, labels) -> None:
    """Write config.yaml, labels.txt and fingerprint.json where they are missing or differ."""
    run.mkdir(parents=True, exist_ok=True)
    config = run / "config.yaml"
    text = config_yaml(cfg)
    if not config.is_file() or config.read_text() != text:
        write_text_atomic(config, text)
    if not (run / "labels.txt").is_file() or read_labels(run / "labels.txt") != list(labels):
        save_labels(run / "labels.txt", labels)
    if fingerprint_differences(run, cfg, labels) != [] or not (run / FINGERPRINT).is_file():
        write_fingerprint(run, cfg, labels)


def _start_state(run: Path, out: Path) -> dict:
    """``state.json`` of the run, after removing what a killed process left in ``out`` (this
    process' write directory: ``run`` on the chief): temporary files of the atomic writer, and
    a backup of a training whose last phase is already recorded as done."""
    for folder in (out, out / "backup"):
        for tmp in folder.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
    state_path = run / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("phase_done") == "full":
        shutil.rmtree(out / "backup", ignore_errors=True)
    return state


def _resume_epoch(run: Path, phase: str, first: int) -> int:
    """The epoch ``fit`` starts at: the backup's, when it is of this phase; else the phase's first."""
    meta = read_backup(run / "backup")
    return int(meta["epoch"]) if meta is not None and meta.get("phase", phase) == phase else first


def _trim_history(path: Path, resume_epoch: int) -> None:
    """Drop history.csv rows of epochs the resumed ``fit`` trains again, and what a full disk or a
    kill left half written (a row without its line end, a torn header: then the file goes and
    the logger writes a new header)."""
    if not path.is_file():
        return
    lines = path.read_bytes().decode("utf-8", "replace").splitlines(keepends=True)  # keeps the logger's \r\n
    header = next(csv.reader(lines[:1]), [])
    if not lines or not lines[0].endswith("\n") or header[:1] != ["epoch"]:
        path.unlink()
        return
    keep = [lines[0]]
    for line in lines[1:]:
        row = next(csv.reader([line]), [])
        try:
            ok = len(row) == len(header) and line.endswith("\n") and int(row[0]) < resume_epoch
        except ValueError:
            ok = False
        if ok:
            keep.append(line)
    if len(keep) != len(lines):
        write_text_atomic(path, "".join(keep))


@contextlib.contextmanager
def _write_errors(run: Path):
    """An OSError (full disk, permissions) while training writes the run directory -> one-line RunDirError."""
    try:
        yield
    except OSError as e:
        raise RunDirError(f"{e.filename or run}: {e.strerror or e}; every finished epoch is kept: fix it and "
                          "rerun the same command to resume") from None


def _write_state(path: Path, state: dict) -> None:
    write_text_atomic(path, json.dumps(state))
