"""The self-describing run directory written by ``keras-fpn train``.

Layout::

    RUN/config.yaml          resolved config (model.num_classes filled in)
    RUN/labels.txt           one class name per line, contiguous id order (no background)
    RUN/fingerprint.json     the resolved config and labels trained with (+ SHA-256); another
                             config is refused by ``keras-fpn train`` unless --force
    RUN/best.weights.h5      best checkpoint (by train.checkpoint_metric)
    RUN/best.keras           the same, full Keras model
    RUN/last.weights.h5      weights at the end of the last finished epoch
    RUN/last.keras
    RUN/history.csv          per-epoch losses, learning rate, val metrics
    RUN/eval.json            COCO metrics (segmentation: mIoU, boundary F) of the best
                             checkpoint on the val split
    RUN/logs/                TensorBoard
    RUN/state.json           the training phase finished (frozen / full)
    RUN/backup/              the resume backup (``keras_fpn.training.checkpoints``; deleted when training ends)

Every later command (evaluate, predict, export, compare) takes just RUN.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from fpn_edge.atomic import write_text_atomic
from keras_fpn.config import Config, load_config


class RunDirError(ValueError):
    """The run directory is missing a file or is inconsistent."""


def save_labels(path: str | os.PathLike, names) -> None:
    write_text_atomic(path, "".join(f"{n}\n" for n in names))


def read_labels(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: labels file not found")
    return [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]


@dataclass(init=False, repr=False, eq=False)
class Run:
    """A run directory: its resolved config and labels (read at once), its checkpoints (on demand).

    ``Run(path)`` reads ``RUN/config.yaml`` and ``RUN/labels.txt``; a ``config`` or ``labels`` given
    replaces what is read (``dataclasses.replace(run, config=...)`` does that: the export-time
    overrides of ``keras-fpn export --set``).

    Attributes:
        path: the run directory.
        config: its ``Config``.
        labels: class names in contiguous class-id order (no background).

    Raises:
        RunDirError: the folder, ``config.yaml`` or ``labels.txt`` is missing, or they disagree on the
            number of classes.
    """

    path: Path
    config: Config
    labels: list

    def __init__(self, path: str | os.PathLike, config: Config | None = None, labels: list | None = None):
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path}: run directory not found")
        self.path = path
        self.config = config if config is not None else load_config(path / "config.yaml")
        self.labels = list(labels) if labels is not None else read_labels(path / "labels.txt")
        if self.config.model.num_classes != len(self.labels):
            raise RunDirError(f"{path}: config has {self.config.model.num_classes} classes but labels.txt has "
                              f"{len(self.labels)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def weights(self, which: str = "best") -> Path:
        p = self.path / f"{which}.weights.h5"
        if not p.is_file():
            raise RunDirError(f"{p}: checkpoint not found (has training finished an epoch?)")
        return p

    def build_model(self, *, which: str = "best", batch_size: int | None = None, ns=None):
        """Rebuild the model (detector or segmenter) from the config and load the ``which`` checkpoint.

        The checkpoint is read back first (``keras_fpn.training.checkpoints.verify_checkpoint``), so a
        missing, truncated or mismatched checkpoint is one ``RunDirError`` naming the file, for every
        command that opens a run (evaluate, predict, export, compare, the API)."""
        import keras

        from keras_fpn.models.factory import build_model
        from keras_fpn.training.checkpoints import first_line, verify_checkpoint

        path = verify_checkpoint(self.weights(which))
        model = build_model(self.config.model, ns=ns or keras, batch_size=batch_size, backbone_weights=None)
        try:
            model.load_weights(path)
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path}: the checkpoint does not fit the run's config.yaml ({first_line(e)})") from None
        return model


def open_run(path: str | os.PathLike) -> Run:
    """Read a run directory's config and labels (the model is built on demand)."""
    return Run(path)


def with_num_classes(cfg: Config, num_classes: int) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))


