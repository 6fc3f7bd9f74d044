"""Faster R-CNN box coder (TensorFlow; accepts numpy arrays or tensors).

Conventions: boxes and anchors are normalized ``[ymin, xmin, ymax, xmax]``
float32. With anchor centre/size ``(ya, xa, ha, wa)`` and box ``(y, x, h, w)``
the encoding is::

    ty = sy * (y - ya) / ha        tx = sx * (x - xa) / wa
    th = sh * log(h / ha)          tw = sw * log(w / wa)

with scale factors ``(sy, sx, sh, sw)``, ``(10, 10, 5, 5)`` by default (the
TF Object Detection API / TFLite ``TFLite_Detection_PostProcess`` setting).
``anchors`` is ``[A, 4]`` and broadcasts against any leading batch dims of
``boxes`` / ``deltas`` (``[..., A, 4]``).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

__all__ = ["DEFAULT_SCALE_FACTORS", "encode_boxes", "decode_boxes"]

DEFAULT_SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)

# Smallest box side used in log(h / ha): a zero-size (degenerate) box encodes
# to a large negative but finite th/tw instead of -inf.
_EPSILON = 1e-8


def _as_float32(x) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _centre_size(boxes: tf.Tensor):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, num=4, axis=-1)
    h = ymax - ymin
    w = xmax - xmin
    return ymin + 0.5 * h, xmin + 0.5 * w, h, w


def encode_boxes(boxes, anchors, scale_factors: Sequence[float] = DEFAULT_SCALE_FACTORS) -> tf.Tensor:
    """Encode boxes as regression deltas relative to anchors.

    Args:
        boxes: ``[..., A, 4]`` normalized yxyx boxes.
        anchors: ``[A, 4]`` normalized yxyx anchors.
        scale_factors: ``(sy, sx, sh, sw)``.

    Returns:
        ``[..., A, 4]`` float32 deltas ``(ty, tx, th, tw)``; box sides are
        clamped to at least 1e-8 before the log.
    """
    boxes = _as_float32(boxes)
    anchors = _as_float32(anchors)
    sy, sx, sh, sw = (float(s) for s in scale_factors)
    yc, xc, h, w = _centre_size(boxes)
    ya, xa, ha, wa = _centre_size(anchors)
    h = tf.maximum(h, _EPSILON)
    w = tf.maximum(w, _EPSILON)
    ty = sy * (yc - ya) / ha
    tx = sx * (xc - xa) / wa
    th = sh * tf.math.log(h / ha)
    tw = sw * tf.math.log(w / wa)
    return tf.stack([ty, tx, th, tw], axis=-1)


def decode_boxes(deltas, anchors, scale_factors: Sequence[float] = DEFAULT_SCALE_FACTORS) -> tf.Tensor:
    """Decode regression deltas into boxes (inverse of :func:`encode_boxes`).

    The size deltas are not clamped before ``exp`` (as in
    ``TFLite_Detection_PostProcess``); callers clip the boxes when needed.

    Args:
        deltas: ``[..., A, 4]`` deltas ``(ty, tx, th, tw)``.
        anchors: ``[A, 4]`` normalized yxyx anchors.
        scale_factors: ``(sy, sx, sh, sw)``.

    Returns:
        ``[..., A, 4]`` float32 normalized yxyx boxes (not clipped).
    """
    deltas = _as_float32(deltas)
    anchors = _as_float32(anchors)
    sy, sx, sh, sw = (float(s) for s in scale_factors)
    ty, tx, th, tw = tf.unstack(deltas, num=4, axis=-1)
    ya, xa, ha, wa = _centre_size(anchors)
    yc = ty / sy * ha + ya
    xc = tx / sx * wa + xa
    half_h = 0.5 * tf.exp(th / sh) * ha
    half_w = 0.5 * tf.exp(tw / sw) * wa
    return tf.stack([yc - half_h, xc - half_w, yc + half_h, xc + half_w], axis=-1)
