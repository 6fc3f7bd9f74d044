"""Image loading and letterbox / stretch preprocessing in numpy/Pillow, identical to the TF pipeline.

The model's resize mode (metadata ``input.resize``, :data:`RESIZE_MODES`; a file
without the key is ``letterbox``) sets the content's size ``(new_h, new_w)`` on
the model canvas (H, W):

- ``letterbox``: keep the aspect ratio so the image fits inside the canvas:
  ``scale = min(H / h, W / w)``, new size ``(round(h * scale), round(w * scale))``
  (round half to even, clamped to [1, H] x [1, W]);
- ``stretch``: ``(H, W)``, each axis scaled on its own (``H / h`` and ``W / w``),
  what MediaPipe and the TFLite Task Library feed a model.

The content is resized bilinearly with half-pixel centres and no antialiasing
(``tf.image.resize(..., "bilinear", antialias=False)``, reproduced here in
float32 arithmetic), pasted at the top-left of an (H, W) canvas of zeros
(before normalization), then ``(x - mean) / std`` in the model's channel order.
The resized pixels stay float32 (no rounding back to uint8).

A box normalized to the canvas maps back to the original image by
``y_img = y * H / new_h``, ``x_img = x * W / new_w`` (normalized to the original
image; per axis, the identity for stretch).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fpn_edge.errors import EdgeError

__all__ = ["load_image", "pil_to_rgb", "as_rgb_uint8", "resize_bilinear", "letterbox", "letterbox_size", "normalize",
           "quantize", "LetterboxInfo", "RESIZE_MODES", "check_resize"]

#: the model-input resize modes (module docstring); the first is the default, and that of old files
RESIZE_MODES = ("letterbox", "stretch")


def check_resize(resize) -> str:
    """``resize`` when it is one of :data:`RESIZE_MODES`, else ``ValueError`` naming the choices."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def _has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def pil_to_rgb(im) -> np.ndarray:
    """A decoded, EXIF-transposed Pillow image -> ``[h, w, 3]`` uint8 RGB (the decoding rule).

    The one implementation of the rule (``keras_fpn.data.images`` decodes training,
    evaluation and calibration images with it too): images with an alpha channel
    (``RGBA``, ``LA``, ``PA``, or a ``transparency`` entry) go through Pillow's
    ``convert("RGBA")`` and are composited over **white** in integer arithmetic,
    ``(rgb * a + 255 * (255 - a) + 127) // 255``; 16-bit grayscale (``I;16*``, e.g.
    a 16-bit PNG) keeps the high byte of each sample, as Pillow reduces 16-bit colour
    PNGs (its ``convert("RGB")`` would clip every value above 255 to white; a 16-bit
    ``transparency`` entry is not applied); every other mode uses Pillow's
    ``convert("RGB")`` (grayscale replicated, palette expanded).
    """
    if im.mode.startswith("I;16"):
        gray = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if _has_alpha(im):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[..., 3:4]
        return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)


