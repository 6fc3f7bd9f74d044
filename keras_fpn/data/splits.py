"""Dataset splits of a config: the one place that reads ``data.train`` / ``data.val`` (+ include lists).

Training, ``evaluate``, ``compare``, calibration and QAT fine-tuning all load their
images through ``load_split``, so an include list means the same subset everywhere
(``keras_fpn.data.dataset.include_images`` holds the rule). ``evaluate`` and
``compare`` pick their set with ``load_eval_split``.
"""
from __future__ import annotations

from keras_fpn.data.dataset import DetectionDataset, drop_undecodable, include_images
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
        raise ValueError(f"{cfg.data.val}: data.val classes {list(val.label_map.names)} differ from the classes "
                         f"{list(train.label_map.names)} of data.train {cfg.data.train}")
    return train, val


def load_eval_split(cfg, data: str | None = None, include: str | None = None, *, labels=None,
                    where: str = "") -> DetectionDataset:
    """The set ``keras-fpn evaluate`` and ``compare`` measure on, without undecodable images.

    Args:
        cfg: the run's ``Config``.
        data: a dataset path (``--data``); default the config's ``data.val``.
        include: an include list (``--include``); default ``data.val_include`` when reading
            ``data.val``, none for ``--data``.
        labels: the run's class names; the dataset must have the same ones.
        where: what the error messages name (the run directory).

    Raises:
        ValueError: no ``data`` and no ``data.val``, or classes that differ from ``labels``.
        DataError: unreadable data or include list.
    """
    if not data and not cfg.data.val:
        raise ValueError(f"{where}: the config has no data.val; pass --data")
    if not data and include is None:
        include = cfg.data.val_include
    dataset = load_split(data or cfg.data.val, include, cfg.data.strict)
    if labels is not None and list(dataset.label_map.names) != list(labels):
        raise ValueError(f"{dataset.source}: dataset classes {list(dataset.label_map.names)} differ from "
                         f"the run's {list(labels)}")
    return drop_undecodable(dataset, cfg.data.strict)
