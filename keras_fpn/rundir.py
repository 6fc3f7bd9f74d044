"""The self-describing run directory written by ``keras-fpn train``.

Layout::

    RUN/config.yaml          resolved config (model.num_classes filled in)
    RUN/labels.txt           one class name per line, contiguous id order (no background)
    RUN/best.weights.h5      best checkpoint (by train.checkpoint_metric)
    RUN/best.keras           the same, full Keras model
    RUN/last.weights.h5      weights at the end of the last finished epoch
    RUN/last.keras
    RUN/history.csv          per-epoch losses, learning rate, val metrics
    RUN/eval.json            COCO metrics (segmentation: mIoU, boundary F) of the best
                             checkpoint on the val split
    RUN/logs/                TensorBoard
    RUN/backup/              BackupAndRestore state (deleted when training ends)

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


@dataclass(frozen=True)
class Run:
    path: Path
    config: Config
    labels: list

    def weights(self, which: str = "best") -> Path:
        p = self.path / f"{which}.weights.h5"
        if not p.is_file():
            raise RunDirError(f"{p}: checkpoint not found (has training finished an epoch?)")
        return p

    def build_model(self, *, which: str = "best", batch_size: int | None = None, ns=None):
        """Rebuild the model (detector or segmenter) from the config and load the ``which`` checkpoint."""
        import keras

        from keras_fpn.models.factory import build_model

        model = build_model(self.config.model, ns=ns or keras, batch_size=batch_size, backbone_weights=None)
        model.load_weights(self.weights(which))
        return model


def open_run(path: str | os.PathLike) -> Run:
    """Read a run directory's config and labels (the model is built on demand)."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: run directory not found")
    cfg = load_config(path / "config.yaml")
    labels = read_labels(path / "labels.txt")
    if cfg.model.num_classes != len(labels):
        raise RunDirError(f"{path}: config has {cfg.model.num_classes} classes but labels.txt has {len(labels)}")
    return Run(path=path, config=cfg, labels=labels)


def with_num_classes(cfg: Config, num_classes: int) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))
