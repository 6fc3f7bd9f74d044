"""Format detection: one entry point that reads any supported dataset."""
from __future__ import annotations

import glob
import os
from typing import Any, Optional, Union

from keras_fpn.data.dataset import DetectionDataset
from keras_fpn.data.images import DataError

FORMATS = ("coco", "voc", "yolo", "tfrecord")
_TFRECORD_EXTS = (".tfrecord", ".record", ".tfrec", ".tfrecords")


def detect_format(path: Union[str, os.PathLike]) -> str:
    """Name the format of a dataset path.

    Rules, in order: a ``.json`` file -> coco; a ``.tfrecord``/``.record``/
    ``.tfrec`` file, shard (``*-of-*``) or glob -> tfrecord; a folder with
    ``images/`` and ``labels/`` -> yolo; a folder with ``*.xml`` (directly or in
    ``Annotations``/``annotations``) -> voc.

    Args:
        path: File, folder or glob pattern.

    Returns:
        One of FORMATS.

    Raises:
        DataError: the path does not exist or matches no rule.
    """
    p = os.fspath(path)
    low = p.lower()
    if low.endswith(".json"):
        return "coco"
    base = os.path.basename(low)
    if base.endswith(_TFRECORD_EXTS) or "-of-" in base or any(
            ch in p for ch in "*?[") and any(e in low for e in _TFRECORD_EXTS):
        return "tfrecord"
    if os.path.isdir(p):
        if os.path.isdir(os.path.join(p, "images")) and os.path.isdir(os.path.join(p, "labels")):
            return "yolo"
        for sub in ("", "Annotations", "annotations"):
            if glob.glob(os.path.join(p, sub, "*.xml")):
                return "voc"
        raise DataError(f"{p}: cannot tell the dataset format (no images/+labels/, no *.xml); "
                        "pass a COCO .json file, a .tfrecord file, or format=")
    if not os.path.exists(p):
        raise DataError(f"{p}: dataset path not found")
    raise DataError(f"{p}: unknown dataset file type (expected .json or .tfrecord/.record)")


def read_dataset(path_or_spec: Union[str, os.PathLike, dict], *, format: Optional[str] = None,
                 strict: bool = False, **kwargs: Any) -> DetectionDataset:
    """Read a dataset in any supported format.

    Args:
        path_or_spec: A path (format detected by ``detect_format``), a
            ``"fmt:path"`` string (e.g. ``"voc:/data/x"``), or a dict
            ``{"format": ..., "path": ..., <reader kwargs>}``.
        format: Force a format (one of FORMATS).
        strict: Raise DataError at the first bad item.
        **kwargs: Passed to the reader (e.g. ``image_dir`` for COCO,
            ``class_names`` for VOC/YOLO/TFRecord).

    Returns:
        The DetectionDataset.
    """
    if isinstance(path_or_spec, dict):
        spec = dict(path_or_spec)
        path = spec.pop("path")
        format = spec.pop("format", format)
        strict = spec.pop("strict", strict)
        kwargs = {**spec, **kwargs}
    else:
        path = os.fspath(path_or_spec)
        head, sep, tail = path.partition(":")
        if sep and head in FORMATS and format is None:
            format, path = head, tail
    fmt = format or detect_format(path)
    if fmt == "coco":
        from keras_fpn.data.coco import read_coco
        return read_coco(path, strict=strict, **kwargs)
    if fmt == "voc":
        from keras_fpn.data.voc import read_voc
        return read_voc(path, strict=strict, **kwargs)
    if fmt == "yolo":
        from keras_fpn.data.yolo import read_yolo
        return read_yolo(path, strict=strict, **kwargs)
    if fmt == "tfrecord":
        from keras_fpn.data.tfrecord import read_tfrecord
        return read_tfrecord(path, strict=strict, **kwargs)
    raise DataError(f"{path}: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