# --------------------------------------------------------------------------- fingerprint

#: ``RUN/fingerprint.json``: what the run was trained on (``write_fingerprint``)
FINGERPRINT = "fingerprint.json"
#: what a training writes into a run directory (``discard_training`` removes these, nothing else)
TRAINING_FILES = ("config.yaml", "labels.txt", FINGERPRINT, "state.json", "best.json", "eval.json", "history.csv",
                  "best.weights.h5", "best.keras", "last.weights.h5", "last.keras")
TRAINING_FOLDERS = ("backup", "logs")
_MISSING = "(absent)"


def fingerprint(cfg: Config, labels) -> str:
    """SHA-256 of the resolved config and the class names (canonical JSON): what a run's weights depend on."""
    import hashlib
    import json

    from keras_fpn.config import config_to_dict

    text = json.dumps({"config": config_to_dict(cfg), "labels": list(labels)}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_fingerprint(path: str | os.PathLike, cfg: Config, labels) -> None:
    """Record ``RUN/fingerprint.json``: the hash, the resolved config and the labels it covers."""
    from fpn_edge.atomic import write_json_atomic
    from keras_fpn.config import config_to_dict

    write_json_atomic(Path(path) / FINGERPRINT, {"sha256": fingerprint(cfg, labels), "config": config_to_dict(cfg),
                                                 "labels": list(labels)})


def _recorded(path: Path):
    """``(config dict, labels or None, sha256 or None)`` a run directory was trained with, or None."""
    import json

    import yaml

    record = path / FINGERPRINT
    try:
        if record.is_file():
            data = json.loads(record.read_text())
            return data["config"], data["labels"], data.get("sha256")
        if (path / "config.yaml").is_file():  # a run directory written before fingerprints
            labels = read_labels(path / "labels.txt") if (path / "labels.txt").is_file() else None
            return yaml.safe_load((path / "config.yaml").read_text()) or {}, labels, None
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise RunDirError(f"{record if record.is_file() else path / 'config.yaml'}: unreadable "
                          f"({' '.join(str(e).split())}); train into a new run directory or pass --force") from None
    return None


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def fingerprint_differences(path: str | os.PathLike, cfg: Config, labels) -> list | None:
    """How ``cfg`` and ``labels`` differ from what the run directory was trained with.

    Returns:
        None when ``path`` holds no training yet; else a list of ``"key: old -> new"`` texts,
        empty when the fingerprints match. A recorded config is read through today's
        schema first, so keys added since (with their defaults) are no difference.
    """
    from keras_fpn.config import ConfigError, config_from_dict, config_to_dict

    recorded = _recorded(Path(path))
    if recorded is None:
        return None
    old_config, old_labels, digest = recorded
    if digest is not None and digest == fingerprint(cfg, labels):
        return []
    try:
        old_config = config_to_dict(config_from_dict(old_config))
    except (ConfigError, TypeError):
        pass  # an old layout: compare the raw keys
    old, new = _flat(old_config), _flat(config_to_dict(cfg))
    diffs = [f"{key}: {old.get(key, _MISSING)!r} -> {new.get(key, _MISSING)!r}"
             for key in sorted(set(old) | set(new)) if old.get(key, _MISSING) != new.get(key, _MISSING)]
    if old_labels is not None and list(old_labels) != list(labels):
        diffs.append(f"labels: {list(old_labels)!r} -> {list(labels)!r}")
    return diffs


def discard_training(path: str | os.PathLike) -> None:
    """Remove what a training wrote into a run directory (``TRAINING_FILES``, ``TRAINING_FOLDERS``);
    exports, compare reports and any other file stay."""
    import shutil

    path = Path(path)
    for name in TRAINING_FILES:
        (path / name).unlink(missing_ok=True)
    for name in TRAINING_FOLDERS:
        shutil.rmtree(path / name, ignore_errors=True)
