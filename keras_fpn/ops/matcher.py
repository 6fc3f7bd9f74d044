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

ATSS rule (``matcher="atss"``, Zhang et al. 2020, "Bridging the Gap Between
Anchor-based and Anchor-free Detection"): instead of fixed thresholds, each
box picks its own from its candidates, so a box much smaller than the anchors
of its level still gets several positives (with RetinaNet's rule a 12 px box
has IoU 0.14 with a 32 px anchor: it only gets the force-matched one).

1. Candidates: on every level, the ``top_k`` anchors whose centres are
   nearest (in pixels) to the box centre.
2. Threshold: mean + standard deviation (n - 1) of the candidates' IoUs.
3. A candidate with IoU >= threshold whose centre lies strictly inside the box
   is positive. An anchor positive for several boxes takes the highest IoU
   (ties: the lowest ground-truth row). Every other anchor is background
   (no ignore band). Force-match (step 2 above) applies on top.
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


def _atss_positives(iou, gt_boxes, anchors, level_sizes: Sequence[int], top_k: int,
                    image_size: Sequence[int]) -> tf.Tensor:
    """``[N, A]`` bool: anchor a is an ATSS positive of box n (module doc, steps 1-3)."""
    h, w = float(image_size[0]), float(image_size[1])
    gt_centre = tf.stack([(gt_boxes[:, 0] + gt_boxes[:, 2]) * 0.5, (gt_boxes[:, 1] + gt_boxes[:, 3]) * 0.5], -1)
    a_centre = tf.stack([(anchors[:, 0] + anchors[:, 2]) * 0.5, (anchors[:, 1] + anchors[:, 3]) * 0.5], -1)
    d = (gt_centre[:, None, :] - a_centre[None, :, :]) * tf.constant([h, w], tf.float32)
    dist = tf.reduce_sum(tf.square(d), axis=-1)  # (N, A), squared pixels
    candidates, start = [], 0
    for size in level_sizes:
        _, idx = tf.math.top_k(-dist[:, start:start + size], k=min(int(top_k), int(size)), sorted=False)
        candidates.append(idx + start)
        start += size
    candidates = tf.concat(candidates, axis=1)  # (N, K)
    cand_iou = tf.gather(iou, candidates, batch_dims=1)  # (N, K)
    k = int(candidates.shape[1])
    mean = tf.reduce_mean(cand_iou, axis=1, keepdims=True)
    var = tf.reduce_sum(tf.square(cand_iou - mean), axis=1, keepdims=True) / max(k - 1, 1)
    cand_centre = tf.gather(a_centre, candidates)  # (N, K, 2)
    inside = tf.reduce_all(tf.logical_and(cand_centre > gt_boxes[:, None, :2], cand_centre < gt_boxes[:, None, 2:]), -1)
    chosen = tf.logical_and(cand_iou >= mean + tf.sqrt(var), inside)
    rows = tf.broadcast_to(tf.range(tf.shape(candidates)[0])[:, None], tf.shape(candidates))
    hits = tf.boolean_mask(tf.stack([rows, candidates], axis=-1), chosen)
    return tf.scatter_nd(hits, tf.ones(tf.shape(hits)[:1], tf.int32), tf.shape(iou)) > 0


def encode_targets(gt_boxes, gt_classes, anchors, *, matcher: str = "iou", positive_iou: float = 0.5,
                   negative_iou: float = 0.4, force_match: bool = True,
                   level_sizes: Sequence[int] | None = None, atss_top_k: int = 9,
                   image_size: Sequence[int] = (1, 1),
                   scale_factors: Sequence[float] = DEFAULT_SCALE_FACTORS) -> dict:
    """Match ground truth to anchors and encode the per-anchor training targets.

    Args:
        gt_boxes: ``[N, 4]`` normalized yxyx ground-truth boxes (N may be 0).
        gt_classes: ``[N]`` class ids; rows with a negative id are padding and
            are ignored.
        anchors: ``[A, 4]`` normalized yxyx anchors.
        matcher: ``"iou"`` (RetinaNet thresholds) or ``"atss"`` (see module doc).
        positive_iou: IoU at or above which an anchor is positive (RetinaNet 0.5; iou only).
        negative_iou: IoU below which an anchor is background (RetinaNet 0.4; iou only).
        force_match: give every real box its best anchor (see module doc).
        level_sizes: atss: anchors per pyramid level, in ``anchors`` order
            (``keras_fpn.ops.anchors.anchors_per_level``); they sum to A.
        atss_top_k: atss: candidates per level and box.
        image_size: atss: canvas ``(height, width)`` in pixels, for centre distances.
        scale_factors: box coder ``(sy, sx, sh, sw)``.

    Returns:
        ``{"box_deltas": [A, 5] float32 (ty, tx, th, tw, positive_weight),
        "class_logits": [A] float32}``: class id for positives, -1 background,
        -2 ignored. Deltas and weight are 0 on non-positive anchors.
    """
    if matcher not in ("iou", "atss"):
        raise ValueError(f"matcher must be 'iou' or 'atss', got {matcher!r}")
    if negative_iou > positive_iou:
        raise ValueError(f"negative_iou ({negative_iou}) must be <= positive_iou ({positive_iou})")
    anchors = tf.reshape(tf.cast(tf.convert_to_tensor(anchors), tf.float32), [-1, 4])
    gt_boxes = tf.reshape(tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32), [-1, 4])
    gt_classes = tf.reshape(tf.cast(tf.convert_to_tensor(gt_classes), tf.int32), [-1])

    valid = gt_classes >= 0
    gt_boxes = tf.boolean_mask(gt_boxes, valid)
    gt_classes = tf.boolean_mask(gt_classes, valid)
    num_anchors = tf.shape(anchors)[0]

    iou = box_iou(gt_boxes, anchors)  # (N, A)
    # A sentinel row (IoU -1, background class, zero box) makes N == 0 work
    # without tf.cond: it only wins when there is no real row.
    iou_s = tf.concat([iou, -tf.ones([1, num_anchors], tf.float32)], axis=0)  # (N+1, A)
    boxes_s = tf.concat([gt_boxes, tf.zeros([1, 4], tf.float32)], axis=0)
    classes_s = tf.concat([gt_classes, tf.constant([-1], tf.int32)], axis=0)

    if matcher == "atss":
        if level_sizes is None or sum(int(n) for n in level_sizes) != int(anchors.shape[0]):
            raise ValueError(f"matcher 'atss' needs level_sizes summing to the {anchors.shape[0]} anchors, "
                             f"got {level_sizes}")
        chosen = _atss_positives(iou, gt_boxes, anchors, level_sizes, atss_top_k, image_size)
        chosen_iou = tf.concat([tf.where(chosen, iou, -1.0), -tf.ones([1, num_anchors], tf.float32)], axis=0)
        _, matched = _first_argmax(chosen_iou, axis=0)
        positive = tf.reduce_any(chosen, axis=0)
        between = tf.zeros_like(positive)  # no ignore band: every other anchor is background
    else:
        best_iou, matched = _first_argmax(iou_s, axis=0)  # (A,), (A,)
        positive = best_iou >= positive_iou
        between = best_iou >= negative_iou

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

    ignore = tf.logical_and(tf.logical_not(positive), between)
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
