"""Preview grid: dataset images as the model sees them, with boxes and labels drawn."""
from __future__ import annotations

import colorsys
import os
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fpn_edge.atomic import atomic_path
from keras_fpn.data.dataset import DetectionDataset
from keras_fpn.data.images import PathLike


def class_colour(class_id: int) -> tuple:
    """A distinct, bright RGB colour per class id (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(canvas: np.ndarray, boxes: np.ndarray, classes: np.ndarray, names: tuple,
               iscrowd: Optional[np.ndarray] = None, title: str = "") -> Image.Image:
    """Draw normalized yxyx boxes with class names on an image.

    Args:
        canvas: uint8 [H, W, 3] image.
        boxes: [N, 4] yxyx normalized to this image.
        classes: [N] contiguous class ids.
        names: Class names.
        iscrowd: Optional [N] bool; crowd boxes are drawn grey with "(crowd)".
        title: Text written at the top-left corner (e.g. the file name).

    Returns:
        The annotated Pillow image.
    """
    img = Image.fromarray(canvas).convert("RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    H, W = canvas.shape[:2]
    crowd = np.zeros(len(boxes), bool) if iscrowd is None else np.asarray(iscrowd, bool)
    for box, c, cr in zip(np.asarray(boxes), np.asarray(classes), crowd):
        y0, x0, y1, x1 = box * np.array([H, W, H, W])
        colour = (160, 160, 160) if cr else class_colour(int(c))
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=2)
        label = names[int(c)] + (" (crowd)" if cr else "")
        tx, ty = x0 + 2, max(y0 - 12, 0)
        tw = draw.textlength(label, font=font)
        draw.rectangle([tx - 1, ty, tx + tw + 1, ty + 11], fill=(0, 0, 0))
        draw.text((tx, ty), label, fill=colour, font=font)
    if title:
        tw = draw.textlength(title, font=font)
        draw.rectangle([0, H - 12, tw + 4, H], fill=(0, 0, 0))
        draw.text((2, H - 12), title, fill=(255, 255, 255), font=font)
    return img


def render_preview(dataset: DetectionDataset, out: PathLike, *, num: int = 16,
                   augmented: bool = False, augment: Any = True, image_size=320,
                   seed: int = 0, cols: Optional[int] = None, resize: str = "letterbox") -> str:
    """Write a PNG grid of letterboxed or stretched (optionally augmented) images with boxes.

    Each cell is the model-input canvas (before normalization) produced by the
    training's own ``augment.augment_example`` (plain resize unless ``augmented``),
    so it shows exactly the boxes training uses.

    Args:
        dataset: The DetectionDataset.
        out: Output .png path (written atomically).
        num: Number of images (a seeded random sample).
        augmented: Apply training augmentation.
        augment: AugmentConfig / dict / True used when ``augmented``.
        image_size: Canvas (H, W) or an int.
        seed: Seed of the sample and the augmentation.
        cols: Grid columns (default ceil(sqrt(num))).
        resize: The model's ``model.resize`` (``"letterbox"`` | ``"stretch"``).

    Returns:
        The written path.
    """
    from keras_fpn.data.pipeline import augmented_examples

    rng = np.random.default_rng(seed)
    n = min(num, len(dataset))
    idx = sorted(rng.choice(len(dataset), size=n, replace=False)) if n else []
    subset = dataset.subset(idx)
    H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    cells = []
    for ex in augmented_examples(subset, (H, W), augment if augmented else None, num=n, seed=seed,
                                 resize=resize):
        cells.append(draw_boxes(ex["canvas"], ex["boxes"], ex["classes"], dataset.label_map.names,
                                ex["iscrowd"], os.path.basename(ex["image_path"])))
    cols = cols or max(1, int(np.ceil(np.sqrt(max(len(cells), 1)))))
    rows = max(1, int(np.ceil(len(cells) / cols)))
    pad = 4
    grid = Image.new("RGB", (cols * (W + pad) + pad, rows * (H + pad) + pad), (255, 255, 255))
    for k, cell in enumerate(cells):
        grid.paste(cell, (pad + (k % cols) * (W + pad), pad + (k // cols) * (H + pad)))
    out = os.path.abspath(os.fspath(out))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    return out
