"""tf.data input pipeline: decode, letterbox, augment, normalize, encode targets.

Conventions:

- Images are decoded by ``images.load_image`` (Pillow, EXIF transpose, RGB
  rule) inside ``tf.numpy_function``, so training sees exactly the pixels
  evaluation and the edge runtime see.
- Letterbox (DESIGN.md): ``scale = min(H / h, W / w)``, resized size
  ``(round(h * scale), round(w * scale))`` (round half to even, computed in
  float64, at least 1 px), ``tf.image.resize`` bilinear with half-pixel
  centres and no antialias, pasted at the top-left of an (H, W) canvas of
  zeros, values float32 0..255. A box normalized to the original image maps
  to the canvas by ``y * new_h / H``, ``x * new_w / W``.
- Normalization: ``{"channel_order": "RGB"|"BGR", "mean": [3], "std": [3]}``;
  the channels are reordered first, then ``(x - mean) / std`` with mean/std
  listed in the *output* channel order (caffe BGR means are B, G, R).
- Training augmentation works on the original image and maps boxes with the
  same arithmetic: horizontal flip; scale jitter (the letterbox scale times a
  log-uniform factor) followed by a random crop of the canvas size from the
  resized image when it is larger (content stays at the top-left otherwise);
  boxes are clipped to the visible part and dropped when less than
  ``min_visible`` of their area remains; photometric changes (brightness,
  contrast, saturation, hue; see ``_photometric``) on the image content
  only, so the padding stays 0 as at inference.
- Targets: ``keras_fpn.ops.matcher.encode_targets`` on the non-crowd boxes.
  Crowd boxes are no positives: anchors that are background and lie more
  than ``crowd_ioa`` inside a crowd box (intersection over anchor area)
  become ignored (-2).
- Segmentation (``build_segmentation_dataset``): the class map of
  ``keras_fpn.data.masks`` goes through the same flip / resize / crop /
  padding as the image (``augment_with_mask``; nearest resize, padding =
  ignore label); no photometric change touches it.
- Caching (``cache=True``): decoded images are kept in memory; when nothing
  is random (no augmentation) the prepared examples are kept instead (uint8
  canvas + targets), so later epochs only shuffle, normalize and batch.
- Randomness is stateless: each element gets a seed pair from
  ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` (new
  values each epoch), so a fixed ``seed`` gives the same batches whatever
  the parallelism when ``deterministic=True``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_fpn.data.dataset import DetectionDataset
from keras_fpn.data.images import DataError, load_image
from keras_fpn.data.masks import IGNORE_LABEL, has_masks, rasterize_class_map

logger = logging.getLogger("keras_fpn.data")

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings.

    Attributes:
        hflip: Flip horizontally with probability 0.5.
        scale_jitter: (min, max) factor on the letterbox scale, sampled
            log-uniformly; (1, 1) disables it (and the crop).
        min_visible: Drop a box when less than this fraction of its area stays
            inside the crop.
        photometric: Apply the colour changes below.
        brightness: Max brightness delta as a fraction of 255.
        contrast: (lower, upper) contrast factor.
        saturation: (lower, upper) saturation factor.
        hue: Max hue delta (fraction of the hue circle).
    """

    hflip: bool = True
    scale_jitter: tuple = (0.8, 1.25)
    min_visible: float = 0.3
    photometric: bool = True
    brightness: float = 0.125
    contrast: tuple = (0.8, 1.25)
    saturation: tuple = (0.8, 1.25)
    hue: float = 0.02

    def __post_init__(self):
        lo, hi = (float(v) for v in self.scale_jitter)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_jitter must be 0 < min <= max, got {self.scale_jitter}")
        object.__setattr__(self, "scale_jitter", (lo, hi))
        object.__setattr__(self, "contrast", tuple(float(v) for v in self.contrast))
        object.__setattr__(self, "saturation", tuple(float(v) for v in self.saturation))

    @classmethod
    def from_any(cls, value: Any) -> Optional["AugmentConfig"]:
        """Build from None/False (no augmentation), True (defaults), a dict or an instance.

        Args:
            value: The setting.

        Returns:
            An AugmentConfig, or None for no augmentation.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = set(value) - names
            if unknown:
                raise ValueError(f"unknown augmentation keys {sorted(unknown)}; known: {sorted(names)}")
            return cls(**value)
        raise TypeError(f"augment must be None, bool, dict or AugmentConfig, got {type(value).__name__}")

    @property
    def is_identity(self) -> bool:
        """True when nothing is random: no flip, no scale jitter, no photometric change."""
        return not self.hflip and self.scale_jitter == (1.0, 1.0) and not self.photometric


def _hw(image_size) -> tuple:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def _norm_params(normalization) -> tuple:
    if isinstance(normalization, dict):
        get = normalization.get
    else:
        def get(k, d=None):
            return getattr(normalization, k, d)
    order = str(get("channel_order", "RGB")).upper()
    if order not in ("RGB", "BGR"):
        raise ValueError(f"normalization channel_order must be RGB or BGR, got {order!r}")
    mean = np.asarray(get("mean"), np.float32).reshape(-1)
    std = np.asarray(get("std"), np.float32).reshape(-1)
    if mean.size != 3 or std.size != 3 or np.any(std == 0):
        raise ValueError(f"normalization needs 3 means and 3 non-zero stds, got {normalization!r}")
    return order == "BGR", mean, std


def resized_size(height, width, image_size, jitter=1.0) -> tuple:
    """The letterbox resized size (int32 tensors), optionally with a scale factor.

    Args:
        height: Original image height (scalar tensor or int).
        width: Original image width.
        image_size: Canvas (H, W) or an int for square.
        jitter: Factor on the letterbox scale (1: plain letterbox, clamped to the canvas).

    Returns:
        (new_h, new_w) int32 scalars.
    """
    H, W = _hw(image_size)
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    scale = tf.minimum(H / h, W / w) * tf.cast(jitter, tf.float64)
    nh = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), 1)
    nw = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), 1)
    if isinstance(jitter, (int, float)) and jitter == 1.0:
        nh, nw = tf.minimum(nh, H), tf.minimum(nw, W)
    return nh, nw


def letterbox(image, image_size) -> tuple:
    """Resize keeping the aspect ratio and paste at the top-left of a zero canvas.

    Args:
        image: [h, w, 3] image (uint8 or float 0..255), tensor or numpy.
        image_size: Canvas (H, W) or an int for square.

    Returns:
        (canvas float32 [H, W, 3] in 0..255, resized_hw int32 [2] = (new_h, new_w));
        the scale is ``new_h / h`` (= ``new_w / w`` up to rounding).
    """
    H, W = _hw(image_size)
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    nh, nw = resized_size(shape[0], shape[1], (H, W))
    resized = tf.image.resize(image, tf.stack([nh, nw]), method="bilinear", antialias=False)
    canvas = tf.image.pad_to_bounding_box(tf.cast(resized, tf.float32), 0, 0, H, W)
    canvas = tf.ensure_shape(canvas, [H, W, 3])
    return canvas, tf.stack([nh, nw])


def normalize(image, normalization) -> tf.Tensor:
    """Apply the model's input normalization to 0..255 RGB pixels.

    Args:
        image: [..., 3] RGB float (or uint8) 0..255.
        normalization: {"channel_order", "mean", "std"} dict (or object with
            those attributes).

    Returns:
        float32 tensor, channels reordered then ``(x - mean) / std``.
    """
    bgr, mean, std = _norm_params(normalization)
    x = tf.cast(image, tf.float32)
    if bgr:
        x = x[..., ::-1]
    return (x - mean) / std


def preprocess_for_inference(image, image_size, normalization) -> tuple:
    """THE preprocessing of evaluation, prediction and int8 calibration.

    Args:
        image: uint8 [h, w, 3] RGB from ``load_image`` (tensor or numpy).
        image_size: Canvas (H, W) or an int for square.
        normalization: The model's normalization dict.

    Returns:
        (image float32 [H, W, 3] normalized, resized_hw int32 [2]).
    """
    canvas, resized_hw = letterbox(image, image_size)
    return normalize(canvas, normalization), resized_hw


def canvas_to_original(boxes, resized_hw, image_size):
    """Map normalized canvas boxes back to boxes normalized to the original image.

    Args:
        boxes: [..., 4] yxyx normalized to the canvas (numpy or tensor).
        resized_hw: (new_h, new_w) from ``letterbox``.
        image_size: Canvas (H, W) or an int.

    Returns:
        Boxes [..., 4] normalized to the original image, clipped to [0, 1]
        (numpy in, numpy out; tensor in, tensor out).
    """
    H, W = _hw(image_size)
    if isinstance(boxes, np.ndarray):
        nh, nw = (float(v) for v in np.asarray(resized_hw))
        f = np.array([H / nh, W / nw, H / nh, W / nw], np.float32)
        return np.clip(boxes * f, 0.0, 1.0).astype(np.float32)
    r = tf.cast(resized_hw, tf.float32)
    f = tf.stack([H / r[0], W / r[1], H / r[0], W / r[1]])
    return tf.clip_by_value(tf.cast(boxes, tf.float32) * f, 0.0, 1.0)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                       np.float64)


def _hue_matrix(theta):
    """3x3 matrix rotating the hue by theta radians (rotation of I/Q in YIQ space), for x @ M."""
    yiq = tf.constant(_RGB_TO_YIQ)
    c, s = tf.cos(theta), tf.sin(theta)
    one, zero = tf.ones_like(c), tf.zeros_like(c)
    rot = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, c, -s]), tf.stack([zero, s, c])])
    m = tf.linalg.inv(yiq) @ rot @ yiq  # rgb -> yiq -> rotate -> rgb, for column vectors
    return tf.cast(tf.transpose(m), tf.float32)


def _photometric(x, seeds, cfg: AugmentConfig):
    """Colour jitter on float 0..255 [h, w, 3] pixels; seeds: [4, 2].

    In this order: brightness adds ``d = U(-b, b) * 255``; contrast scales by
    ``U(lo, hi)`` around the per-channel mean; saturation blends with the luma
    ``(0.299, 0.587, 0.114)`` by ``U(lo, hi)``; hue rotates the chroma in YIQ
    space by ``U(-h, h)`` turns. All four are affine, so they are folded into
    one ``x @ A + b`` (cheaper than TF's HSV round trip) and clipped to 0..255
    once at the end.
    """
    flat = tf.reshape(x, [-1, 3])
    m = tf.eye(3, dtype=tf.float32)
    d = tf.constant(0.0)
    f = tf.constant(1.0)
    centre = tf.zeros([3])
    if cfg.brightness > 0:
        d = 255.0 * tf.random.stateless_uniform([], seeds[0], -cfg.brightness, cfg.brightness)
    if cfg.contrast != (1.0, 1.0):
        f = tf.random.stateless_uniform([], seeds[1], *cfg.contrast)
        centre = tf.reduce_mean(flat, axis=0) + d
    if cfg.saturation != (1.0, 1.0):
        fs = tf.random.stateless_uniform([], seeds[2], *cfg.saturation)
        gray = tf.constant(_LUMA)[:, None] * tf.ones([1, 3])  # x @ gray = luma in every channel
        m = m @ (fs * tf.eye(3) + (1.0 - fs) * gray)
    if cfg.hue > 0:
        theta = 2.0 * np.pi * tf.random.stateless_uniform([], seeds[3], -cfg.hue, cfg.hue,
                                                          dtype=tf.float64)
        m = m @ _hue_matrix(theta)
    # ((x + d) * f + (1 - f) * centre) @ m
    offset = (f * d + (1.0 - f) * centre)[None, :] @ m
    out = flat @ (f * m) + offset
    return tf.reshape(tf.clip_by_value(out, 0.0, 255.0), tf.shape(x))


def _augment(image, boxes, mask, seed, image_size, cfg: Optional[AugmentConfig], mask_fill: int) -> tuple:
    """The one geometric + photometric augmentation (see ``augment_example``).

    ``mask`` (uint8 [h, w] class map or None) gets exactly the image's flip,
    resize (nearest instead of bilinear, same half-pixel geometry), crop and
    padding (with ``mask_fill``); the photometric changes touch the image only.

    Returns:
        (canvas, canvas_boxes, visible, mask_canvas or None).
    """
    H, W = _hw(image_size)
    image = tf.convert_to_tensor(image)
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    shape = tf.shape(image)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)
    if mask is not None:
        mask = tf.convert_to_tensor(mask)[:, :, None]
    if cfg is not None and cfg.hflip:
        flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        if mask is not None:
            mask = tf.cond(flip, lambda: tf.reverse(mask, axis=[1]), lambda: mask)
        flipped = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)
        boxes = tf.where(flip, flipped, boxes)
    if cfg is not None and cfg.scale_jitter != (1.0, 1.0):
        lo, hi = math.log(cfg.scale_jitter[0]), math.log(cfg.scale_jitter[1])
        jitter = tf.exp(tf.random.stateless_uniform([], seeds[1], lo, hi, dtype=tf.float64))
        nh, nw = resized_size(shape[0], shape[1], (H, W), jitter)
    else:
        nh, nw = resized_size(shape[0], shape[1], (H, W))
    resized = tf.image.resize(image, tf.stack([nh, nw]), method="bilinear", antialias=False)
    oy = tf.random.stateless_uniform([], seeds[2], 0, tf.maximum(nh - H, 0) + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([], seeds[3], 0, tf.maximum(nw - W, 0) + 1, dtype=tf.int32)
    ch, cw = tf.minimum(nh - oy, H), tf.minimum(nw - ox, W)
    crop = resized[oy:oy + ch, ox:ox + cw]
    if cfg is not None and cfg.photometric:
        crop = _photometric(crop, seeds[4:8], cfg)
    canvas = tf.ensure_shape(tf.image.pad_to_bounding_box(crop, 0, 0, H, W), [H, W, 3])
    mask_canvas = None
    if mask is not None:
        # TF's nearest resize samples source pixel floor((i + 0.5) * in / out): the
        # pixel whose area holds the output pixel's centre, as the bilinear grid.
        m = tf.image.resize(mask, tf.stack([nh, nw]), method="nearest")[oy:oy + ch, ox:ox + cw, 0]
        m = tf.pad(m, [[0, H - ch], [0, W - cw]], constant_values=tf.cast(mask_fill, m.dtype))
        mask_canvas = tf.ensure_shape(m, [H, W])

    size = tf.cast(tf.stack([nh, nw, nh, nw]), tf.float32)
    offset = tf.cast(tf.stack([oy, ox, oy, ox]), tf.float32)
    px = boxes * size - offset  # (N, 4) px in the canvas, before clipping
    limit = tf.cast(tf.stack([ch, cw, ch, cw]), tf.float32)
    clipped = tf.clip_by_value(px, 0.0, limit)
    area = (px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])
    vis = tf.maximum(clipped[:, 2] - clipped[:, 0], 0.0) * tf.maximum(clipped[:, 3] - clipped[:, 1], 0.0)
    visible = tf.math.divide_no_nan(vis, area)
    canvas_boxes = clipped / tf.constant([H, W, H, W], tf.float32)
    return canvas, canvas_boxes, visible, mask_canvas


def augment_example(image, boxes, seed, image_size, cfg: Optional[AugmentConfig]) -> tuple:
    """Flip, scale-jitter + crop, letterbox and colour-jitter one example.

    With ``cfg=None`` this is exactly ``letterbox`` plus the box mapping.

    Args:
        image: uint8 [h, w, 3] original image.
        boxes: float32 [N, 4] yxyx normalized to the original image.
        seed: int [2] stateless seed.
        image_size: Canvas (H, W) or an int.
        cfg: AugmentConfig or None.

    Returns:
        (canvas float32 [H, W, 3] 0..255, boxes float32 [N, 4] normalized to
        the canvas and clipped to the visible part, visible float32 [N]
        = visible area / area before clipping (0 for boxes outside)).
    """
    canvas, boxes, visible, _ = _augment(image, boxes, None, seed, image_size, cfg, 0)
    return canvas, boxes, visible


def augment_with_mask(image, mask, seed, image_size, cfg: Optional[AugmentConfig],
                      fill: int = IGNORE_LABEL) -> tuple:
    """``augment_example`` for an image and its class map (segmentation).

    Args:
        image: uint8 [h, w, 3] original image.
        mask: uint8 [h, w] class map (``keras_fpn.data.masks``).
        seed: int [2] stateless seed (the same seed gives the same geometry
            as ``augment_example``).
        image_size: Canvas (H, W) or an int.
        cfg: AugmentConfig or None (None: plain letterbox).
        fill: class-map value of the canvas padding (default: ignore).

    Returns:
        (canvas float32 [H, W, 3] 0..255, mask uint8 [H, W]).
    """
    canvas, _, _, mask_canvas = _augment(image, tf.zeros([0, 4]), mask, seed, image_size, cfg, fill)
    return canvas, mask_canvas


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


class _Loader:
    """numpy_function body: index -> decoded image and annotation arrays."""

    def __init__(self, dataset: DetectionDataset, strict: bool):
        self.records = dataset.records
        self.strict = strict
        self.warned: set = set()

    def __call__(self, index):
        r = self.records[int(index)]
        try:
            image = load_image(r.image_path)
            ok = True
        except DataError as e:
            if self.strict:
                raise
            if r.image_path not in self.warned:
                self.warned.add(r.image_path)
                logger.warning("%s; skipped image", e)
            image, ok = np.zeros((1, 1, 3), np.uint8), False
        return (image, r.boxes, r.classes, r.iscrowd, np.int64(r.image_id),
                np.array([r.height, r.width], np.int32), np.bool_(ok))


class _MaskLoader(_Loader):
    """``_Loader`` plus the record's class map (``keras_fpn.data.masks``) as a last output."""

    def __init__(self, dataset: DetectionDataset, strict: bool, ignore_label: int):
        super().__init__(dataset, strict)
        self.ignore_label = ignore_label

    def __call__(self, index):
        out = super().__call__(index)
        r = self.records[int(index)]
        mask = (rasterize_class_map(r, ignore_label=self.ignore_label) if out[-1]
                else np.zeros((1, 1), np.uint8))
        return (*out, mask)


def _graph_only(fn):
    """Mark a tf.data map/filter function as plain graph code: tf.data would otherwise
    run autograph's source conversion on it and on everything it calls (no Python
    control flow on tensors here needs it). Building the demo's training pipeline
    took 12 s with the conversion (2 loaded cores)."""
    return tf.autograph.experimental.do_not_convert(fn)


def _decode_dataset(dataset: DetectionDataset, indices: tf.data.Dataset, strict: bool,
                    deterministic: bool, ignore_label: Optional[int] = None) -> tf.data.Dataset:
    """Decoded examples; with ``ignore_label`` also ``"mask"``, the uint8 class map."""
    masks = ignore_label is not None
    loader = _MaskLoader(dataset, strict, ignore_label) if masks else _Loader(dataset, strict)
    dtypes = [tf.uint8, tf.float32, tf.int32, tf.bool, tf.int64, tf.int32, tf.bool] + ([tf.uint8] if masks else [])

    @_graph_only
    def load(i):
        out = tf.numpy_function(loader, [i], dtypes, stateful=False)
        image, boxes, classes, crowd, image_id, hw, ok = out[:7]
        ex = {"image": tf.ensure_shape(image, [None, None, 3]),
              "boxes": tf.ensure_shape(boxes, [None, 4]),
              "classes": tf.ensure_shape(classes, [None]),
              "iscrowd": tf.ensure_shape(crowd, [None]),
              "image_id": tf.ensure_shape(image_id, []),
              "original_hw": tf.ensure_shape(hw, [2]),
              "ok": tf.ensure_shape(ok, [])}
        if masks:
            ex["mask"] = tf.ensure_shape(out[7], [None, None])
        return ex

    ds = indices.map(load, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.filter(_graph_only(lambda ex: ex["ok"]))


def _options(ds: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
    opts = tf.data.Options()
    opts.deterministic = deterministic
    return ds.with_options(opts)


def _training_augment(augment: Any, training: bool) -> Optional[AugmentConfig]:
    """The AugmentConfig of a pipeline: None unless training or when it changes nothing;
    "default" = AugmentConfig()."""
    if not training:
        return None
    cfg = AugmentConfig.from_any(AugmentConfig() if augment == "default" else augment)
    return None if cfg is None or cfg.is_identity else cfg


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
        cfg: The pipeline's AugmentConfig (``_training_augment``). With None and
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
        @_graph_only
        def cached(ex, pair):
            canvas, labels = geometry(ex, pair)
            return tf.cast(tf.round(tf.clip_by_value(canvas, 0.0, 255.0)), tf.uint8), labels

        ds = examples.map(cached, num_parallel_calls=AUTOTUNE, deterministic=True).cache()
        if shuffle:
            ds = ds.shuffle(len(dataset), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(_graph_only(lambda image, labels: (normalize(tf.cast(image, tf.float32), normalization), labels)),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        @_graph_only
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
        ds = _decode_dataset(dataset, indices, strict, True, ignore_label).cache()
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    else:
        if shuffle:
            indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = _decode_dataset(dataset, indices, strict, deterministic, ignore_label)
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def build_detection_dataset(dataset: DetectionDataset, *, image_size, anchors, normalization,
                            batch_size: int, training: bool, augment: Any = "default",
                            matcher: str = "iou", positive_iou: float = 0.5, negative_iou: float = 0.4,
                            force_match: bool = True, level_sizes: Optional[Sequence[int]] = None,
                            atss_top_k: int = 9,
                            scale_factors: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                            crowd_ioa: float = 0.5, shuffle: bool = True,
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
    H, W = _hw(image_size)
    cfg = _training_augment(augment, training)
    anchors = tf.constant(np.asarray(anchors, np.float32).reshape(-1, 4))
    num_anchors = int(anchors.shape[0])
    if drop_remainder is None:
        drop_remainder = training
    deterministic = deterministic or not training  # validation keeps the dataset's order
    _norm_params(normalization)  # validate early
    matcher_kw = dict(matcher=matcher, positive_iou=positive_iou, negative_iou=negative_iou,
                      force_match=force_match, level_sizes=level_sizes, atss_top_k=atss_top_k,
                      image_size=(H, W), scale_factors=tuple(scale_factors))
    min_visible = cfg.min_visible if cfg is not None else 0.0

    def prepare(ex, pair):
        from keras_fpn.ops.matcher import encode_targets

        canvas, boxes, visible = augment_example(ex["image"], ex["boxes"], pair, (H, W), cfg)
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
                               ignore_label: int = IGNORE_LABEL, shuffle: bool = True,
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
            seed, deterministic, cache, drop_remainder, strict: as
            ``build_detection_dataset``.
        ignore_label: Class-map value of ignored pixels (crowd, overlaps, padding).

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, 3] normalized,
        {"seg_logits": uint8 [B, H, W] class maps}).
    """
    if not has_masks(dataset):
        raise DataError(f"{dataset.source}: no segmentation masks in the dataset (segmentation needs "
                        "COCO polygons or RLE; the synthetic generator writes them with masks=True)")
    H, W = _hw(image_size)
    cfg = _training_augment(augment, training)
    if drop_remainder is None:
        drop_remainder = training
    deterministic = deterministic or not training  # validation keeps the dataset's order
    _norm_params(normalization)

    def prepare(ex, pair):
        canvas, mask = augment_with_mask(ex["image"], ex["mask"], pair, (H, W), cfg, ignore_label)
        return canvas, {"seg_logits": mask}

    return _prepared_batches(dataset, prepare, cfg=cfg, training=training, shuffle=shuffle, seed=seed, cache=cache,
                             strict=strict, deterministic=deterministic, normalization=normalization,
                             batch_size=batch_size, drop_remainder=drop_remainder, ignore_label=ignore_label)


def build_inference_dataset(dataset: DetectionDataset, *, image_size, normalization,
                            batch_size: int, strict: bool = False) -> tf.data.Dataset:
    """Evaluation / prediction pipeline through ``preprocess_for_inference``.

    Args:
        dataset: The DetectionDataset (order kept).
        image_size: Canvas (H, W) or an int.
        normalization: The model's normalization dict.
        batch_size: Batch size (last batch may be smaller).
        strict: An undecodable image raises instead of being skipped.

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, 3], {"image_id": int64 [B],
        "resized_hw": int32 [B, 2], "original_hw": int32 [B, 2]}).
    """
    H, W = _hw(image_size)
    _norm_params(normalization)
    ds = _decode_dataset(dataset, tf.data.Dataset.range(len(dataset)), strict, True)

    @_graph_only
    def prep(ex):
        image, resized_hw = preprocess_for_inference(ex["image"], (H, W), normalization)
        return image, {"image_id": ex["image_id"], "resized_hw": resized_hw,
                       "original_hw": ex["original_hw"]}

    ds = ds.map(prep, num_parallel_calls=AUTOTUNE, deterministic=True)
    return _options(ds.batch(batch_size).prefetch(AUTOTUNE), True)


def representative_images(dataset: DetectionDataset, n: int, image_size, normalization,
                          seed: int = 0) -> Iterator[np.ndarray]:
    """Int8 calibration inputs: n images through ``preprocess_for_inference``.

    Args:
        dataset: The DetectionDataset (usually the training set).
        n: Number of images (drawn without replacement; all when n >= len).
        image_size: Canvas (H, W) or an int.
        normalization: The model's normalization dict.
        seed: Seed of the draw.

    Yields:
        float32 numpy [1, H, W, 3], as the model input. Undecodable images are
        skipped with a warning.
    """
    H, W = _hw(image_size)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset))[:max(int(n), 0)]
    fn = tf.function(lambda im: preprocess_for_inference(im, (H, W), normalization)[0],
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    for i in order:
        try:
            image = load_image(dataset.records[int(i)].image_path)
        except DataError as e:
            logger.warning("%s; skipped image", e)
            continue
        yield fn(image).numpy()[None]


def augmented_examples(dataset: DetectionDataset, image_size, augment: Any = True,
                       num: int = 16, seed: int = 0) -> Iterator[dict]:
    """Decode and (optionally) augment examples for previews and checks.

    Args:
        dataset: The DetectionDataset.
        image_size: Canvas (H, W) or an int.
        augment: AugmentConfig / dict / True / None (None: plain letterbox).
        num: Number of examples (the first ``num`` records).
        seed: Seed for the augmentation.

    Yields:
        dicts with "canvas" uint8 [H, W, 3] (before normalization), "boxes"
        [M, 4] canvas-normalized kept boxes, "classes" [M], "iscrowd" [M],
        "image_path".
    """
    cfg = AugmentConfig.from_any(augment)
    H, W = _hw(image_size)
    min_visible = cfg.min_visible if cfg is not None else 0.0
    for k, r in enumerate(dataset.records[:num]):
        try:
            image = load_image(r.image_path)
        except DataError as e:
            logger.warning("%s; skipped image", e)
            continue
        canvas, boxes, visible = augment_example(image, r.boxes, tf.constant([seed, k], tf.int64),
                                                 (H, W), cfg)
        visible = visible.numpy()
        keep = (visible > 0) & ((visible >= min_visible) | r.iscrowd)
        yield {"canvas": np.clip(np.round(canvas.numpy()), 0, 255).astype(np.uint8),
               "boxes": boxes.numpy()[keep], "classes": r.classes[keep],
               "iscrowd": r.iscrowd[keep], "image_path": r.image_path}
