"""Draw detections, and segmentation overlays, on an image with Pillow."""
from __future__ import annotations

import numpy as np

__all__ = ["draw_detections", "class_color", "segmentation_palette", "draw_segmentation"]

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


def segmentation_palette(num_labels: int, background_id: int = 0) -> np.ndarray:
    """``[num_labels, 3]`` uint8 colours: black for the background, then the detection colours.

    Foreground label ``k`` gets ``class_color`` of its index among the
    foreground labels, so a class has the same colour as in ``draw_detections``
    of a detector with the same label list.
    """
    pal = np.zeros((num_labels, 3), np.uint8)
    fg = 0
    for k in range(num_labels):
        if k != background_id:
            pal[k] = class_color(fg)
            fg += 1
    return pal


def draw_segmentation(image, class_map, labels, *, background_id: int = 0, alpha: float = 0.55,
                      legend: bool = True):
    """Return a copy of ``image`` with the class map blended over it (background left as is).

    Args:
        image: ``[h, w, 3]`` uint8 RGB array or PIL image.
        class_map: uint8 ``[h, w]`` class ids (index into ``labels``), same size as the image.
        labels: the class names, background included.
        background_id: the label that is not drawn.
        alpha: opacity of the class colours.
        legend: draw a swatch + name for each class present (top-left corner).

    Returns:
        An RGB ``PIL.Image.Image``.
    """
    from PIL import Image, ImageDraw, ImageFont

    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    cmap = np.asarray(class_map)
    if cmap.shape != rgb.shape[:2]:
        raise ValueError(f"class map {list(cmap.shape)} and image {list(rgb.shape[:2])} differ in size")
    pal = segmentation_palette(len(labels), background_id)
    colours = pal[np.minimum(cmap, len(labels) - 1)].astype(np.float32)
    fg = (cmap != background_id)[..., None]
    out = np.where(fg, rgb * (1.0 - alpha) + colours * alpha, rgb)
    im = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
    if legend:
        present = [k for k in np.unique(cmap).tolist() if k != background_id and k < len(labels)]
        draw = ImageDraw.Draw(im)
        font = ImageFont.load_default()
        y = 2
        for k in present:
            tb = draw.textbbox((0, 0), str(labels[k]), font=font)
            th = tb[3] - tb[1]
            draw.rectangle([2, y, 2 + th + 2, y + th + 2], fill=tuple(int(v) for v in pal[k]), outline=(0, 0, 0))
            draw.rectangle([th + 6, y, th + 10 + tb[2] - tb[0], y + th + 2], fill=(0, 0, 0))
            draw.text((th + 8, y + 1 - tb[1]), str(labels[k]), fill=(255, 255, 255), font=font)
            y += th + 4
    return im
