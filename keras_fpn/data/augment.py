"""Training augmentation: random flip, scale jitter + crop, colour jitter, with boxes and class maps kept aligned.

Conventions (geometry and value ranges of ``keras_fpn.data.preprocess``):

- Augmentation works on the original image and maps boxes with the
  resize's own arithmetic (``resize``: letterbox or stretch, as
  ``preprocess.resized_size``): horizontal flip; scale jitter (the resize
  scale, per axis for stretch, times a log-uniform factor) followed by a random crop of the canvas
  size from the resized image when it is larger (content stays at the
  top-left otherwise); boxes are clipped to the visible part, and
  ``visible`` (visible area / area before clipping) lets the caller drop
  boxes with less than ``min_visible`` left. Photometric changes
  (brightness, contrast, saturation, hue; see ``_photometric``) touch the
  image content only, so the padding stays 0 as at inference.
- A class map (segmentation, ``keras_fpn.data.masks``) gets exactly the
  image's flip, resize (nearest instead of bilinear, same half-pixel
  geometry), crop and padding (with a fill value, the ignore label by
  default); no photometric change touches it.
- Randomness is stateless: everything is drawn from one int64 ``[2]`` seed
  pair, so the same seed gives the same augmentation, with or without a
  class map. ``cfg=None`` is exactly ``preprocess.letterbox`` (same
  ``resize``) plus the box mapping.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from keras_fpn.data.preprocess import canvas_hw, resized_size
from keras_fpn.ops.seg_labels import IGNORE_LABEL

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


def training_augment(augment: Any, training: bool) -> Optional[AugmentConfig]:
    """The AugmentConfig of a pipeline: None unless training or when it changes nothing;
    "default" = AugmentConfig()."""
    if not training:
        return None
    cfg = AugmentConfig.from_any(AugmentConfig() if augment == "default" else augment)
    return None if cfg is None or cfg.is_identity else cfg


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


def _augment(image, boxes, mask, seed, image_size, cfg: Optional[AugmentConfig], mask_fill: int,
             resize: str) -> tuple:
    """The one geometric + photometric augmentation (see ``augment_example``).

    ``mask`` (uint8 [h, w] class map or None) follows the image's geometry as
    the module conventions say, its padding filled with ``mask_fill``.

    Returns:
        (canvas, canvas_boxes, visible, mask_canvas or None).
    """
    H, W = canvas_hw(image_size)
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
        nh, nw = resized_size(shape[0], shape[1], (H, W), jitter, resize)
    else:
        nh, nw = resized_size(shape[0], shape[1], (H, W), resize=resize)
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


def augment_example(image, boxes, seed, image_size, cfg: Optional[AugmentConfig],
                    resize: str = "letterbox") -> tuple:
    """Flip, scale-jitter + crop, resize (letterbox or stretch) and colour-jitter one example.

    With ``cfg=None`` this is exactly ``letterbox(image, image_size, resize)`` plus the box mapping.

    Args:
        image: uint8 [h, w, 3] original image.
        boxes: float32 [N, 4] yxyx normalized to the original image.
        seed: int [2] stateless seed.
        image_size: Canvas (H, W) or an int.
        cfg: AugmentConfig or None.
        resize: The model's ``model.resize`` (``"letterbox"`` | ``"stretch"``).

    Returns:
        (canvas float32 [H, W, 3] 0..255, boxes float32 [N, 4] normalized to
        the canvas and clipped to the visible part, visible float32 [N]
        = visible area / area before clipping (0 for boxes outside)).
    """
    canvas, boxes, visible, _ = _augment(image, boxes, None, seed, image_size, cfg, 0, resize)
    return canvas, boxes, visible


def augment_with_mask(image, mask, seed, image_size, cfg: Optional[AugmentConfig],
                      fill: int = IGNORE_LABEL, resize: str = "letterbox") -> tuple:
    """``augment_example`` for an image and its class map (segmentation).

    Args:
        image: uint8 [h, w, 3] original image.
        mask: uint8 [h, w] class map (``keras_fpn.data.masks``).
        seed: int [2] stateless seed (the same seed gives the same geometry
            as ``augment_example``).
        image_size: Canvas (H, W) or an int.
        cfg: AugmentConfig or None (None: plain letterbox).
        fill: class-map value of the canvas padding (default: ignore).
        resize: The model's ``model.resize``; the class map is resized the same way.

    Returns:
        (canvas float32 [H, W, 3] 0..255, mask uint8 [H, W]).
    """
    canvas, _, _, mask_canvas = _augment(image, tf.zeros([0, 4]), mask, seed, image_size, cfg, fill, resize)
    return canvas, mask_canvas
