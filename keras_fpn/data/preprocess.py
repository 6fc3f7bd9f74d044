"""Model-input geometry and normalization: letterbox or stretch, normalize, and their inverse for boxes.

Conventions (stated once here; training, evaluation, calibration and the edge
runtime ``fpn_edge`` all follow them):

- *Original image*: the decoded, displayed image of ``images.load_image``
  (uint8 RGB ``[h, w, 3]``); record boxes are normalized to it (box format in
  ``keras_fpn.data.dataset``). *Canvas*: the model input, ``(H, W)`` =
  ``image_size`` (an int means square).
- Resize mode (``model.resize``, ``RESIZE_MODES``) sets only the content's
  size ``resized_hw = (new_h, new_w)`` on the canvas; everything else
  (resampling, padding, box mapping) is the same code for both:
  ``letterbox`` (the default): ``scale = min(H / h, W / w)``, resized size
  ``(round(h * scale), round(w * scale))`` (round half to even, computed in
  float64, at least 1 px); ``stretch``: ``(H, W)``, each axis scaled on its
  own (``H / h``, ``W / w``), as MediaPipe and the TFLite Task Library feed
  a model. The content is resized with ``tf.image.resize`` bilinear with
  half-pixel centres and no antialias and pasted at the *top-left* of an
  ``(H, W)`` canvas of zeros (stretch: no padding); canvas values are
  float32 0..255.
- Boxes: ``[ymin, xmin, ymax, xmax]`` normalized to the original image map
  to the canvas by ``y * new_h / H``, ``x * new_w / W`` (content at the
  top-left, so no offset; stretch: the identity); ``canvas_to_original`` is
  the inverse.
- Normalization: ``{"channel_order": "RGB"|"BGR", "mean": [3], "std": [3]}``
  (a dict, or an object with those attributes); the channels are reordered
  first, then ``(x - mean) / std`` with mean/std listed in the *output*
  channel order (caffe BGR means are B, G, R).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from fpn_edge.preprocess import RESIZE_MODES, check_resize

__all__ = ["RESIZE_MODES", "canvas_hw", "normalization_params", "resized_size", "letterbox", "normalize",
           "preprocess_for_inference", "canvas_to_original"]


def canvas_hw(image_size) -> tuple:
    """The canvas ``(H, W)`` as ints from an ``image_size`` (an int means square)."""
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def normalization_params(normalization) -> tuple:
    """Validate a normalization setting (see the module conventions).

    Returns:
        (bgr: bool, mean float32 [3], std float32 [3]).

    Raises:
        ValueError: unknown channel order, or not 3 means and 3 non-zero stds.
    """
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


def resized_size(height, width, image_size, jitter=1.0, resize: str = "letterbox") -> tuple:
    """The content's size on the canvas (int32 tensors), optionally with a scale factor.

    Args:
        height: Original image height (scalar tensor or int).
        width: Original image width.
        image_size: Canvas (H, W) or an int for square.
        jitter: Factor on the resize scale (1: plain resize, clamped to the canvas).
        resize: ``"letterbox"`` or ``"stretch"`` (module conventions).

    Returns:
        (new_h, new_w) int32 scalars.
    """
    H, W = canvas_hw(image_size)
    check_resize(resize)
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    jitter64 = tf.cast(jitter, tf.float64)
    if resize == "stretch":
        nh = tf.maximum(tf.cast(tf.round(H * jitter64), tf.int32), 1)
        nw = tf.maximum(tf.cast(tf.round(W * jitter64), tf.int32), 1)
    else:
        scale = tf.minimum(H / h, W / w) * jitter64
        nh = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), 1)
        nw = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), 1)
    if isinstance(jitter, (int, float)) and jitter == 1.0:
        nh, nw = tf.minimum(nh, H), tf.minimum(nw, W)
    return nh, nw


def letterbox(image, image_size, resize: str = "letterbox") -> tuple:
    """Resize to ``resized_size`` and paste at the top-left of a zero canvas.

    Args:
        image: [h, w, 3] image (uint8 or float 0..255), tensor or numpy.
        image_size: Canvas (H, W) or an int for square.
        resize: ``"letterbox"`` (keep the aspect ratio) or ``"stretch"`` (fill the canvas).

    Returns:
        (canvas float32 [H, W, 3] in 0..255, resized_hw int32 [2] = (new_h, new_w));
        the scales are ``new_h / h`` and ``new_w / w`` (letterbox: equal up to rounding).
    """
    H, W = canvas_hw(image_size)
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    nh, nw = resized_size(shape[0], shape[1], (H, W), resize=resize)
    resized = tf.image.resize(image, tf.stack([nh, nw]), method="bilinear", antialias=False)
    canvas = tf.image.pad_to_bounding_box(tf.cast(resized, tf.float32), 0, 0, H, W)
    canvas = tf.ensure_shape(canvas, [H, W, 3])
    return canvas, tf.stack([nh, nw])


def normalize(image, normalization) -> tf.Tensor:
    """Apply the model's input normalization to 0..255 RGB pixels.

    Args:
        image: [..., 3] RGB float (or uint8) 0..255.
        normalization: The model's normalization (module conventions).

    Returns:
        float32 tensor, channels reordered then ``(x - mean) / std``.
    """
    bgr, mean, std = normalization_params(normalization)
    x = tf.cast(image, tf.float32)
    if bgr:
        x = x[..., ::-1]
    return (x - mean) / std


def preprocess_for_inference(image, image_size, normalization, resize: str = "letterbox") -> tuple:
    """THE preprocessing of evaluation, prediction and int8 calibration: resize onto the canvas, normalize.

    Args:
        image: uint8 [h, w, 3] RGB from ``load_image`` (tensor or numpy).
        image_size: Canvas (H, W) or an int for square.
        normalization: The model's normalization dict.
        resize: The model's ``model.resize`` (``"letterbox"`` | ``"stretch"``).

    Returns:
        (image float32 [H, W, 3] normalized, resized_hw int32 [2]).
    """
    canvas, resized_hw = letterbox(image, image_size, resize)
    return normalize(canvas, normalization), resized_hw


def canvas_to_original(boxes, resized_hw, image_size):
    """Map normalized canvas boxes back to boxes normalized to the original image.

    Args:
        boxes: [..., 4] yxyx normalized to the canvas (numpy or tensor).
        resized_hw: (new_h, new_w) from ``letterbox`` (stretch: (H, W), the identity).
        image_size: Canvas (H, W) or an int.

    Returns:
        Boxes [..., 4] normalized to the original image, clipped to [0, 1]
        (numpy in, numpy out; tensor in, tensor out).
    """
    H, W = canvas_hw(image_size)
    if isinstance(boxes, np.ndarray):
        nh, nw = (float(v) for v in np.asarray(resized_hw))
        f = np.array([H / nh, W / nw, H / nh, W / nw], np.float32)
        return np.clip(boxes * f, 0.0, 1.0).astype(np.float32)
    r = tf.cast(resized_hw, tf.float32)
    f = tf.stack([H / r[0], W / r[1], H / r[0], W / r[1]])
    return tf.clip_by_value(tf.cast(boxes, tf.float32) * f, 0.0, 1.0)