def load_image(path) -> np.ndarray:
    """Read an image file as an ``[h, w, 3]`` uint8 RGB array.

    The format is detected from the content (not the file name) and the image is
    fully decoded (a truncated file fails here), then the EXIF orientation is
    applied (``ImageOps.exif_transpose``) and the pixels converted by
    :func:`pil_to_rgb` (alpha composited over white).

    Raises:
        EdgeError: missing file, or a file Pillow cannot decode.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            arr = pil_to_rgb(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        raise EdgeError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeError(f"{path}: cannot decode the image ({msg})") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EdgeError(f"{path}: empty image")
    return np.ascontiguousarray(arr)


def as_rgb_uint8(image, where: str = "image") -> np.ndarray:
    """Check/convert an in-memory image to ``[h, w, 3]`` uint8 RGB.

    Accepts ``[h, w]`` (gray), ``[h, w, 3]`` and ``[h, w, 4]`` (alpha dropped:
    arrays are taken as pixels already composited) uint8 arrays, or a PIL image
    (converted by :func:`pil_to_rgb`).

    Raises:
        EdgeError: any other dtype or shape.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        image = pil_to_rgb(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise EdgeError(f"{where}: expected a uint8 RGB image, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EdgeError(f"{where}: expected an image of shape [h, w, 3], got {list(arr.shape)}")
    return arr


@lru_cache(maxsize=64)
def _axis_weights(in_size: int, out_size: int):
    """Lower/upper source indices and lerp weights along one axis (TF half-pixel scaler)."""
    # float32 throughout, like TF's kernel: in = (i + 0.5) * scale - 0.5
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(src)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.intp)
    lerp = (src - floor).astype(np.float32)
    for a in (lower, upper, lerp):
        a.setflags(write=False)
    return lower, upper, lerp


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize, half-pixel centres, no antialiasing (= ``tf.image.resize`` bilinear).

    Args:
        image: ``[h, w, c]`` array (any real dtype).
        out_h, out_w: output size.

    Returns:
        ``[out_h, out_w, c]`` float32.
    """
    h, w = image.shape[:2]
    y0, y1, yl = _axis_weights(h, out_h)
    x0, x1, xl = _axis_weights(w, out_w)
    xl = xl[None, :, None]
    top_rows = image[y0].astype(np.float32, copy=False)      # (out_h, w, c)
    bot_rows = image[y1].astype(np.float32, copy=False)
    top_left, top_right = top_rows[:, x0], top_rows[:, x1]    # (out_h, out_w, c)
    top = top_left + (top_right - top_left) * xl
    bot_left, bot_right = bot_rows[:, x0], bot_rows[:, x1]
    bottom = bot_left + (bot_right - bot_left) * xl
    return top + (bottom - top) * yl[:, None, None]


@dataclass(frozen=True)
class LetterboxInfo:
    """Where the image went on the canvas: original (h, w), resized (new_h, new_w), canvas (H, W)."""

    orig_h: int
    orig_w: int
    new_h: int
    new_w: int
    canvas_h: int
    canvas_w: int

    def canvas_to_image(self, boxes_yxyx: np.ndarray) -> np.ndarray:
        """Canvas-normalized yxyx boxes -> boxes normalized to the original image, clipped to [0, 1]."""
        b = np.asarray(boxes_yxyx, dtype=np.float32).reshape(-1, 4)
        sy = self.canvas_h / self.new_h
        sx = self.canvas_w / self.new_w
        out = b * np.array([sy, sx, sy, sx], dtype=np.float32)
        return np.clip(out, 0.0, 1.0)


def letterbox_size(h: int, w: int, canvas_h: int, canvas_w: int, resize: str = "letterbox") -> tuple[int, int]:
    """Resized ``(new_h, new_w)`` of an ``h x w`` image on a ``canvas_h x canvas_w`` canvas (module docstring)."""
    if check_resize(resize) == "stretch":
        return canvas_h, canvas_w
    scale = min(canvas_h / h, canvas_w / w)
    new_h = min(max(int(round(h * scale)), 1), canvas_h)
    new_w = min(max(int(round(w * scale)), 1), canvas_w)
    return new_h, new_w


def letterbox(image: np.ndarray, canvas_h: int, canvas_w: int, out: np.ndarray | None = None,
              resize: str = "letterbox"):
    """Resize to :func:`letterbox_size` and paste at the top-left of a zero canvas (0..255 scale).

    Args:
        image: ``[h, w, 3]`` uint8 RGB.
        canvas_h, canvas_w: model input size.
        out: optional preallocated ``[canvas_h, canvas_w, 3]`` float32 canvas to fill.
        resize: ``"letterbox"`` (keep the aspect ratio) or ``"stretch"`` (fill the canvas).

    Returns:
        ``(canvas float32 [canvas_h, canvas_w, 3], LetterboxInfo)``.
    """
    h, w = image.shape[:2]
    new_h, new_w = letterbox_size(h, w, canvas_h, canvas_w, resize)
    if out is None:
        out = np.zeros((canvas_h, canvas_w, 3), dtype=np.float32)
    else:
        out.fill(0.0)
    out[:new_h, :new_w] = resize_bilinear(image, new_h, new_w)
    return out, LetterboxInfo(h, w, new_h, new_w, canvas_h, canvas_w)


def normalize(canvas: np.ndarray, normalization: dict, out: np.ndarray | None = None) -> np.ndarray:
    """Apply the model's normalization to an RGB 0..255 canvas: channel order, then ``(x - mean) / std``.

    Args:
        canvas: ``[..., 3]`` float32 RGB pixels in 0..255.
        normalization: ``{"channel_order": "RGB"|"BGR", "mean": [3], "std": [3]}``
            (mean/std listed in the model's channel order).
        out: optional preallocated float32 output of the same shape.

    Returns:
        The normalized float32 array (``out`` when given).
    """
    src = canvas[..., ::-1] if normalization["channel_order"] == "BGR" else canvas
    mean = np.asarray(normalization["mean"], dtype=np.float32)
    std = np.asarray(normalization["std"], dtype=np.float32)
    out = np.subtract(src, mean, out=out, dtype=np.float32)
    np.divide(out, std, out=out)
    return out


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype, out: np.ndarray | None = None,
             work: np.ndarray | None = None) -> np.ndarray:
    """Quantize a float array for a uint8/int8 input tensor: ``round(x / scale) + zero_point``, saturated.

    Like TFLite's QUANTIZE kernel: the quotient is taken in float32, then
    rounded half away from zero. All in float32: ``t = trunc(v)``,
    ``f = v - t`` (exact: Sterbenz), and ``trunc(2 f)`` is ``±1`` exactly when
    ``|f| >= 0.5``, so ``t + trunc(2 f)`` rounds half away from zero with no
    intermediate rounding. The quotient is first clipped to one step past the
    saturation range (no inf reaches ``v - t``). An int8 model's input is
    quantized on every frame: the earlier float64 version took 1.2-5.7 ms of
    CPU for a 256x256x3 input on an AVX2 core (as much as the whole int8
    network; the range is page faults on its 1.5 MB temporaries), this one
    ~0.4 ms, and none of it allocates when given ``out`` and ``work``.

    Args:
        x: float array.
        scale, zero_point: the tensor's quantization.
        dtype: ``np.uint8`` or ``np.int8``.
        out: optional output array of ``dtype`` and ``x``'s shape.
        work: optional float32 scratch of shape ``(2, *x.shape)`` (reused
            per frame by ``fpn_edge.runner``).
    """
    info = np.iinfo(dtype)
    zp = np.float32(zero_point)
    x = np.asarray(x, dtype=np.float32)
    if work is None:
        work = np.empty((2,) + x.shape, np.float32)
    v, q = work[0], work[1]
    np.divide(x, np.float32(scale), out=v)
    np.clip(v, np.float32(info.min) - zp - 1, np.float32(info.max) - zp + 1, out=v)
    np.trunc(v, out=q)
    np.subtract(v, q, out=v)                  # fractional part, sign of the quotient
    np.add(v, v, out=v)
    np.add(q, np.trunc(v, out=v), out=q)      # + {-1, 0, 1}: away from zero at |f| >= 0.5
    np.add(q, zp, out=q)
    np.clip(q, info.min, info.max, out=q)
    if out is None:
        return q.astype(dtype)
    np.copyto(out, q, casting="unsafe")
    return out
