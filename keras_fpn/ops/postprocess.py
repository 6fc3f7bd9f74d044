"""Detection post-processing in TF: decode deltas, per-class NMS, top-k.

Conventions: boxes are normalized ``[ymin, xmin, ymax, xmax]`` float32;
``class_logits`` are sigmoid logits without a background column. The numpy
twin ``fpn_edge.postprocess.decode_detections`` implements the same rules and
returns the same numbers (a parity test checks it).

Rules (those of ``tf.image.combined_non_max_suppression``, whose CPU kernel
does the work):

1. Boxes are decoded from deltas and clipped to [0, 1]; score = sigmoid(logit).
2. Per class, a box is a candidate when its score is strictly greater than
   ``score_threshold``. The comparison is made on logits, ``logit >
   log(t / (1 - t))`` (the same test, since sigmoid is monotonic), so TF and
   numpy agree bit for bit whatever their sigmoid rounding.
3. Optional ``pre_nms_top_k``: per class, only the ``k`` highest-scoring
   candidates enter NMS. This bounds the NMS cost when a weak model scores many
   anchors above the threshold; it changes nothing when fewer than ``k``
   anchors of a class pass the threshold. ``None`` (no cap) costs
   ``B * A * C * 4`` floats of memory for the per-class boxes.
4. Greedy NMS per class in descending score: a candidate is dropped when its
   IoU with an already kept box of the same class is strictly greater than
   ``iou_threshold``; at most ``max_detections_per_class`` per class.
5. All kept boxes are sorted by descending score and the first
   ``max_detections`` returned, padded with zeros to ``max_detections`` rows.

Exactly equal scores (common with quantized models) are resolved the same way
in TF and numpy: within a class the lower anchor index goes first; in the final
merge the lower class, then the earlier NMS pick. (The TF kernel's own heap and
sort are not stable, so it is fed distinct rank values, see the code.)
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import tensorflow as tf

from keras_fpn.ops.box_coder import DEFAULT_SCALE_FACTORS, decode_boxes

__all__ = ["score_threshold_to_logit", "decode_detections"]


def score_threshold_to_logit(score_threshold: float) -> float:
    """Return the logit ``log(t / (1 - t))`` equivalent to a sigmoid score threshold.

    Args:
        score_threshold: threshold ``t`` on sigmoid scores.

    Returns:
        The logit threshold; ``-inf`` for ``t <= 0`` and ``inf`` for ``t >= 1``.
    """
    t = float(score_threshold)
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def _check_args(iou_threshold, max_detections_per_class, max_detections, pre_nms_top_k):
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if int(max_detections_per_class) < 1 or int(max_detections) < 1:
        raise ValueError("max_detections_per_class and max_detections must be >= 1, got "
                         f"{max_detections_per_class} and {max_detections}")
    if pre_nms_top_k is not None and int(pre_nms_top_k) < 1:
        raise ValueError(f"pre_nms_top_k must be >= 1 or None, got {pre_nms_top_k}")


def decode_detections(box_deltas, class_logits, anchors, *,
                      scale_factors: Sequence[float] = DEFAULT_SCALE_FACTORS,
                      score_threshold: float = 0.05, iou_threshold: float = 0.5,
                      max_detections_per_class: int = 100, max_detections: int = 100,
                      pre_nms_top_k: Optional[int] = 1000) -> dict:
    """Decode raw head outputs into final detections (see the module rules).

    Args:
        box_deltas: ``[B, A, 4]`` deltas ``(ty, tx, th, tw)``.
        class_logits: ``[B, A, C]`` sigmoid logits.
        anchors: ``[A, 4]`` normalized yxyx anchors.
        scale_factors: box coder ``(sy, sx, sh, sw)``.
        score_threshold: keep boxes with score > this.
        iou_threshold: suppress boxes with IoU > this against a kept box.
        max_detections_per_class: NMS output cap per class.
        max_detections: total cap per image (= N, the padded output size).
        pre_nms_top_k: per-class candidate cap before NMS; None disables.

    Returns:
        ``{"boxes": [B, N, 4] float32 (clipped to [0, 1]), "scores": [B, N]
        float32, "classes": [B, N] int32, "num_detections": [B] int32}``; rows
        at and after ``num_detections`` are zero.
    """
    _check_args(iou_threshold, max_detections_per_class, max_detections, pre_nms_top_k)
    n_out = int(max_detections)
    per_class_cap = int(max_detections_per_class)
    logits = tf.cast(tf.convert_to_tensor(class_logits), tf.float32)
    boxes = tf.clip_by_value(decode_boxes(box_deltas, anchors, scale_factors), 0.0, 1.0)
    num_anchors = tf.shape(logits)[1]
    num_classes = tf.shape(logits)[2]

    # Per class: candidates in rank order, by descending logit, ties -> lower
    # anchor index (top_k is stable). Rank 0 is the best.
    k = num_anchors if pre_nms_top_k is None else tf.minimum(int(pre_nms_top_k), num_anchors)
    per_class = tf.transpose(logits, [0, 2, 1])  # (B, A, C) -> (B, C, A)
    top_logits, top_idx = tf.math.top_k(per_class, k=k, sorted=True)  # (B, C, K)
    top_boxes = tf.gather(boxes, top_idx, batch_dims=1)  # (B, C, K, 4)
    # The NMS kernel ranks by score with an unstable heap. Feeding it K - rank
    # (distinct, exact in float32) instead of the score makes its visiting order
    # the rank order; non-candidates get 0, which fails its "> 0" test.
    rank_score = tf.cast(k - tf.range(k), tf.float32)  # (K,): K .. 1
    is_candidate = top_logits > score_threshold_to_logit(score_threshold)  # rule 2
    nms_scores = tf.where(is_candidate, rank_score, 0.0)  # (B, C, K)

    # Large enough to return every per-class selection: the merge is done below.
    total = num_classes * tf.minimum(per_class_cap, k)
    # The CPU kernel is pinned so every host gives the numpy twin's answer.
    with tf.device("/CPU:0"):
        nmsed = tf.image.combined_non_max_suppression(
            tf.transpose(top_boxes, [0, 2, 1, 3]),  # (B, C, K, 4) -> (B, K, C, 4)
            tf.transpose(nms_scores, [0, 2, 1]),  # (B, C, K) -> (B, K, C)
            max_output_size_per_class=per_class_cap,
            max_total_size=total,
            iou_threshold=float(iou_threshold),
            score_threshold=0.0,
            pad_per_class=False,
            clip_boxes=False)

    # Merge (rule 5) with a deterministic order: logit desc, then class, then rank.
    num_sel = tf.cast(nmsed.valid_detections, tf.int32)  # (B,)
    valid = tf.range(total)[None, :] < num_sel[:, None]  # (B, T)
    sel_class = tf.where(valid, tf.cast(nmsed.nmsed_classes, tf.int32), 0)
    sel_rank = tf.where(valid, k - tf.cast(nmsed.nmsed_scores, tf.int32), 0)
    sel_logit = tf.gather_nd(top_logits, tf.stack([sel_class, sel_rank], axis=-1), batch_dims=1)  # (B, T)
    tie_key = tf.where(valid, sel_class * k + sel_rank, num_classes * k)
    neg_logit = tf.where(valid, -sel_logit, math.inf)
    by_tie = tf.argsort(tie_key, axis=1, stable=True)
    by_logit = tf.argsort(tf.gather(neg_logit, by_tie, batch_dims=1), axis=1, stable=True)
    order = tf.gather(by_tie, by_logit, batch_dims=1)[:, :n_out]  # (B, <= N)
    pad = [[0, 0], [0, n_out - tf.shape(order)[1]]]

    def take(x, fill):
        x = tf.gather(x, order, batch_dims=1)
        paddings = pad + [[0, 0]] * (x.shape.rank - 2)
        return tf.pad(x, paddings, constant_values=fill)

    num = tf.minimum(num_sel, n_out)
    keep = tf.range(n_out)[None, :] < num[:, None]  # (B, N)
    out_boxes = take(nmsed.nmsed_boxes, 0.0)
    out_logits = take(sel_logit, 0.0)
    out_classes = take(sel_class, 0)
    out_boxes = tf.reshape(out_boxes, [-1, n_out, 4])  # static N for graph mode
    out_logits = tf.reshape(out_logits, [-1, n_out])
    out_classes = tf.reshape(out_classes, [-1, n_out])
    return {
        "boxes": tf.where(keep[..., None], out_boxes, 0.0),
        "scores": tf.where(keep, tf.sigmoid(out_logits), 0.0),
        "classes": tf.where(keep, out_classes, 0),
        "num_detections": num,
    }
