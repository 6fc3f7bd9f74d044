"""Decoded examples for tf.data: DetectionRecord index -> image and annotation tensors.

Images are decoded by ``images.load_image`` (Pillow, EXIF transpose, RGB
rule) inside ``tf.numpy_function``, so training sees exactly the pixels
evaluation and the edge runtime see. An undecodable image is skipped with one
warning (or raises ``DataError`` with ``strict``). Segmentation examples also
carry the record's class map (``keras_fpn.data.masks.rasterize_class_map``).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import tensorflow as tf

from keras_fpn.data.dataset import DetectionDataset
from keras_fpn.data.images import DataError, load_image
from keras_fpn.data.masks import rasterize_class_map

logger = logging.getLogger("keras_fpn.data")


class _Loader:
    """numpy_function body: index -> decoded image and annotation arrays."""

    def __init__(self, dataset: DetectionDataset, strict: bool):
        self.records = dataset.records
        self.strict = strict
        self.warned: set = set()

    def __call__(self, index):
        r = self.records[int(index)]
        try:
            image = load_image(r.image_path)
            ok = True
        except DataError as e:
            if self.strict:
                raise
            if r.image_path not in self.warned:
                self.warned.add(r.image_path)
                logger.warning("%s; skipped image", e)
            image, ok = np.zeros((1, 1, 3), np.uint8), False
        return (image, r.boxes, r.classes, r.iscrowd, np.int64(r.image_id),
                np.array([r.height, r.width], np.int32), np.bool_(ok))


class _MaskLoader(_Loader):
    """``_Loader`` plus the record's class map (``keras_fpn.data.masks``) as a last output."""

    def __init__(self, dataset: DetectionDataset, strict: bool, ignore_label: int):
        super().__init__(dataset, strict)
        self.ignore_label = ignore_label

    def __call__(self, index):
        out = super().__call__(index)
        r = self.records[int(index)]
        mask = (rasterize_class_map(r, ignore_label=self.ignore_label) if out[-1]
                else np.zeros((1, 1), np.uint8))
        return (*out, mask)


def graph_only(fn):
    """Mark a tf.data map/filter function as plain graph code: tf.data would otherwise
    run autograph's source conversion on it and on everything it calls (no Python
    control flow on tensors here needs it). Building the demo's training pipeline
    took 12 s with the conversion (2 loaded cores)."""
    return tf.autograph.experimental.do_not_convert(fn)


def decode_dataset(dataset: DetectionDataset, indices: tf.data.Dataset, strict: bool,
                   deterministic: bool, ignore_label: Optional[int] = None) -> tf.data.Dataset:
    """The decoded examples of the records at ``indices`` (undecodable images left out).

    Args:
        dataset: The DetectionDataset.
        indices: tf.data.Dataset of int64 record indices.
        strict: An undecodable image raises instead of being skipped with a warning.
        deterministic: Keep the order of ``indices`` under the parallel map.
        ignore_label: When given, also decode the class map with this ignore value.

    Returns:
        tf.data.Dataset of dicts: "image" uint8 [h, w, 3] original image,
        "boxes" float32 [N, 4] (record boxes), "classes" int32 [N], "iscrowd"
        bool [N], "image_id" int64, "original_hw" int32 [2], "ok" bool; with
        ``ignore_label`` also "mask", the uint8 [h, w] class map.
    """
    masks = ignore_label is not None
    loader = _MaskLoader(dataset, strict, ignore_label) if masks else _Loader(dataset, strict)
    dtypes = [tf.uint8, tf.float32, tf.int32, tf.bool, tf.int64, tf.int32, tf.bool] + ([tf.uint8] if masks else [])

    @graph_only
    def load(i):
        out = tf.numpy_function(loader, [i], dtypes, stateful=False)
        image, boxes, classes, crowd, image_id, hw, ok = out[:7]
        ex = {"image": tf.ensure_shape(image, [None, None, 3]),
              "boxes": tf.ensure_shape(boxes, [None, 4]),
              "classes": tf.ensure_shape(classes, [None]),
              "iscrowd": tf.ensure_shape(crowd, [None]),
              "image_id": tf.ensure_shape(image_id, []),
              "original_hw": tf.ensure_shape(hw, [2]),
              "ok": tf.ensure_shape(ok, [])}
        if masks:
            ex["mask"] = tf.ensure_shape(out[7], [None, None])
        return ex

    ds = indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.filter(graph_only(lambda ex: ex["ok"]))
