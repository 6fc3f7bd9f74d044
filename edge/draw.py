"""Draw detections on an image with Pillow."""
from __future__ import annotations

import numpy as np

__all__ = ["draw_detections", "class_color"]

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
            (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
            (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]


def class_color(class_id: int) -> tuple:
    """A stable RGB colour for a class id."""
    return _PALETTE[int(class_id) % len(_PALETTE)]


def draw_detections(image, detections, *, line_width: int | None = None):
    """Return a copy of ``image`` with boxes and ``label score`` captions drawn.

    Args:
        image: ``[h, w, 3]`` uint8 RGB array or PIL image.
        detections: :class:`fpn_edge.detector.Detection` objects (or dicts with
            ``box_xyxy``, ``label``, ``score``, ``class_id``), pixel coordinates.
        line_width: box outline width (default: scales with the image size).

    Returns:
        An RGB ``PIL.Image.Image``.
    """
    from PIL import Image, ImageDraw, ImageFont

    im = image.copy().convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(
        np.asarray(image, dtype=np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(im)
    lw = line_width or max(1, round(max(im.size) / 300))
    font = ImageFont.load_default()
    for d in detections:
        if isinstance(d, dict):
            box, label, score, cid = d["box_xyxy"], d["label"], d["score"], d["class_id"]
        else:
            box, label, score, cid = d.box_xyxy, d.label, d.score, d.class_id
        x1, y1, x2, y2 = [float(v) for v in box]
        color = class_color(cid)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=color, width=lw)
        text = f"{label} {score:.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 4, ty + th + 4], fill=color)
        draw.text((x1 + 2, ty + 2 - tb[1]), text, fill=(0, 0, 0) if sum(color) > 382 else (255, 255, 255),
                  font=font)
    return im
