"""Dataset splits of a config: the one place that reads ``data.train`` / ``data.val`` (+ include lists).

Training, ``evaluate``, ``compare``, calibration and QAT fine-tuning all load their
images through ``load_split``, so an include list means the same subset everywhere
(``keras_fpn.data.dataset.include_images`` holds the rule).
"""
from __future__ import annotations

from keras_fpn.data.dataset import DetectionDataset, include_images
from keras_fpn.data.formats import read_dataset


def load_split(path: str, include: str | None = None, strict: bool = False) -> DetectionDataset:
    """Read one dataset (any supported format), keeping only the images named in ``include`` (if given)."""
    ds = read_dataset(path, strict=strict)
    return include_images(ds, include) if include else ds


def load_datasets(cfg) -> tuple:
    """``(train, val)`` datasets of a ``Config``; ``val`` is None when ``data.val`` is not set.

    Raises:
        ValueError: no ``data.train``, or the val classes differ from the train classes.
    """
    if not cfg.data.train:
        raise ValueError("data.train is not set (a COCO JSON, VOC folder, YOLO folder or TFRecord)")
    train = load_split(cfg.data.train, cfg.data.train_include, cfg.data.strict)
    val = load_split(cfg.data.val, cfg.data.val_include, cfg.data.strict) if cfg.data.val else None
    if val is not None and val.label_map.names != train.label_map.names:
        raise ValueError(f"val classes {val.label_map.names} differ from train classes {train.label_map.names}")
    return train, val
