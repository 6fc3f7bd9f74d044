"""Image decoding shared by every reader, the tf.data pipeline and the tools.

The decoding rule (the edge runtime ``fpn_edge`` must reproduce it exactly):

1. Open with Pillow by *content* (a PNG named ``.jpg`` is read as PNG) and
   decode fully, so truncated or corrupt files fail here, not later.
2. Apply the EXIF orientation (``PIL.ImageOps.exif_transpose``). Boxes in
   every annotation format refer to this *displayed* image, as annotation
   tools show it, and record ``width``/``height`` are its size.
3. Convert to 8-bit RGB by ``fpn_edge.preprocess.pil_to_rgb`` (the one
   implementation; the edge runtime decodes with it too):

   - ``RGB``: as is. ``L``, ``CMYK``, ``YCbCr``, ``I``, ``F``, palette
     without transparency...: Pillow's ``convert("RGB")``.
   - 16-bit grayscale (``I;16``, e.g. a 16-bit PNG): the high byte of each
     sample, as Pillow itself reduces 16-bit colour PNGs to 8 bits
     (``convert("RGB")`` would clip every value above 255 to white).
   - Anything with an alpha channel (``RGBA``, ``LA``, ``PA``, palette or
     ``L``/``RGB`` with a ``transparency`` entry) is first converted to
     ``RGBA`` by Pillow and then composited over **white** with integer
     arithmetic: ``out = (rgb * a + 255 * (255 - a) + 127) // 255``
     (uint16 intermediate), i.e. a transparent pixel becomes 255. White is
     what web cut-out images (the RGBA files in the fruit set) were made to
     be shown on; the colour stored under alpha 0 is arbitrary (white in some
     files, black in others) and is never used.

An image over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``
x 2, ~179 M pixels) is a ``DataError`` like any undecodable file.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fpn_edge.preprocess import pil_to_rgb

PathLike = Union[str, os.PathLike]

#: File extensions treated as images when a reader lists a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION_TAG = 0x0112


class DataError(ValueError):
    """Bad input data; the message is one line naming the file and the problem."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What an image header says, without decoding the pixels.

    Attributes:
        width: Displayed width in pixels (after the EXIF orientation).
        height: Displayed height in pixels (after the EXIF orientation).
        stored_width: Width of the pixels as stored in the file.
        stored_height: Height of the pixels as stored in the file.
        format: Pillow's format name from the file content ("JPEG", "PNG", ...).
        mode: Pillow's mode ("RGB", "L", "RGBA", "P", "CMYK", ...).
        orientation: EXIF orientation 1..8 (1 when absent).
    """

    width: int
    height: int
    stored_width: int
    stored_height: int
    format: str
    mode: str
    orientation: int


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not hide a good image
        return 1
    return value if 1 <= value <= 8 else 1


def read_image_info(path: PathLike) -> ImageInfo:
    """Read an image's size, format, mode and EXIF orientation from its header.

    Args:
        path: Image file.

    Returns:
        The ImageInfo; it does not prove the pixel data is intact (use load_image).

    Raises:
        DataError: the file is missing or is not an image Pillow recognizes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
            orient = _orientation(img)
            fmt, mode = img.format or "", img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({_one_line(e)})") from None
    if w <= 0 or h <= 0:
        raise DataError(f"{path}: image has size {w}x{h}")
    dw, dh = (h, w) if orient in _ROTATING_ORIENTATIONS else (w, h)
    return ImageInfo(dw, dh, w, h, fmt, mode, orient)


def load_image(path: PathLike) -> np.ndarray:
    """Decode an image file to the displayed RGB pixels (see the module rule).

    Args:
        path: Image file (format detected from the content, not the name).

    Returns:
        uint8 array [H, W, 3], EXIF orientation applied.

    Raises:
        DataError: missing, unreadable, corrupt or truncated file (one line).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated data raises here
            return np.ascontiguousarray(pil_to_rgb(ImageOps.exif_transpose(img)))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({_one_line(e)})") from None


def sniff_format(data: bytes) -> str:
    """Name an encoded image's format from its first bytes.

    Args:
        data: Encoded image bytes.

    Returns:
        "jpeg", "png", "gif", "bmp", "webp" or "" when unknown.
    """
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return ""


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())
