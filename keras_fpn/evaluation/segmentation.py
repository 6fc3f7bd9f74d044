"""Semantic-segmentation evaluation: metrics (numpy), class maps of a Keras model or a .tflite (``fpn_edge``).

Class maps are uint8 ``[h, w]`` with the ids of ``keras_fpn.models.segmentation``
(0 = background, ``c + 1`` = class ``c``, ``ignore_label`` = not counted),
compared at the *original* image resolution.

Metrics, accumulated over a dataset by ``SegmentationMetrics``:

- **IoU per class** from the K x K confusion matrix ``cm[gt, pred]`` of all
  valid pixels: ``IoU_k = cm[k, k] / (row_k + col_k - cm[k, k])``; **mIoU** is
  the mean over the classes with a non-zero denominator (background
  included, as in PASCAL VOC); **pixel accuracy** = trace / total.
- **Boundary F-score** (Csurka et al. 2013, the "BF" score) at a tolerance of
  ``tolerance`` pixels: the boundary of class k in a map is the set of
  valid pixels of class k with a valid 4-neighbour of another class (pixels
  are *valid* where the ground truth is not ignore, so ignore regions and the
  image border make no boundary). Precision = predicted boundary pixels
  within ``tolerance`` (Euclidean) of a ground-truth boundary pixel / all
  predicted boundary pixels; recall the other way round; ``F = 2PR / (P + R)``.
  Counts are summed over the dataset per class, then F per class, and the
  mean over the classes that have a boundary in the ground truth or the
  prediction. Tolerance 0 demands the exact pixels.
"""
from __future__ import annotations

import numpy as np

#: default boundary tolerance in original-image pixels
BOUNDARY_TOLERANCE = 2


def confusion_matrix(gt, pred, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """``[K, K]`` int64 counts ``cm[gt_class, pred_class]`` over the pixels where ``gt != ignore_label``.

    Predicted ids outside ``0..K-1`` raise ValueError.
    """
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.size} pixels, prediction {pred.size}")
    valid = gt != ignore_label
    gt, pred = gt[valid], pred[valid]
    if gt.size and (gt.max() >= num_classes or pred.max() >= num_classes or pred.min() < 0):
        raise ValueError(f"class ids must be in 0..{num_classes - 1} (or {ignore_label} in the ground truth)")
    return np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU ``[K]`` (NaN where the class is in neither map)."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def _disk_offsets(radius: int) -> list:
    r = int(radius)
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r]


def _shift(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]`` (``fill`` outside)."""
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[yd, xd] = a[ys, xs]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros_like(mask)
    for dy, dx in _disk_offsets(radius):
        out |= _shift(mask, dy, dx, False)
    return out


def class_boundaries(label_map, valid) -> tuple:
    """``(edge, labels)``: bool ``[h, w]`` of valid pixels with a valid 4-neighbour of another class.

    A pixel on ``edge`` belongs to the boundary of its own class ``labels[y, x]``.
    """
    lab = np.asarray(label_map).astype(np.int32)
    valid = np.asarray(valid, bool)
    edge = np.zeros(lab.shape, bool)
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        other = _shift(lab, dy, dx, -1)
        other_valid = _shift(valid, dy, dx, False)
        edge |= valid & other_valid & (other != lab)
    return edge, lab


def boundary_counts(gt, pred, num_classes: int, *, tolerance: int = BOUNDARY_TOLERANCE,
                    ignore_label: int = 255) -> np.ndarray:
    """``[K, 4]`` int64 per-class boundary counts of one image.

    Columns: predicted boundary pixels matched (within ``tolerance`` of the
    ground-truth boundary of the same class), predicted boundary pixels,
    ground-truth boundary pixels matched, ground-truth boundary pixels.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    valid = gt != ignore_label
    gt_edge, gt_lab = class_boundaries(gt, valid)
    pr_edge, pr_lab = class_boundaries(pred, valid)
    out = np.zeros((num_classes, 4), np.int64)
    for k in range(num_classes):
        g = gt_edge & (gt_lab == k)
        p = pr_edge & (pr_lab == k)
        if not g.any() and not p.any():
            continue
        out[k] = (np.count_nonzero(p & _dilate(g, tolerance)), np.count_nonzero(p),
                  np.count_nonzero(g & _dilate(p, tolerance)), np.count_nonzero(g))
    return out


