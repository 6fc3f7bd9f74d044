"""Bad-input handling shared by the readers: issue records and logging, box cleaning, size checks.

Conventions (every reader in ``keras_fpn.data`` follows them):

- A reader skips the bad item (image, object, row) with one ``logging``
  WARNING line on the ``keras_fpn.data`` logger naming the file and the
  reason, logs a summary line at the end, and records every event as a
  ``DataIssue`` in ``DetectionDataset.issues``. ``strict=True`` raises
  ``DataError`` at the first bad item instead.
- A 0x0 or missing declared image size (VOC ``<size>``) taken from the image
  is a repair (INFO, recorded, never fatal); a box up to
  ``CLIP_TOLERANCE_PX`` outside the image is clipped silently (rounding,
  1-based VOC pixels).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

import numpy as np

from keras_fpn.data.images import DataError, ImageInfo, PathLike

logger = logging.getLogger("keras_fpn.data")

#: Boxes this many pixels outside the image are clipped silently (rounding, VOC 1-based).
CLIP_TOLERANCE_PX = 1.0

#: DataIssue actions that are bad items (WARNING); the others are repairs (INFO).
BAD_ACTIONS = {"skipped image", "dropped box", "clipped box", "dropped row", "skipped file"}


@dataclasses.dataclass(frozen=True)
class DataIssue:
    """One bad or repaired input item.

    Attributes:
        file: The file it concerns.
        reason: What was wrong.
        action: What the reader did ("skipped image", "dropped box", ...).
    """

    file: str
    reason: str
    action: str


class IssueLog:
    """Collects bad-input events for one reader call (conventions in the module docstring).

    Args:
        source: What is being read (used in the summary line).
        strict: Raise DataError at the first bad item instead of skipping it.
    """

    def __init__(self, source: str, strict: bool):
        self.source = source
        self.strict = strict
        self.issues: list = []

    def bad(self, file: PathLike, reason: str, action: str) -> None:
        """Record a bad item: WARNING line and skip, or DataError when strict."""
        file = os.fspath(file)
        if self.strict:
            raise DataError(f"{file}: {reason}")
        logger.warning("%s: %s; %s", file, reason, action)
        self.issues.append(DataIssue(file, reason, action))

    def repaired(self, file: PathLike, reason: str, action: str) -> None:
        """Record a harmless repair at INFO level (never fatal)."""
        file = os.fspath(file)
        logger.info("%s: %s; %s", file, reason, action)
        self.issues.append(DataIssue(file, reason, action))

    def summary(self, num_images: int, num_boxes: int) -> None:
        """Log one summary line: counts read and counts per action."""
        counts: dict = {}
        for issue in self.issues:
            counts[issue.action] = counts.get(issue.action, 0) + 1
        text = f"{self.source}: {num_images} images, {num_boxes} boxes"
        if counts:
            text += "; " + ", ".join(f"{v} x {k}" for k, v in sorted(counts.items()))
        if any(i.action in BAD_ACTIONS for i in self.issues):
            logger.warning(text)
        else:
            logger.info(text)


def resolve_size(declared_w: Optional[float], declared_h: Optional[float], info: ImageInfo,
                 file: PathLike, log: IssueLog) -> Optional[tuple]:
    """Check an annotation's declared image size against the real one.

    Args:
        declared_w: Width the annotation states (None or 0 when missing).
        declared_h: Height the annotation states (None or 0 when missing).
        info: The image header (displayed size after EXIF orientation).
        file: Annotation file, for messages.
        log: The IssueLog.

    Returns:
        (width, height) of the displayed image, or None when the image must be
        skipped because the annotation was made for another size (pixel boxes
        would not line up).
    """
    if not declared_w or not declared_h:
        log.repaired(file, f"annotation size is {declared_w or 0}x{declared_h or 0}, the image "
                     f"is {info.width}x{info.height}", "size from image")
        return info.width, info.height
    dw, dh = int(round(float(declared_w))), int(round(float(declared_h)))
    if (dw, dh) == (info.width, info.height):
        return info.width, info.height
    if (dw, dh) == (info.stored_width, info.stored_height):
        reason = (f"annotation size {dw}x{dh} is the stored image, but EXIF orientation "
                  f"{info.orientation} displays it as {info.width}x{info.height} "
                  "(boxes must refer to the displayed image)")
    else:
        reason = f"annotation size {dw}x{dh} differs from the image's real size {info.width}x{info.height}"
    log.bad(file, reason, "skipped image")
    return None


def clean_boxes(yxyx: np.ndarray, width: int, height: int, file: PathLike, log: IssueLog,
                labels: Optional[Sequence[str]] = None) -> tuple:
    """Clip normalized boxes to the image and drop empty or invalid ones.

    Boxes up to ``CLIP_TOLERANCE_PX`` outside are clipped silently (INFO);
    further out they are clipped with a WARNING ("clipped box"); boxes with
    non-finite values or zero/negative area after clipping are dropped
    ("dropped box"). In strict mode both warnings raise DataError.

    Args:
        yxyx: float64 [N, 4] normalized boxes relative to the image.
        width: Image width in pixels (for the tolerance and messages).
        height: Image height in pixels.
        file: Annotation file, for messages.
        log: The IssueLog.
        labels: Optional per-box text for messages (e.g. "object 3").

    Returns:
        (boxes float32 [M, 4], keep bool [N]).
    """
    b = np.asarray(yxyx, np.float64).reshape(-1, 4)
    finite = np.all(np.isfinite(b), axis=1)
    clipped = np.clip(np.where(finite[:, None], b, 0.0), 0.0, 1.0)
    nonempty = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    tol = np.array([CLIP_TOLERANCE_PX / height, CLIP_TOLERANCE_PX / width] * 2)
    moved = np.any(np.abs(clipped - np.where(finite[:, None], b, 0.0)) > tol, axis=1)
    keep = finite & nonempty
    # only bad boxes need the per-box loop (messages)
    for i in np.flatnonzero(~keep | moved):
        name = labels[i] if labels is not None else f"box {i}"
        if not finite[i]:
            log.bad(file, f"{name} has non-finite coordinates", "dropped box")
            continue
        px = b[i] * np.array([height, width, height, width])
        text = f"{name} [xmin={px[1]:g}, ymin={px[0]:g}, xmax={px[3]:g}, ymax={px[2]:g}] px"
        if not nonempty[i]:
            log.bad(file, f"{text} has zero or negative area inside the {width}x{height} image",
                    "dropped box")
        else:
            log.bad(file, f"{text} extends outside the {width}x{height} image", "clipped box")
    return clipped[keep].astype(np.float32), keep


