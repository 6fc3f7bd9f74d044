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

Localization: ``matched_iou`` is the mean IoU of the float detections that the variant
kept with the same class (IoU >= ``MATCH_IOU``; the kept and the moved ones): 1.0 when
every box stayed where it was. The counts are also split per class (lost, changed
class and moved by the float detection's class; new by the variant's) and per COCO
size of the box (area < 32^2 small, < 96^2 medium, else large, in original-image
pixels: the float box's, the variant's for new ones).
"""
from __future__ import annotations

import numpy as np

from keras_fpn.compare.report import TaskReport

CONFIDENT = 0.3
MATCH_IOU = 0.5
MOVED_IOU = 0.9
#: the keys of a detection variant's row in report.json, in order
REPORT_KEYS = ("variant", "file", "size_bytes", "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
               "AP_ratio", "AP50_ratio", "AP75_ratio", "matched_iou", "per_class", "latency_ms_p50",
               "latency_ms_p90", "threads", "changes")
#: COCO's object sizes by box area in pixels^2: (name, low, high)
SIZES = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, float("inf")))
_COUNTS = ("reference", "lost", "changed_class", "moved", "new")


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


def size_name(box_xyxy) -> str:
    """The COCO size (``SIZES``) of an xyxy box by its area."""
    area = float(box_xyxy[2] - box_xyxy[0]) * float(box_xyxy[3] - box_xyxy[1])
    return next(name for name, low, high in SIZES if low <= area < high)


def detection_changes(reference: list, variant: list, names: dict | None = None) -> dict:
    """Count lost / changed-class / moved / new confident detections (see module doc).

    Args:
        reference, variant: COCO results of the float model and of the variant.
        names: category id -> class name for ``per_class`` (default: the id as text).

    Returns:
        ``{"reference", "lost", "changed_class", "moved", "new"}`` counts, ``matched_iou``
        (None when nothing was kept), and the same counts in ``per_class`` (by name) and
        ``per_size`` (``small`` / ``medium`` / ``large``).
    """
    ref, var = _confident(reference), _confident(variant)
    names = names or {}
    total = dict.fromkeys(_COUNTS, 0)
    per_class: dict = {}
    per_size = {name: dict.fromkeys(_COUNTS, 0) for name, _, _ in SIZES}
    kept_ious = []

    def count(what, category, box):
        for counts in (total, per_class.setdefault(names.get(int(category), str(int(category))),
                                                   dict.fromkeys(_COUNTS, 0)), per_size[size_name(box)]):
            counts[what] += 1

    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), int))
    for image_id in set(ref) | set(var):
        (rb, rc), (vb, vc) = ref.get(image_id, empty), var.get(image_id, empty)
        iou = _iou_matrix(rb, vb)
        for i in range(len(rb)):
            count("reference", rc[i], rb[i])
            same = np.where(vc == rc[i], iou[i], -1.0) if len(vb) else np.zeros(0)
            if len(same) and same.max() >= MATCH_IOU:  # same class first: boxes often carry several classes
                kept_ious.append(float(same.max()))
                if same.max() < MOVED_IOU:
                    count("moved", rc[i], rb[i])
            elif len(vb) and iou[i].max() >= MATCH_IOU:
                count("changed_class", rc[i], rb[i])
            else:
                count("lost", rc[i], rb[i])
        for j in range(len(vb)):
            if not len(rb) or iou[:, j].max() < MATCH_IOU:
                count("new", vc[j], vb[j])
    return {**total, "matched_iou": float(np.mean(kept_ious)) if kept_ious else None,
            "per_class": dict(sorted(per_class.items())), "per_size": per_size}


def _detection_keras(model, dataset, cfg):
    from keras_fpn.evaluation.detection import coco_evaluate, predict_dataset

    results = predict_dataset(model, dataset, cfg.model, progress=True)
    return {**coco_evaluate(dataset, results), "matched_iou": None}, results


def _detection_tflite(path, dataset, cfg, threads, reference):
    from keras_fpn.evaluation.detection import coco_evaluate, tflite_results

    results = tflite_results(path, dataset, threads=threads, score_threshold=cfg.model.postprocess.score_threshold)
    names = {dataset.label_map.to_source(i): name for i, name in enumerate(dataset.label_map.names)}
    changes = detection_changes(reference, results, names)
    return {**coco_evaluate(dataset, results), "matched_iou": changes["matched_iou"]}, results, changes


def _detection_changes_cell(ch) -> str:
    return f"{ch['lost']} / {ch['changed_class']} / {ch['moved']} / {ch['new']} of {ch['reference']}"


def changes_sections(report: dict) -> list:
    """report.md's tables of the changed detections per class and per COCO size (one column per variant)."""
    variants = [r for r in report["variants"] if r["changes"]]
    if not variants:
        return []
    lines = []
    for title, key in (("class", "per_class"), ("object size", "per_size")):
        names = list(dict.fromkeys(n for r in variants for n in r["changes"].get(key, {})))
        lines += [f"## Changed detections per {title} (lost / class / moved / new of float)", "",
                  f"| {title} | " + " | ".join(r["variant"] for r in variants) + " |",
                  "|---|" + "---|" * len(variants)]
        for name in names:
            cells = [_detection_changes_cell(r["changes"][key][name]) if name in r["changes"].get(key, {}) else "–"
                     for r in variants]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def draw_detections_of(image, record, results, dataset, labels):
    """``image`` with one variant's confident detections of ``record`` drawn, and a caption."""
    from fpn_edge.draw import draw_detections

    dets = [{"box_xyxy": [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]],
             "class_id": dataset.label_map.from_source(r["category_id"]),
             "label": labels[dataset.label_map.from_source(r["category_id"])], "score": r["score"]}
            for r in results if r["image_id"] == record.image_id and r["score"] >= CONFIDENT]
    return draw_detections(image, dets), f"{len(dets)} detections (score >= {CONFIDENT})"


REPORT = TaskReport(
    task="detection", metric="AP", metrics=("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                                            "matched_iou"),
    ratios=("AP", "AP50", "AP75"), keys=REPORT_KEYS,
    table=(("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AP_small", "AP_small"), ("AP_medium", "AP_medium"),
           ("AP_large", "AP_large"), ("AP vs float", "AP_ratio"), ("AP50 vs float", "AP50_ratio"),
           ("AP75 vs float", "AP75_ratio"), ("matched IoU", "matched_iou")),
    changes_header="lost / class / moved / new", per_class=(("AP", None),), bars=("AP", "AP50"),
    evaluate_keras=_detection_keras, evaluate_tflite=_detection_tflite,
    format_changes=_detection_changes_cell, draw=draw_detections_of, class_legend=False,
    postprocess="decode", method="COCO metrics by pycocotools.",
    changes_note="Changed detections: confident (score >= {confident_score}) float detections that the "
                 "variant lost (no box with IoU >= {match_iou}), gave another class, or moved (IoU < "
                 "{moved_iou}); new = confident variant boxes with no float counterpart. Matched IoU: the mean "
                 "IoU of the float detections the variant kept with the same class (1.000 = no box moved); "
                 "AP75 and matched IoU show what int8 costs in box precision.",
    sections=changes_sections,
    rules={"confident_score": CONFIDENT, "match_iou": MATCH_IOU, "moved_iou": MOVED_IOU},
    side_by_side="detections")
