"""``keras-fpn compare`` for detectors: COCO metrics, *changed detections*, the detection plot.

*Changed detections* (per variant, against the float Keras model): every float
detection with score >= ``CONFIDENT`` (0.3) is paired with the variant's
confident detection of the same class with the highest IoU (a box often
carries several classes, so the same class is looked for first). It is
**moved** when that IoU is in [``MATCH_IOU`` = 0.5, ``MOVED_IOU`` = 0.9) (the box
moved by more than ~5 % of its size), **changed class** when no same-class
detection has IoU >= 0.5 but one of another class does, and **lost** otherwise.
Confident variant detections that pair with no float detection are **new**.
Boxes are COCO results (``[x, y, w, h]`` in original-image pixels).
"""
from __future__ import annotations

import numpy as np

from keras_fpn.compare.report import TaskReport

CONFIDENT = 0.3
MATCH_IOU = 0.5
MOVED_IOU = 0.9
#: the keys of a detection variant's row in report.json, in order
REPORT_KEYS = ("variant", "file", "size_bytes", "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
               "AP_ratio", "per_class", "latency_ms_p50", "latency_ms_p90", "threads", "changes")


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [N, 4] vs b [M, 4]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _confident(results: list) -> dict:
    """image_id -> (xyxy boxes, category ids) of detections with score >= CONFIDENT."""
    out = {}
    for r in results:
        if r["score"] >= CONFIDENT:
            x, y, w, h = r["bbox"]
            out.setdefault(r["image_id"], []).append((x, y, x + w, y + h, r["category_id"]))
    return {k: (np.array([v[:4] for v in vals], np.float32), np.array([v[4] for v in vals]))
            for k, vals in out.items()}


def detection_changes(reference: list, variant: list) -> dict:
    """Count lost / changed-class / moved / new confident detections (see module doc)."""
    ref, var = _confident(reference), _confident(variant)
    counts = {"reference": 0, "lost": 0, "changed_class": 0, "moved": 0, "new": 0}
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), int))
    for image_id in set(ref) | set(var):
        (rb, rc), (vb, vc) = ref.get(image_id, empty), var.get(image_id, empty)
        iou = _iou_matrix(rb, vb)
        counts["reference"] += len(rb)
        for i in range(len(rb)):
            same = np.where(vc == rc[i], iou[i], -1.0) if len(vb) else np.zeros(0)
            if len(same) and same.max() >= MATCH_IOU:  # same class first: boxes often carry several classes
                counts["moved"] += int(same.max() < MOVED_IOU)
            elif len(vb) and iou[i].max() >= MATCH_IOU:
                counts["changed_class"] += 1
            else:
                counts["lost"] += 1
        if len(vb):
            counts["new"] += int((iou.max(axis=0, initial=0.0) < MATCH_IOU).sum() if len(rb) else len(vb))
    return counts


def _detection_keras(model, dataset, cfg):
    from keras_fpn.evaluation.detection import coco_evaluate, predict_dataset

    results = predict_dataset(model, dataset, cfg.model, progress=True)
    return coco_evaluate(dataset, results), results


def _detection_tflite(path, dataset, cfg, threads, reference):
    from keras_fpn.evaluation.detection import coco_evaluate, tflite_results

    results = tflite_results(path, dataset, threads=threads, score_threshold=cfg.model.score_threshold)
    return coco_evaluate(dataset, results), results, detection_changes(reference, results)


def _detection_changes_cell(ch) -> str:
    return f"{ch['lost']} / {ch['changed_class']} / {ch['moved']} / {ch['new']} of {ch['reference']}"


def draw_detections_of(image, record, results, dataset, labels):
    """``image`` with one variant's confident detections of ``record`` drawn, and a caption."""
    from fpn_edge.draw import draw_detections

    dets = [{"box_xyxy": [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]],
             "class_id": dataset.label_map.from_source(r["category_id"]),
             "label": labels[dataset.label_map.from_source(r["category_id"])], "score": r["score"]}
            for r in results if r["image_id"] == record.image_id and r["score"] >= CONFIDENT]
    return draw_detections(image, dets), f"{len(dets)} detections (score >= {CONFIDENT})"


REPORT = TaskReport(
    task="detection", metric="AP", metrics=("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"),
    ratios=("AP",), keys=REPORT_KEYS,
    table=(("AP", "AP"), ("AP50", "AP50"), ("AP_small", "AP_small"), ("AP_medium", "AP_medium"),
           ("AP_large", "AP_large"), ("AP vs float", "AP_ratio")),
    changes_header="lost / class / moved / new", per_class=(("AP", None),), bars=("AP", "AP50"),
    evaluate_keras=_detection_keras, evaluate_tflite=_detection_tflite,
    format_changes=_detection_changes_cell, draw=draw_detections_of, class_legend=False,
    postprocess="decode", method="COCO metrics by pycocotools.",
    changes_note="Changed detections: confident (score >= {confident_score}) float detections that the "
                 "variant lost (no box with IoU >= {match_iou}), gave another class, or moved (IoU < "
                 "{moved_iou}); new = confident variant boxes with no float counterpart.",
    rules={"confident_score": CONFIDENT, "match_iou": MATCH_IOU, "moved_iou": MOVED_IOU},
    side_by_side="detections")
