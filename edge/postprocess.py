"""Detection post-processing in numpy (no TensorFlow): decode, per-class NMS, top-k.

Conventions: boxes and anchors are normalized ``[ymin, xmin, ymax, xmax]``
float32; ``class_logits`` are sigmoid logits without a background column. The
box coder is Faster R-CNN's with scale factors ``(sy, sx, sh, sw)``::

    y = ty / sy * ha + ya      h = exp(th / sh) * ha      (same for x / w)

This is the numpy twin of ``keras_fpn.ops.postprocess.decode_detections`` and
follows the same rules (those of ``tf.image.combined_non_max_suppression``):

1. Boxes decoded and clipped to [0, 1]; score = sigmoid(logit).
2. Per class, candidates have score strictly greater than ``score_threshold``,
   tested on logits as ``logit > log(t / (1 - t))``.
3. Optional ``pre_nms_top_k``: per class, only the ``k`` best candidates
   (ties: lower anchor index) enter NMS.
4. Greedy NMS per class: a candidate is dropped when its IoU with a kept box
   is strictly greater than ``iou_threshold``; at most
   ``max_detections_per_class`` kept per class.
5. All kept boxes sorted by descending score (ties: class, then NMS rank), the
   first ``max_detections`` returned, zero-padded to ``max_detections`` rows.

Arithmetic is float32 in the same operation order as TF, so boxes agree to
float32 rounding of ``exp`` and IoUs are computed exactly like TF's kernel.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "DEFAULT_SCALE_FACTORS",
    "score_threshold_to_logit",
    "sigmoid",
    "decode_boxes",
    "nms",
    "batched_nms",
    "decode_detections",
]

DEFAULT_SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)


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


def sigmoid(x) -> np.ndarray:
    """Return the float32 logistic function of ``x`` without overflow warnings.

    Args:
        x: array of logits.

    Returns:
        float32 array of the same shape.
    """
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def decode_boxes(deltas, anchors, scale_factors: Sequence[float] = DEFAULT_SCALE_FACTORS) -> np.ndarray:
    """Decode regression deltas into boxes.

    Args:
        deltas: ``[..., A, 4]`` deltas ``(ty, tx, th, tw)``.
        anchors: ``[A, 4]`` normalized yxyx anchors.
        scale_factors: ``(sy, sx, sh, sw)``.

    Returns:
        ``[..., A, 4]`` float32 normalized yxyx boxes (not clipped).
    """
    deltas = np.asarray(deltas, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    sy, sx, sh, sw = (float(s) for s in scale_factors)
    ha = anchors[..., 2] - anchors[..., 0]
    wa = anchors[..., 3] - anchors[..., 1]
    ya = anchors[..., 0] + 0.5 * ha
    xa = anchors[..., 1] + 0.5 * wa
    ty, tx, th, tw = (deltas[..., i] for i in range(4))
    yc = ty / sy * ha + ya
    xc = tx / sx * wa + xa
    with np.errstate(over="ignore"):  # huge size deltas give inf, clipped later
        half_h = 0.5 * np.exp(th / sh) * ha
        half_w = 0.5 * np.exp(tw / sw) * wa
    return np.stack([yc - half_h, xc - half_w, yc + half_h, xc + half_w], axis=-1).astype(np.float32)


def batched_nms(boxes, scores, *, iou_threshold: float, max_output_size: int,
                score_threshold: float = -math.inf, top_k: Optional[int] = None) -> list:
    """Greedy NMS run independently for each row of ``scores`` (one row per class).

    IoU is computed in float32 in the operation order of TF's NMS kernel (a box
    with zero area overlaps nothing), so keep/suppress decisions match TF bit
    for bit. All classes advance in lock-step (one pick per class per step),
    which keeps the numpy work vectorised when many classes are busy.

    Args:
        boxes: ``[A, 4]`` yxyx boxes shared by all classes (corner order is
            canonicalized per box).
        scores: ``[C, A]`` ranking values (scores or logits) per class.
        iou_threshold: drop a box whose IoU with a kept box of its class is > this.
        max_output_size: maximum number of boxes kept per class.
        score_threshold: only boxes with score > this are candidates.
        top_k: per class, keep only the ``top_k`` best candidates before NMS
            (None: all).

    Returns:
        List of ``C`` int64 arrays of indices into ``boxes``, each in descending
        score (ties: lower index first) and at most ``max_output_size`` long.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    num_classes = scores.shape[0]
    threshold = np.float32(score_threshold)
    per_class = []
    for row in scores:
        cand = np.flatnonzero(row > threshold)
        # Stable sort of the negated scores: descending, ties -> lower index first.
        cand = cand[np.argsort(-row[cand], kind="stable")]
        per_class.append(cand if top_k is None else cand[:int(top_k)])
    width = max((len(c) for c in per_class), default=0)
    if width == 0 or max_output_size < 1:
        return [np.zeros((0,), np.int64) for _ in range(num_classes)]

    # Candidates padded to (C, K), in rank order per class.
    index = np.zeros((num_classes, width), np.int64)
    alive = np.zeros((num_classes, width), bool)
    for c, cand in enumerate(per_class):
        index[c, :len(cand)] = cand
        alive[c, :len(cand)] = True
    cb = boxes[index]  # (C, K, 4)
    ymin = np.minimum(cb[..., 0], cb[..., 2])
    ymax = np.maximum(cb[..., 0], cb[..., 2])
    xmin = np.minimum(cb[..., 1], cb[..., 3])
    xmax = np.maximum(cb[..., 1], cb[..., 3])
    area = (ymax - ymin) * (xmax - xmin)
    thr = np.float32(iou_threshold)
    zero = np.float32(0)

    picks = np.full((num_classes, int(max_output_size)), -1, np.int64)
    # Classic form of the greedy loop: pick the best remaining box, drop the
    # remaining ones that overlap it. Same result as TF's candidate-by-candidate
    # loop: the visiting order is the same and this IoU is symmetric bit for bit.
    for step in range(int(max_output_size)):
        active = np.flatnonzero(alive.any(axis=1))  # once empty, a class stays empty
        if active.size == 0:
            break
        first = alive[active].argmax(axis=1)  # first alive = best remaining
        picks[active, step] = index[active, first]
        alive[active, first] = False
        sel = (active, first)
        rows = (active, slice(None))
        inter_h = np.minimum(ymax[sel][:, None], ymax[rows]) - np.maximum(ymin[sel][:, None], ymin[rows])
        inter_w = np.minimum(xmax[sel][:, None], xmax[rows]) - np.maximum(xmin[sel][:, None], xmin[rows])
        inter = np.maximum(inter_h, zero) * np.maximum(inter_w, zero)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (area[sel][:, None] + area[rows] - inter)
        # TF's IoU is 0 when either box has zero area: no suppression then.
        # (A zero-area other box already has inter == 0, hence IoU 0.)
        suppress = (iou > thr) & (area[sel] > 0)[:, None]
        alive[active] &= ~suppress
    return [row[row >= 0] for row in picks]


