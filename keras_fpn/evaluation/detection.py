"""Detection evaluation: COCO metrics by pycocotools, predictions of a Keras model or a .tflite (``fpn_edge``).

Detections travel in the COCO *results* format everywhere (Keras model,
TFLite through fpn_edge, compare): ``{"image_id", "category_id" (the dataset's
own category id), "bbox": [x, y, w, h] in original-image pixels, "score"}``.
Ground truth comes from ``DetectionDataset.to_coco_dict``; VOC ``difficult``
objects are evaluated as crowd (ignored: matching them is neither a true nor
a false positive), like VOC's own protocol.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def ground_truth(dataset) -> dict:
    """COCO ground-truth dict of a DetectionDataset (difficult -> crowd)."""
    gt = dataset.to_coco_dict()
    for ann in gt["annotations"]:
        if ann.pop("difficult", 0):
            ann["iscrowd"] = 1
        ann.pop("segmentation", None)  # box evaluation only; crowd RLEs are not needed
    return gt


def coco_evaluate(dataset, results: list, *, per_class: bool = True) -> dict:
    """Run COCOeval (bbox) on COCO-format ``results`` against ``dataset``.

    Returns:
      ``{"AP": …, "AP50": …, …, "per_class": {name: AP}}`` with values in [0, 1];
      -1 where COCO has no ground truth for a metric (e.g. no small objects).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = ground_truth(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    if not results:
        metrics = {name: 0.0 for name in METRIC_NAMES}
        if per_class:
            metrics["per_class"] = {name: 0.0 for name in dataset.label_map.names}
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)}
    if per_class:
        # precision: [T, R, K, A, M]; area "all" (0), maxDets 100 (last)
        precision = ev.eval["precision"][:, :, :, 0, -1]
        metrics["per_class"] = {}
        for k, cat_id in enumerate(ev.params.catIds):
            p = precision[:, :, k]
            name = dataset.label_map.names[dataset.label_map.from_source(cat_id)]
            metrics["per_class"][name] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return metrics


def detections_to_coco(image_id: int, boxes, scores, classes, count: int, *, original_hw, label_map) -> list:
    """Convert one image's detections to COCO results.

    Args:
      boxes: ``[N, 4]`` yxyx normalized to the *original* image.
      scores, classes: ``[N]``; classes are contiguous ids.
      count: valid rows.
      original_hw: (height, width) of the original image in pixels.
    """
    h, w = (float(v) for v in original_hw)
    out = []
    for (y1, x1, y2, x2), s, c in zip(np.asarray(boxes)[:count], np.asarray(scores)[:count],
                                      np.asarray(classes)[:count]):
        out.append({"image_id": int(image_id), "category_id": int(label_map.to_source(int(c))),
                    "bbox": [float(x1 * w), float(y1 * h), float((x2 - x1) * w), float((y2 - y1) * h)],
                    "score": float(s)})
    return out


def detection_function(model, model_cfg):
    """The model's forward pass + ``decode_detections`` as one traced ``tf.function``:
    normalized images ``[B, H, W, 3]`` -> the padded detections of ``decode_detections``.

    Traced instead of eager Keras, which dispatches op by op (0.82 vs 0.14 s per batch
    of 8 of the demo model); without autograph, which nothing here needs (its source
    conversion alone took ~10 s); traced once for any batch size (a last, smaller
    batch would otherwise cost a second trace). Keep it across calls (as the training
    evaluation does) to trace once.
    """
    import tensorflow as tf

    from keras_fpn.ops.anchors import model_anchors
    from keras_fpn.ops.postprocess import decode_detections

    anchors = model_anchors(model_cfg)
    nms = dict(scale_factors=model_cfg.anchors.box_scale_factors, score_threshold=model_cfg.postprocess.score_threshold,
               iou_threshold=model_cfg.postprocess.iou_threshold, max_detections=model_cfg.postprocess.max_detections,
               max_detections_per_class=model_cfg.postprocess.max_detections_per_class)

    height, width = model_cfg.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)], autograph=False)
    def detect(images):
        raw = model(images, training=False)
        return decode_detections(raw["box_deltas"], raw["class_logits"], anchors, **nms)

    return detect


def predict_dataset(model, dataset, model_cfg, *, batch_size: int = 8, progress: bool = False,
                    detect=None) -> list:
    """Run a Keras detector over a dataset; return COCO results in original pixels.

    ``detect``: a ``detection_function(model, model_cfg)`` to reuse (default: a new one).
    """
    from keras_fpn.data.pipeline import build_inference_dataset
    from keras_fpn.data.preprocess import canvas_to_original
    from keras_fpn.models.backbones import NORMALIZATION

    detect = detect or detection_function(model, model_cfg)
    ds = build_inference_dataset(dataset, image_size=model_cfg.image_size, resize=model_cfg.resize,
                                 normalization=NORMALIZATION[model_cfg.backbone.name], batch_size=batch_size)
    results = []
    iterator = ds
    if progress:
        from tqdm import tqdm
        iterator = tqdm(ds, total=-(-len(dataset) // batch_size), desc="evaluate", unit="batch", leave=False)
    for images, info in iterator:
        det = {k: v.numpy() for k, v in detect(images).items()}
        info = {k: v.numpy() for k, v in info.items()}
        for i in range(len(det["num_detections"])):
            boxes = canvas_to_original(det["boxes"][i], info["resized_hw"][i], model_cfg.image_size)
            results += detections_to_coco(int(info["image_id"][i]), boxes, det["scores"][i],
                                          det["classes"][i], int(det["num_detections"][i]),
                                          original_hw=info["original_hw"][i], label_map=dataset.label_map)
    return results


def format_metrics(metrics: dict) -> str:
    """A small text table of the COCO metrics and per-class AP."""
    lines = ["metric      value"] + [f"{k:<11} {metrics[k]:.4f}" for k in METRIC_NAMES if k in metrics]
    if metrics.get("per_class"):
        lines += ["", "class                 AP"]
        lines += [f"{name:<20} {ap:.4f}" for name, ap in metrics["per_class"].items()]
    return "\n".join(lines)


def tflite_results(model_path, dataset, *, threads: int | None, score_threshold: float) -> list:
    """Run a .tflite through ``fpn_edge.Detector`` over a dataset; COCO results (as ``predict_dataset``)."""
    from fpn_edge import Detector

    det = Detector.from_file(model_path, threads=threads)
    results = []
    for record in dataset.records:
        for d in det.detect(record.image_path, score_threshold=score_threshold):
            x1, y1, x2, y2 = d.box_xyxy
            results.append({"image_id": int(record.image_id),
                            "category_id": int(dataset.label_map.to_source(d.class_id)),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                            "score": float(d.score)})
    return results
