"""The tf.data pipelines: training / validation-loss batches (detection, segmentation), inference batches.

Conventions (image geometry and normalization: ``keras_fpn.data.preprocess``;
augmentation: ``keras_fpn.data.augment``; decoding: ``keras_fpn.data.decode``):

- Every pipeline decodes the original image, applies the model's resize
  (``resize``: letterbox or stretch, with the training augmentation when
  training) and the model's normalization; the inference pipeline is
  ``preprocess_for_inference`` exactly.
- Detection targets: ``keras_fpn.ops.matcher.encode_targets`` on the
  non-crowd boxes that keep at least ``min_visible`` of their area. Crowd
  boxes are no positives: anchors that are background and lie more than
  ``crowd_ioa`` inside a crowd box (intersection over anchor area) become
  ignored (-2, ``crowd_ignore``).
- Segmentation targets: the class map of ``keras_fpn.data.masks`` through
  ``augment_with_mask``; the canvas padding is the ignore label.
- Caching (``cache=True``): decoded images are kept in memory; when nothing
  is random (no augmentation) the prepared examples are kept instead (uint8
  canvas + targets), so later epochs only shuffle, normalize and batch.
- Randomness is stateless: each element gets a seed pair from
  ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` (new
  values each epoch), so a fixed ``seed`` gives the same batches whatever
  the parallelism when ``deterministic=True``.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_fpn.data.augment import AugmentConfig, augment_example, augment_with_mask, training_augment
from keras_fpn.data.dataset import DetectionDataset
from keras_fpn.data.decode import decode_dataset, graph_only
from keras_fpn.data.images import DataError, load_image
from keras_fpn.data.masks import has_masks
from keras_fpn.data.preprocess import canvas_hw, normalization_params, normalize, preprocess_for_inference
from keras_fpn.ops.seg_labels import IGNORE_LABEL

logger = logging.getLogger("keras_fpn.data")

AUTOTUNE = tf.data.AUTOTUNE


def _options(ds: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
    opts = tf.data.Options()
    opts.deterministic = deterministic
    return ds.with_options(opts)


def _resolve_seed(seed: Optional[int]) -> int:
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
    return int(seed)


def _prepared_batches(dataset: DetectionDataset, geometry, *, cfg: Optional[AugmentConfig], training: bool,
                      shuffle: bool, seed: Optional[int], cache: bool, strict: bool, deterministic: bool,
                      normalization, batch_size: int, drop_remainder: bool,
                      ignore_label: Optional[int] = None) -> tf.data.Dataset:
    """Decode, apply ``geometry``, normalize and batch (shared by the detection and segmentation builders).

    Args:
        dataset: The DetectionDataset.
        geometry: (example, seed pair) -> (canvas float32 [H, W, 3] 0..255, labels).
        cfg: The pipeline's AugmentConfig (``augment.training_augment``). With None and
            ``cache`` nothing is random, so the prepared examples are cached: the
            canvas as uint8 (rounded; exact when no resize happens) with its labels,
            and later epochs only shuffle, normalize and batch (in a fixed order per seed).
        training, shuffle, seed, cache, strict, deterministic, normalization,
            batch_size, drop_remainder, ignore_label: as the builders.
    """
    seed, static = _resolve_seed(seed), cfg is None and cache
    shuffle = training and shuffle
    # static: decoded once into the cache, in order (the shuffle permutes positions: a seed
    # then gives the same batches in every run)
    examples = _seeded_examples(dataset, shuffle=shuffle and not static, seed=seed, cache=cache and not static,
                                strict=strict, deterministic=deterministic or static, ignore_label=ignore_label)
    if static:
        @graph_only
        def cached(ex, pair):
            canvas, labels = geometry(ex, pair)
            return tf.cast(tf.round(tf.clip_by_value(canvas, 0.0, 255.0)), tf.uint8), labels

        ds = examples.map(cached, num_parallel_calls=AUTOTUNE, deterministic=True).cache()
        if shuffle:
            ds = ds.shuffle(len(dataset), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(graph_only(lambda image, labels: (normalize(tf.cast(image, tf.float32), normalization), labels)),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        @graph_only
        def prepared(ex, pair):
            canvas, labels = geometry(ex, pair)
            return normalize(canvas, normalization), labels

        ds = examples.map(prepared, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
    return _options(ds, deterministic)


def _seeded_examples(dataset: DetectionDataset, *, shuffle: bool, seed: int, cache: bool,
                     strict: bool, deterministic: bool, ignore_label: Optional[int] = None) -> tf.data.Dataset:
    """Decoded (optionally cached, shuffled) examples zipped with per-element stateless seed pairs.

    Shared by the detection and segmentation pipelines (see their Args).

    Returns:
        tf.data.Dataset of (example dict, int64 [2] seed).
    """
    n = len(dataset)
    if n == 0:
        raise DataError(f"{dataset.source}: the dataset has no images")
    indices = tf.data.Dataset.range(n)
    if cache:
        ds = decode_dataset(dataset, indices, strict, True, ignore_label).cache()
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    else:
        if shuffle:
            indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = decode_dataset(dataset, indices, strict, deterministic, ignore_label)
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def crowd_ignore(class_targets, anchors, crowd_boxes, crowd_ioa: float):
    """Mark background anchors lying mostly inside crowd regions as ignored (-2).

    Args:
        class_targets: [A] float32 from encode_targets.
        anchors: [A, 4] yxyx normalized.
        crowd_boxes: [M, 4] yxyx normalized crowd regions (M may be 0).
        crowd_ioa: Intersection / anchor area above which an anchor is ignored.

    Returns:
        [A] float32 class targets.
    """
    a = anchors[:, None, :]
    c = crowd_boxes[None, :, :]
    ih = tf.maximum(tf.minimum(a[..., 2], c[..., 2]) - tf.maximum(a[..., 0], c[..., 0]), 0.0)
    iw = tf.maximum(tf.minimum(a[..., 3], c[..., 3]) - tf.maximum(a[..., 1], c[..., 1]), 0.0)
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    ioa = tf.math.divide_no_nan(ih * iw, area[:, None])  # (A, M)
    best = tf.reduce_max(tf.concat([ioa, tf.zeros_like(area)[:, None]], axis=1), axis=1)
    ignore = tf.logical_and(tf.equal(class_targets, -1.0), best > crowd_ioa)
    return tf.where(ignore, tf.constant(-2.0, tf.float32), class_targets)


def build_detection_dataset(dataset: DetectionDataset, *, image_size, anchors, normalization,
                            batch_size: int, training: bool, augment: Any = "default",
                            matcher: str = "iou", positive_iou: float = 0.5, negative_iou: float = 0.4,
                            force_match: bool = True, level_sizes: Optional[Sequence[int]] = None,
                            atss_top_k: int = 9,
                            scale_factors: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                            crowd_ioa: float = 0.5, shuffle: bool = True, resize: str = "letterbox",
                            seed: Optional[int] = None, deterministic: bool = False,
                            cache: bool = False, drop_remainder: Optional[bool] = None,
                            strict: bool = False) -> tf.data.Dataset:
    """The training / validation-loss tf.data pipeline (see the module conventions).

    Args:
        dataset: The DetectionDataset.
        image_size: Canvas (H, W) or an int.
        anchors: [A, 4] anchors (``keras_fpn.ops.anchors.generate_anchors``).
        normalization: The model's normalization dict.
        batch_size: Batch size.
        training: Shuffle and augment (validation: neither).
        augment: AugmentConfig, dict, True/None/False; "default" = AugmentConfig()
            when training. Ignored when not training.
        matcher: ``"iou"`` or ``"atss"`` (``keras_fpn.ops.matcher``).
        positive_iou: Matcher positive IoU threshold (iou).
        negative_iou: Matcher background IoU threshold (iou).
        force_match: Matcher force-match each box to its best anchor.
        level_sizes: Anchors per level in ``anchors`` order (needed by atss).
        atss_top_k: Candidates per level and box (atss).
        scale_factors: Box coder (sy, sx, sh, sw).
        crowd_ioa: Background anchors this much inside a crowd box are ignored.
        resize: The model's ``model.resize``: ``"letterbox"`` | ``"stretch"`` (``keras_fpn.data.preprocess``).
        shuffle: Shuffle each epoch (training only).
        seed: Seed for shuffling and augmentation (None: random).
        deterministic: Keep element order under parallel map (always when not training).
        cache: Keep decoded images in memory after the first epoch (memory:
            h * w * 3 bytes per image at the original size). Without
            augmentation (validation, or an augmentation that changes nothing)
            the prepared examples are cached instead: the uint8 canvas
            (H * W * 3 bytes) and its targets, so later epochs skip the
            letterbox and the matcher.
        drop_remainder: Drop the last partial batch; default = training.
        strict: An undecodable image raises instead of being skipped with a warning.

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, 3] normalized,
        {"box_deltas": float32 [B, A, 5], "class_logits": float32 [B, A]}).
    """
    H, W = canvas_hw(image_size)
    cfg = training_augment(augment, training)
    anchors = tf.constant(np.asarray(anchors, np.float32).reshape(-1, 4))
    num_anchors = int(anchors.shape[0])
    if drop_remainder is None:
        drop_remainder = training
    deterministic = deterministic or not training  # validation keeps the dataset's order
    normalization_params(normalization)  # validate early
    matcher_kw = dict(matcher=matcher, positive_iou=positive_iou, negative_iou=negative_iou,
                      force_match=force_match, level_sizes=level_sizes, atss_top_k=atss_top_k,
                      image_size=(H, W), scale_factors=tuple(scale_factors))
    min_visible = cfg.min_visible if cfg is not None else 0.0

    def prepare(ex, pair):
        from keras_fpn.ops.matcher import encode_targets

        canvas, boxes, visible = augment_example(ex["image"], ex["boxes"], pair, (H, W), cfg, resize)
        crowd = ex["iscrowd"]
        inside = visible > 0.0
        positive = tf.logical_and(tf.logical_and(inside, visible >= min_visible),
                                  tf.logical_not(crowd))
        targets = encode_targets(tf.boolean_mask(boxes, positive),
                                 tf.boolean_mask(ex["classes"], positive), anchors, **matcher_kw)
        crowd_boxes = tf.boolean_mask(boxes, tf.logical_and(inside, crowd))
        cls = crowd_ignore(targets["class_logits"], anchors, crowd_boxes, crowd_ioa)
        return canvas, {"box_deltas": tf.ensure_shape(targets["box_deltas"], [num_anchors, 5]),
                        "class_logits": tf.ensure_shape(cls, [num_anchors])}

    return _prepared_batches(dataset, prepare, cfg=cfg, training=training, shuffle=shuffle, seed=seed, cache=cache,
                             strict=strict, deterministic=deterministic, normalization=normalization,
                             batch_size=batch_size, drop_remainder=drop_remainder)


def build_segmentation_dataset(dataset: DetectionDataset, *, image_size, normalization,
                               batch_size: int, training: bool, augment: Any = "default",
                               ignore_label: int = IGNORE_LABEL, shuffle: bool = True, resize: str = "letterbox",
                               seed: Optional[int] = None, deterministic: bool = False,
                               cache: bool = False, drop_remainder: Optional[bool] = None,
                               strict: bool = False) -> tf.data.Dataset:
    """The segmentation training / validation-loss pipeline.

    Images and class maps (``keras_fpn.data.masks.rasterize_class_map``) go
    through ``augment_with_mask``: the same flip, scale jitter, crop and
    letterbox as detection, the class map resized with nearest. The canvas
    padding is ``ignore_label`` in the class map: it is not part of the image
    (at inference it is cropped off before mapping back), so the loss skips it
    instead of learning "zeros are background".

    Args:
        dataset: The DetectionDataset; its records need ``segmentations``.
        image_size, normalization, batch_size, training, augment, shuffle,
            seed, deterministic, cache, drop_remainder, strict, resize: as
            ``build_detection_dataset``.
        ignore_label: Class-map value of ignored pixels (crowd, overlaps, padding).

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, 3] normalized,
        {"seg_logits": uint8 [B, H, W] class maps}).
    """
    if not has_masks(dataset):
        raise DataError(f"{dataset.source}: no segmentation masks in the dataset (segmentation needs "
                        "COCO polygons or RLE; the synthetic generator writes them with masks=True)")
    H, W = canvas_hw(image_size)
    cfg = training_augment(augment, training)
    if drop_remainder is None:
        drop_remainder = training
    deterministic = deterministic or not training  # validation keeps the dataset's order
    normalization_params(normalization)

    def prepare(ex, pair):
        canvas, mask = augment_with_mask(ex["image"], ex["mask"], pair, (H, W), cfg, ignore_label, resize)
        return canvas, {"seg_logits": mask}

    return _prepared_batches(dataset, prepare, cfg=cfg, training=training, shuffle=shuffle, seed=seed, cache=cache,
                             strict=strict, deterministic=deterministic, normalization=normalization,
                             batch_size=batch_size, drop_remainder=drop_remainder, ignore_label=ignore_label)


def build_inference_dataset(dataset: DetectionDataset, *, image_size, normalization,
                            batch_size: int, strict: bool = False, resize: str = "letterbox") -> tf.data.Dataset:
    """Evaluation / prediction pipeline through ``preprocess_for_inference``.

    Args:
        dataset: The DetectionDataset (order kept).
        image_size: Canvas (H, W) or an int.
        normalization: The model's normalization dict.
        batch_size: Batch size (last batch may be smaller).
        strict: An undecodable image raises instead of being skipped.
        resize: The model's ``model.resize``.

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, 3], {"image_id": int64 [B],
        "resized_hw": int32 [B, 2], "original_hw": int32 [B, 2]}).
    """
    H, W = canvas_hw(image_size)
    normalization_params(normalization)
    ds = decode_dataset(dataset, tf.data.Dataset.range(len(dataset)), strict, True)

    @graph_only
    def prep(ex):
        image, resized_hw = preprocess_for_inference(ex["image"], (H, W), normalization, resize)
        return image, {"image_id": ex["image_id"], "resized_hw": resized_hw,
                       "original_hw": ex["original_hw"]}

    ds = ds.map(prep, num_parallel_calls=AUTOTUNE, deterministic=True)
    return _options(ds.batch(batch_size).prefetch(AUTOTUNE), True)


def representative_images(dataset: DetectionDataset, n: int, image_size, normalization,
                          seed: int = 0, resize: str = "letterbox") -> Iterator[np.ndarray]:
    """Int8 calibration inputs: n images through ``preprocess_for_inference``.

    Args:
        dataset: The DetectionDataset (usually the training set).
        n: Number of images (drawn without replacement; all when n >= len).
        image_size: Canvas (H, W) or an int.
        normalization: The model's normalization dict.
        seed: Seed of the draw.
        resize: The model's ``model.resize``.

    Yields:
        float32 numpy [1, H, W, 3], as the model input. Undecodable images are
        skipped with a warning.
    """
    H, W = canvas_hw(image_size)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset))[:max(int(n), 0)]
    fn = tf.function(lambda im: preprocess_for_inference(im, (H, W), normalization, resize)[0],
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    for i in order:
        try:
            image = load_image(dataset.records[int(i)].image_path)
        except DataError as e:
            logger.warning("%s; skipped image", e)
            continue
        yield fn(image).numpy()[None]


def augmented_examples(dataset: DetectionDataset, image_size, augment: Any = True,
                       num: int = 16, seed: int = 0, resize: str = "letterbox") -> Iterator[dict]:
    """Decode and (optionally) augment examples for previews and checks.

    Args:
        dataset: The DetectionDataset.
        image_size: Canvas (H, W) or an int.
        augment: AugmentConfig / dict / True / None (None: plain letterbox).
        num: Number of examples (the first ``num`` records).
        seed: Seed for the augmentation.
        resize: The model's ``model.resize``.

    Yields:
        dicts with "canvas" uint8 [H, W, 3] (before normalization), "boxes"
        [M, 4] canvas-normalized kept boxes, "classes" [M], "iscrowd" [M],
        "image_path".
    """
    cfg = AugmentConfig.from_any(augment)
    H, W = canvas_hw(image_size)
    min_visible = cfg.min_visible if cfg is not None else 0.0
    for k, r in enumerate(dataset.records[:num]):
        try:
            image = load_image(r.image_path)
        except DataError as e:
            logger.warning("%s; skipped image", e)
            continue
        canvas, boxes, visible = augment_example(image, r.boxes, tf.constant([seed, k], tf.int64),
                                                 (H, W), cfg, resize)
        visible = visible.numpy()
        keep = (visible > 0) & ((visible >= min_visible) | r.iscrowd)
        yield {"canvas": np.clip(np.round(canvas.numpy()), 0, 255).astype(np.uint8),
               "boxes": boxes.numpy()[keep], "classes": r.classes[keep],
               "iscrowd": r.iscrowd[keep], "image_path": r.image_path}