def nms(boxes, scores, *, iou_threshold: float, max_output_size: int,
        score_threshold: float = -math.inf, top_k: Optional[int] = None) -> np.ndarray:
    """Greedy single-class non-maximum suppression (see :func:`batched_nms`).

    Args:
        boxes: ``[K, 4]`` yxyx boxes.
        scores: ``[K]`` ranking values (scores or logits).
        iou_threshold: drop a box whose IoU with a kept box is > this.
        max_output_size: maximum number of boxes kept.
        score_threshold: only boxes with score > this are candidates.
        top_k: keep only the ``top_k`` best candidates before NMS (None: all).

    Returns:
        ``[M]`` int64 indices into ``boxes`` of the kept boxes, in descending
        score (ties: lower index first), ``M <= max_output_size``.
    """
    scores = np.asarray(scores, dtype=np.float32).reshape(1, -1)
    return batched_nms(boxes, scores, iou_threshold=iou_threshold, max_output_size=max_output_size,
                       score_threshold=score_threshold, top_k=top_k)[0]


def decode_detections(box_deltas, class_logits, anchors, *,
                      scale_factors: Sequence[float] = DEFAULT_SCALE_FACTORS,
                      score_threshold: float = 0.05, iou_threshold: float = 0.5,
                      max_detections_per_class: int = 100, max_detections: int = 100,
                      pre_nms_top_k: Optional[int] = 1000) -> dict:
    """Decode one image's raw head outputs into final detections (module rules).

    Args:
        box_deltas: ``[A, 4]`` or ``[1, A, 4]`` deltas ``(ty, tx, th, tw)``.
        class_logits: ``[A, C]`` or ``[1, A, C]`` sigmoid logits.
        anchors: ``[A, 4]`` normalized yxyx anchors.
        scale_factors: box coder ``(sy, sx, sh, sw)``.
        score_threshold: keep boxes with score > this.
        iou_threshold: suppress boxes with IoU > this against a kept box.
        max_detections_per_class: NMS output cap per class.
        max_detections: total cap (= N, the padded output size).
        pre_nms_top_k: per-class candidate cap before NMS; None disables.

    Returns:
        ``{"boxes": [N, 4] float32 (clipped to [0, 1]), "scores": [N] float32,
        "classes": [N] int32, "num_detections": int}``; rows at and after
        ``num_detections`` are zero.
    """
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if int(max_detections_per_class) < 1 or int(max_detections) < 1:
        raise ValueError("max_detections_per_class and max_detections must be >= 1, got "
                         f"{max_detections_per_class} and {max_detections}")
    if pre_nms_top_k is not None and int(pre_nms_top_k) < 1:
        raise ValueError(f"pre_nms_top_k must be >= 1 or None, got {pre_nms_top_k}")
    deltas = _single_image(box_deltas, "box_deltas")
    logits = _single_image(class_logits, "class_logits")
    anchors = np.asarray(anchors, dtype=np.float32)
    if deltas.shape[0] != logits.shape[0] or deltas.shape[0] != anchors.shape[0] or deltas.shape[-1] != 4:
        raise ValueError(f"shape mismatch: box_deltas {deltas.shape}, class_logits {logits.shape}, "
                         f"anchors {anchors.shape} (expected [A, 4], [A, C], [A, 4])")
    boxes = np.clip(decode_boxes(deltas, anchors, scale_factors), np.float32(0), np.float32(1))
    logit_threshold = score_threshold_to_logit(score_threshold)

    kept = batched_nms(boxes, logits.T, iou_threshold=iou_threshold,
                       max_output_size=int(max_detections_per_class),
                       score_threshold=logit_threshold, top_k=pre_nms_top_k)
    # Class-major concatenation, each class in NMS pick order.
    sel_class = np.concatenate([np.full(k.shape, c, np.int32) for c, k in enumerate(kept)] or
                               [np.zeros((0,), np.int32)])
    sel_anchor = np.concatenate(kept or [np.zeros((0,), np.int64)])

    n_out = int(max_detections)
    out_boxes = np.zeros((n_out, 4), np.float32)
    out_scores = np.zeros((n_out,), np.float32)
    out_classes = np.zeros((n_out,), np.int32)
    sel_logit = logits[sel_anchor, sel_class]
    order = np.argsort(-sel_logit, kind="stable")[:n_out]  # ties -> class, then pick order
    num = int(order.size)
    out_boxes[:num] = boxes[sel_anchor[order]]
    out_scores[:num] = sigmoid(sel_logit[order])
    out_classes[:num] = sel_class[order]
    return {"boxes": out_boxes, "scores": out_scores, "classes": out_classes, "num_detections": num}


def _single_image(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(f"{name}: expected one image ([1, A, k] or [A, k]), got shape {x.shape}")
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected [A, k] or [1, A, k], got shape {x.shape}")
    return x
