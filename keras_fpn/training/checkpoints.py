"""Checkpoint files of a run directory: written atomically and verified, read back with errors naming the file.

Every checkpoint (``best.*``, ``last.*``, the resume backup) is written to a
temporary file beside its target (``fpn_edge.atomic``), read back whole
(``verify_checkpoint``) and only then renamed over the target, so a kill or a
full disk leaves the previous file in place, never a truncated one.

The resume backup (``BackupEveryStepsAndEpoch``, in ``RUN/backup``) keeps Keras'
``BackupAndRestore`` behaviour (weights + optimizer state every N steps and at each
epoch end; an interrupted epoch restarts from its first batch) with a commit point:
the weights go to a new ``state-<n>.weights.h5``, then ``training_metadata.json``
is replaced by one naming that file, then older state files are removed. A kill
between any two steps leaves a backup whose weights and epoch belong together.
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import keras

from fpn_edge.atomic import atomic_path, write_json_atomic
from keras_fpn.rundir import RunDirError

#: the Keras file inside a ``.keras`` archive that holds the weights
KERAS_WEIGHTS_MEMBER = "model.weights.h5"
BACKUP_METADATA = "training_metadata.json"


def first_line(e: BaseException) -> str:
    """An exception's message on one line (whitespace runs folded), or its type name."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _read_h5(source) -> int:
    """Read every dataset of an HDF5 file (path or file object); return how many there are."""
    import h5py

    count = 0
    with h5py.File(source, "r") as h5:
        def visit(_, obj):
            nonlocal count
            if isinstance(obj, h5py.Dataset):
                obj[()]
                count += 1
        h5.visititems(visit)
    if not count:
        raise ValueError("it holds no weights")
    return count


def verify_checkpoint(path, *, what: str = "checkpoint") -> Path:
    """Check that a ``.weights.h5`` or ``.keras`` file reads back whole.

    Every HDF5 dataset is read (a truncated or corrupt file fails here rather than in
    Keras with a message that does not name it); a ``.keras`` archive's CRCs are
    checked and its weights read the same way.

    Returns:
        ``Path(path)``.

    Raises:
        RunDirError: a missing, truncated or corrupt file, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: {what} not found")
    try:
        if path.name.endswith(".keras"):
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise ValueError(f"member {bad} fails its CRC check")
                _read_h5(io.BytesIO(zf.read(KERAS_WEIGHTS_MEMBER)))
        else:
            _read_h5(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RunDirError(f"{path}: the {what} is truncated or corrupt ({first_line(e)})") from None
    return path


def load_checkpoint(model, path, *, what: str = "checkpoint") -> None:
    """``model.load_weights(path)`` after ``verify_checkpoint``: every failure names the file."""
    verify_checkpoint(path, what=what)
    try:
        model.load_weights(path)
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: the {what} does not fit this model ({first_line(e)})") from None


def save_checkpoint(model, path) -> Path:
    """Save ``model`` to ``path`` (``.keras``: the model; ``.weights.h5``: its weights), verified, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary name keeps the suffix Keras picks the format by
        if path.name.endswith(".weights.h5"):
            model.save_weights(tmp)
        else:
            model.save(tmp)
        verify_checkpoint(tmp)
    return path


def copy_checkpoint(src, dst) -> Path:
    """Copy a checkpoint file atomically and verify the copy (the best checkpoint = the last one)."""
    import shutil

    dst = Path(dst)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        verify_checkpoint(tmp)
    return dst


def complete_pair(model, run_dir, which: str) -> list:
    """Rewrite a missing ``{which}.weights.h5`` or ``{which}.keras`` from the other one (same weights).

    Returns:
        The files written (empty when both or neither exist).
    """
    run_dir = Path(run_dir)
    files = {kind: run_dir / f"{which}.{kind}" for kind in ("weights.h5", "keras")}
    have = [kind for kind, p in files.items() if p.is_file()]
    if len(have) != 1:
        return []
    missing = "keras" if have[0] == "weights.h5" else "weights.h5"
    load_checkpoint(model, files[have[0]])
    return [save_checkpoint(model, files[missing])]


def read_backup(backup_dir) -> dict | None:
    """The resume backup's metadata (``{"epoch", "batch", ...}``), or None when there is none.

    Raises:
        RunDirError: unreadable metadata, naming the file.
    """
    path = Path(backup_dir) / BACKUP_METADATA
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        int(meta["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{path}: the training backup is unreadable ({first_line(e)}); delete "
                          f"{path.parent} to restart the interrupted epoch from last.weights.h5") from None
    return meta


def finite_loss(logs) -> bool:
    """False when the epoch or batch logs carry a NaN / infinite ``loss`` (TerminateOnNaN stops then)."""
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


class BackupEveryStepsAndEpoch(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that saves every ``save_freq`` steps *and* at each epoch end
    (Keras saves at epoch ends only when ``save_freq="epoch"``), with the commit point of the
    module docstring, tagged with the training ``phase`` (a backup of another phase is stale
    and ignored). A state whose loss is not finite is not backed up. The backup is kept when
    ``fit`` ends: the caller records the finished phase first, then deletes it.

    ``after_restore(meta)`` is called when ``fit`` resumed from a backup taken at an epoch end
    (the model then holds that epoch's final weights).
    """

    def __init__(self, backup_dir, save_freq, *, phase: str = "", after_restore=None):
        super().__init__(str(backup_dir), save_freq=save_freq, delete_checkpoint=False)
        self.folder = Path(backup_dir)
        self.phase = phase
        self.after_restore = after_restore
        self._at_epoch_end = False

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        meta = read_backup(self.folder)
        if meta is None or meta.get("phase", self.phase) != self.phase:
            return
        weights = self.folder / meta.get("weights", "latest.weights.h5")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        load_checkpoint(self.model, weights, what="training backup")
        self.model._initial_epoch = int(meta["epoch"])
        if meta.get("epoch_end") and self.after_restore is not None:
            self.after_restore(meta)

    def on_epoch_end(self, epoch, logs=None):
        if not finite_loss(logs):
            return
        self._at_epoch_end = True
        try:
            super().on_epoch_end(epoch, logs)  # saves only when save_freq == "epoch"
            if self.save_freq != "epoch":
                self._save_model()
        finally:
            self._at_epoch_end = False

    def on_train_batch_end(self, batch, logs=None):
        if finite_loss(logs):
            super().on_train_batch_end(batch, logs)

    def _save_model(self):
        current = read_backup(self.folder) or {}
        generation = int(current.get("generation", 0)) + 1
        name = f"state-{generation}.weights.h5"
        save_checkpoint(self.model, self.folder / name)
        write_json_atomic(self.folder / BACKUP_METADATA,
                          {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name,
                           "generation": generation, "phase": self.phase, "epoch_end": self._at_epoch_end})
        for old in self.folder.glob("*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)
