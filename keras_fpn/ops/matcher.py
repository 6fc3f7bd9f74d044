"""IoU matching of ground truth to anchors and training-target encoding (TF).

Conventions: boxes and anchors are normalized ``[ymin, xmin, ymax, xmax]``
float32; class ids are contiguous ``0..C-1``. Everything is vectorised TF with
dynamic ``N`` (number of ground-truth rows), so :func:`encode_targets` runs
inside ``tf.data.Dataset.map`` (graph mode).

Matching rule (RetinaNet, thresholds 0.5 / 0.4 by default):

1. Each anchor takes the ground-truth box with the highest IoU (ties: the
   lowest ground-truth row). IoU >= ``positive_iou`` -> positive;
   IoU < ``negative_iou`` -> background; in between -> ignored.
2. Force-match (``force_match=True``, as the TF Object Detection API's
   ``force_match_for_each_row``): every real ground-truth box also claims its
   own best anchor (ties: the lowest anchor index) as a positive, even below
   ``positive_iou``, so small or oddly shaped objects are never dropped. A
   forced claim overrides step 1 for that anchor. When several boxes claim the
   same anchor, the one with the highest IoU with it wins (ties: the lowest
   ground-truth row). Boxes whose best IoU is 0 (degenerate or outside every
   anchor) claim nothing.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from keras_fpn.ops.box_coder import DEFAULT_SCALE_FACTORS, encode_boxes

__all__ = ["box_iou", "encode_targets", "BACKGROUND", "IGNORE"]

BACKGROUND = -1.0
IGNORE = -2.0


def _area(boxes: tf.Tensor) -> tf.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a, b) -> tf.Tensor:
    """Pairwise intersection-over-union.

    Args:
        a: ``[N, 4]`` yxyx boxes.
        b: ``[M, 4]`` yxyx boxes.

    Returns:
        ``[N, M]`` float32 IoU; 0 where the union is empty.
    """
    a = tf.cast(tf.convert_to_tensor(a), tf.float32)
    b = tf.cast(tf.convert_to_tensor(b), tf.float32)
    a_ = a[:, None, :]  # (N, 1, 4)
    b_ = b[None, :, :]  # (1, M, 4)
    inter_h = tf.maximum(tf.minimum(a_[..., 2], b_[..., 2]) - tf.maximum(a_[..., 0], b_[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a_[..., 3], b_[..., 3]) - tf.maximum(a_[..., 1], b_[..., 1]), 0.0)
    inter = inter_h * inter_w
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def _first_argmax(values: tf.Tensor, axis: int):
    """Return (max, index of the first maximum) along ``axis`` (deterministic ties)."""
    best = tf.reduce_max(values, axis=axis)
    n = tf.shape(values, out_type=tf.int32)[axis]
    idx = tf.range(n, dtype=tf.int32)
    idx = idx[:, None] if axis == 0 else idx[None, :]
    hit = tf.equal(values, tf.expand_dims(best, axis))
    first = tf.reduce_min(tf.where(hit, idx, n), axis=axis)
    return best, first


def encode_targets(gt_boxes, gt_classes, anchors, *, positive_iou: float = 0.5,
                   negative_iou: float = 0.4, force_match: bool = True,
                   scale_factors: Sequence[float] = DEFAULT_SCALE_FACTORS) -> dict:
    """Match ground truth to anchors and encode the per-anchor training targets.

    Args:
        gt_boxes: ``[N, 4]`` normalized yxyx ground-truth boxes (N may be 0).
        gt_classes: ``[N]`` class ids; rows with a negative id are padding and
            are ignored.
        anchors: ``[A, 4]`` normalized yxyx anchors.
        positive_iou: IoU at or above which an anchor is positive (RetinaNet 0.5).
        negative_iou: IoU below which an anchor is background (RetinaNet 0.4).
        force_match: give every real box its best anchor (see module doc).
        scale_factors: box coder ``(sy, sx, sh, sw)``.

    Returns:
        ``{"box_deltas": [A, 5] float32 (ty, tx, th, tw, positive_weight),
        "class_logits": [A] float32}``: class id for positives, -1 background,
        -2 ignored. Deltas and weight are 0 on non-positive anchors.
    """
    if negative_iou > positive_iou:
        raise ValueError(f"negative_iou ({negative_iou}) must be <= positive_iou ({positive_iou})")
    anchors = tf.reshape(tf.cast(tf.convert_to_tensor(anchors), tf.float32), [-1, 4])
    gt_boxes = tf.reshape(tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32), [-1, 4])
    gt_classes = tf.reshape(tf.cast(tf.convert_to_tensor(gt_classes), tf.int32), [-1])

    valid = gt_classes >= 0
    gt_boxes = tf.boolean_mask(gt_boxes, valid)
    gt_classes = tf.boolean_mask(gt_classes, valid)
    num_gt = tf.shape(gt_boxes)[0]
    num_anchors = tf.shape(anchors)[0]

    iou = box_iou(gt_boxes, anchors)  # (N, A)
    # A sentinel row (IoU -1, background class, zero box) makes N == 0 work
    # without tf.cond: it only wins when there is no real row.
    iou_s = tf.concat([iou, -tf.ones([1, num_anchors], tf.float32)], axis=0)  # (N+1, A)
    boxes_s = tf.concat([gt_boxes, tf.zeros([1, 4], tf.float32)], axis=0)
    classes_s = tf.concat([gt_classes, tf.constant([-1], tf.int32)], axis=0)

    best_iou, matched = _first_argmax(iou_s, axis=0)  # (A,), (A,)
    positive = best_iou >= positive_iou

    if force_match:
        # Each real box's best anchor, ties -> lowest anchor index.
        row_best, row_anchor = _first_argmax(iou_s[:-1], axis=1)  # (N,), (N,)
        anchor_ids = tf.range(num_anchors, dtype=tf.int32)[None, :]
        claims = tf.logical_and(tf.equal(anchor_ids, row_anchor[:, None]),
                                (row_best > 0.0)[:, None])  # (N, A)
        claim_iou = tf.where(claims, iou, -1.0)
        claim_iou = tf.concat([claim_iou, -tf.ones([1, num_anchors], tf.float32)], axis=0)
        # Conflicts: highest IoU wins, ties -> lowest ground-truth row.
        forced_iou, forced_gt = _first_argmax(claim_iou, axis=0)
        forced = forced_iou > 0.0
        matched = tf.where(forced, forced_gt, matched)
        positive = tf.logical_or(positive, forced)

    ignore = tf.logical_and(tf.logical_not(positive), best_iou >= negative_iou)
    matched_classes = tf.cast(tf.gather(classes_s, matched), tf.float32)
    class_targets = tf.where(positive, matched_classes,
                             tf.where(ignore, IGNORE, BACKGROUND))

    deltas = encode_boxes(tf.gather(boxes_s, matched), anchors, scale_factors)
    deltas = tf.where(positive[:, None], deltas, 0.0)
    weight = tf.cast(positive, tf.float32)[:, None]
    return {
        "box_deltas": tf.concat([deltas, weight], axis=-1),
        "class_logits": class_targets,
    }
