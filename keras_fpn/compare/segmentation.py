"""``keras-fpn compare`` for segmenters: mIoU, pixel accuracy, boundary F, *changed pixels*, the class-map plot.

Metrics at the original image resolution (``keras_fpn.evaluation.segmentation``);
*changed pixels*: pixels of the original images whose class differs from the
float Keras model's (the float class maps are kept in memory for this, one
byte per pixel).
"""
from __future__ import annotations

import numpy as np

from keras_fpn.compare.report import TaskReport, fmt
from keras_fpn.evaluation.segmentation import BOUNDARY_TOLERANCE

#: the keys of a segmentation variant's row in report.json, in order
REPORT_KEYS = ("variant", "file", "size_bytes", "mIoU", "pixel_accuracy", "boundary_F", "mIoU_ratio",
               "boundary_F_ratio", "per_class", "latency_ms_p50", "latency_ms_p90", "threads", "changes")
#: class maps kept per TFLite variant for the side-by-side plot
KEPT_MAPS = 3


def _kept(pairs, store: dict, limit: int | None = None):
    """Pass ``(record, class map)`` pairs through, keeping the first ``limit`` maps by image id."""
    for record, pred in pairs:
        if limit is None or len(store) < limit:
            store[record.image_id] = pred
        yield record, pred


def _seg_keras(model, dataset, cfg):
    from keras_fpn.evaluation.segmentation import predict_class_maps, score_class_maps

    maps = {}
    pairs = predict_class_maps(model, dataset, cfg.model, progress=True)
    return score_class_maps(_kept(pairs, maps), dataset.label_map.names, ignore_label=cfg.model.ignore_label), maps


def _seg_tflite(path, dataset, cfg, threads, reference):
    from keras_fpn.evaluation.segmentation import score_class_maps, tflite_class_maps

    changes = {"pixels": 0, "changed": 0}

    def compared(pairs):
        for record, pred in pairs:
            ref = reference.get(record.image_id)
            if ref is not None:
                changes["pixels"] += int(ref.size)
                changes["changed"] += int(np.count_nonzero(ref != pred))
            yield record, pred

    maps = {}
    pairs = _kept(compared(tflite_class_maps(path, dataset, threads=threads)), maps, KEPT_MAPS)
    metrics = score_class_maps(pairs, dataset.label_map.names, ignore_label=cfg.model.ignore_label)
    changes["changed_fraction"] = changes["changed"] / changes["pixels"] if changes["pixels"] else None
    return metrics, maps, changes


def _seg_changes_cell(ch) -> str:
    return f"{fmt(ch['changed_fraction'] * 100 if ch['changed_fraction'] is not None else None, '.2f')} %"


def draw_class_map_of(image, record, results, dataset, labels):
    """``image`` with one variant's class map of ``record`` blended in, and a caption (the class
    colours go in a figure legend: an in-image legend hides small images)."""
    from fpn_edge.draw import draw_segmentation
    from keras_fpn.evaluation.segmentation import class_names

    class_map = results.get(record.image_id)
    if class_map is None:
        return image, "not segmented"
    present = len(np.unique(class_map[class_map != 0]))
    return draw_segmentation(image, class_map, class_names(labels), legend=False), f"{present} classes present"


REPORT = TaskReport(
    task="segmentation", metric="mIoU", metrics=("mIoU", "pixel_accuracy", "boundary_F"),
    ratios=("mIoU", "boundary_F"), keys=REPORT_KEYS,
    table=(("mIoU", "mIoU"), ("boundary F", "boundary_F"), ("pixel acc.", "pixel_accuracy"),
           ("mIoU vs float", "mIoU_ratio"), ("BF vs float", "boundary_F_ratio")),
    changes_header="changed pixels", per_class=(("IoU", "IoU"), ("boundary F", "boundary_F")),
    bars=("mIoU", "boundary_F"),
    evaluate_keras=_seg_keras, evaluate_tflite=_seg_tflite,
    format_changes=_seg_changes_cell, draw=draw_class_map_of, class_legend=True,
    postprocess="logits -> class map of the original image",
    method="mIoU over all classes (background included), pixel accuracy and boundary F (BF, "
           "{boundary_tolerance_px} px tolerance) "
           "at the original image resolution (keras_fpn.evaluation.segmentation).",
    changes_note="Changed pixels: the share of the original images' pixels whose class differs from "
                 "the float Keras model's.",
    rules={"boundary_tolerance_px": BOUNDARY_TOLERANCE}, side_by_side="class maps")