def boundary_fscore(counts: np.ndarray) -> np.ndarray:
    """Per-class boundary F ``[K]`` from summed ``boundary_counts`` (NaN: no boundary in either map)."""
    c = np.asarray(counts, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(c[:, 1] > 0, c[:, 0] / c[:, 1], 0.0)
        recall = np.where(c[:, 3] > 0, c[:, 2] / c[:, 3], 0.0)
        f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return np.where((c[:, 1] + c[:, 3]) > 0, f, np.nan)


def _nanmean(values) -> float:
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


class SegmentationMetrics:
    """Accumulates the confusion matrix and boundary counts over images.

    Args:
        class_names: the K names, id order (``["background", *labels]``).
        ignore_label: ground-truth value of pixels that do not count.
        tolerance: boundary F-score tolerance in pixels.
    """

    def __init__(self, class_names, *, ignore_label: int = 255, tolerance: int = BOUNDARY_TOLERANCE):
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_label = int(ignore_label)
        self.tolerance = int(tolerance)
        self.cm = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.boundary = np.zeros((self.num_classes, 4), np.int64)
        self.num_images = 0

    def update(self, gt, pred) -> None:
        """Add one image's ground-truth and predicted class maps (same ``[h, w]``)."""
        self.cm += confusion_matrix(gt, pred, self.num_classes, self.ignore_label)
        self.boundary += boundary_counts(gt, pred, self.num_classes, tolerance=self.tolerance,
                                         ignore_label=self.ignore_label)
        self.num_images += 1

    def result(self) -> dict:
        """``{"mIoU", "pixel_accuracy", "boundary_F", "boundary_tolerance_px", "num_images",
        "per_class": {name: {"IoU", "boundary_F"}}}``; NaN-valued classes are reported as None."""
        iou = iou_from_confusion(self.cm)
        bf = boundary_fscore(self.boundary)
        total = self.cm.sum()

        def num(v):
            return None if np.isnan(v) else float(v)

        return {"mIoU": _nanmean(iou), "pixel_accuracy": float(np.trace(self.cm) / total) if total else 0.0,
                "boundary_F": _nanmean(bf), "boundary_tolerance_px": self.tolerance,
                "num_images": self.num_images,
                "per_class": {n: {"IoU": num(i), "boundary_F": num(b)}
                              for n, i, b in zip(self.class_names, iou, bf)}}


def format_seg_metrics(metrics: dict) -> str:
    """A small text table of mIoU, pixel accuracy, boundary F and the per-class values."""
    def f(v):
        return "  n/a " if v is None else f"{v:.4f}"

    lines = [f"mIoU            {metrics['mIoU']:.4f}",
             f"pixel accuracy  {metrics['pixel_accuracy']:.4f}",
             f"boundary F@{metrics['boundary_tolerance_px']}px  {metrics['boundary_F']:.4f}",
             "", f"{'class':<20} {'IoU':>7} {'BF':>7}"]
    lines += [f"{name:<20} {f(v['IoU']):>7} {f(v['boundary_F']):>7}" for name, v in metrics["per_class"].items()]
    return "\n".join(lines)


def class_names(labels) -> list:
    """The K segmentation class names: ``background`` then the dataset's labels."""
    return ["background", *[str(n) for n in labels]]


def logits_to_class_map(logits, resized_hw, original_hw) -> np.ndarray:
    """Canvas logits ``[H, W, K]`` -> uint8 class map ``[h, w]`` of the original image.

    Crops the content ``[:new_h, :new_w]`` (the letterbox's, or the whole
    canvas for stretch), resizes the logits bilinearly per axis (half-pixel
    centres, ``tf.image.resize``) to the original size when it differs, and
    takes the argmax.
    """
    import tensorflow as tf

    nh, nw = (int(v) for v in np.asarray(resized_hw))
    h, w = (int(v) for v in np.asarray(original_hw))
    x = tf.convert_to_tensor(logits)[:nh, :nw]
    if (nh, nw) != (h, w):
        x = tf.image.resize(x, (h, w), method="bilinear", antialias=False)
    return tf.argmax(x, axis=-1, output_type=tf.int32).numpy().astype(np.uint8)


def predict_class_maps(model, dataset, model_cfg, *, batch_size: int = 8, progress: bool = False):
    """Run a Keras segmenter over a dataset.

    Yields:
        ``(record, class map uint8 [h, w])`` in dataset order (undecodable
        images are skipped, as in ``build_inference_dataset``).
    """
    from keras_fpn.data.pipeline import build_inference_dataset
    from keras_fpn.models.backbones import NORMALIZATION

    by_id = {r.image_id: r for r in dataset.records}
    ds = build_inference_dataset(dataset, image_size=model_cfg.image_size, resize=model_cfg.resize,
                                 normalization=NORMALIZATION[model_cfg.backbone.name], batch_size=batch_size)
    iterator = ds
    if progress:
        from tqdm import tqdm
        iterator = tqdm(ds, total=-(-len(dataset) // batch_size), desc="evaluate", unit="batch", leave=False)
    for images, info in iterator:
        logits = model(images, training=False)["seg_logits"]
        for i in range(int(images.shape[0])):
            pred = logits_to_class_map(logits[i], info["resized_hw"][i], info["original_hw"][i])
            yield by_id[int(info["image_id"][i])], pred


def score_class_maps(pairs, labels, *, ignore_label: int = 255, tolerance: int = BOUNDARY_TOLERANCE) -> dict:
    """``SegmentationMetrics.result()`` of predicted class maps against their records' ground truth.

    Args:
        pairs: iterable of ``(record, class map uint8 [h, w])`` (``predict_class_maps``,
            ``tflite_class_maps``).
        labels: the dataset's C foreground names (``background`` is added).
        ignore_label, tolerance: as ``SegmentationMetrics``.
    """
    from keras_fpn.data.masks import rasterize_class_map

    metrics = SegmentationMetrics(class_names(labels), ignore_label=ignore_label, tolerance=tolerance)
    for record, pred in pairs:
        metrics.update(rasterize_class_map(record, ignore_label=ignore_label), pred)
    return metrics.result()


def evaluate_segmentation(model, dataset, model_cfg, *, batch_size: int = 8,
                          tolerance: int = BOUNDARY_TOLERANCE, progress: bool = False) -> dict:
    """mIoU, per-class IoU and boundary F of a Keras segmenter on a dataset (``SegmentationMetrics.result``)."""
    return score_class_maps(predict_class_maps(model, dataset, model_cfg, batch_size=batch_size, progress=progress),
                            dataset.label_map.names, ignore_label=model_cfg.segmentation.ignore_label, tolerance=tolerance)


def tflite_class_maps(model_path, dataset, *, threads: int | None = None):
    """Run an exported segmenter (``fpn_edge.Segmenter``) over a dataset.

    Yields:
        ``(record, class map uint8 [h, w] of the original image)`` in dataset order.

    Raises:
        ValueError: the model's labels are not ``["background", *dataset labels]``.
    """
    from fpn_edge.segmenter import Segmenter
    from keras_fpn.data.images import load_image

    seg = Segmenter.from_file(model_path, threads=threads)
    names = class_names(dataset.label_map.names)
    if seg.labels != names:
        raise ValueError(f"{model_path}: model labels {seg.labels} differ from the dataset's {names}")
    for record in dataset.records:
        yield record, seg.segment(load_image(record.image_path))


def evaluate_tflite(model_path, dataset, *, tolerance: int | None = None, threads: int | None = None,
                    ignore_label: int = 255) -> dict:
    """mIoU / per-class IoU / boundary F of an exported segmenter on a dataset (``tflite_class_maps``):
    the same metrics as ``evaluate_segmentation``, for float vs int8 comparisons."""
    tolerance = BOUNDARY_TOLERANCE if tolerance is None else tolerance
    return score_class_maps(tflite_class_maps(model_path, dataset, threads=threads), dataset.label_map.names,
                            ignore_label=ignore_label, tolerance=tolerance)
