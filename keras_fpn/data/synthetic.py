"""Synthetic multi-scale shapes dataset, written to disk as a COCO dataset.

Each image (square, ``image_size`` px) has 1..``max_objects`` filled shapes
of five classes (circle, square, triangle, ring, cross), in random colours
that stand out from the background, with random rotation and shading. Object
sizes are drawn in equal thirds from COCO's small (area < 32**2 px), medium
and large ranges. Two styles (``STYLES``):

- ``cluttered`` (default): a textured, noisy background (two-colour gradient,
  blotchy low-frequency noise, faint lines, pixel noise, some images softened);
  sizes (square root of the visible area) 10-28 / 36-88 / 104-176 px at
  ``image_size`` = 320, scaled with ``image_size``.
- ``clean`` (the demo's): a smooth two-colour gradient with faint noise; sizes
  12-30 / 36-88 / 100-(0.8 * ``image_size``) px, so that small objects stay
  at least 12 px wide at the demo's 160 px; below 125 px every bin is capped
  at 0.8 * ``image_size``, and one whose start passes the cap starts at half of it.
A new object may cover at most 25 % of any earlier one and at most 25 % of it
may be covered; later objects are drawn on top and every annotation (bbox,
area, mask) describes the *visible* part. Masks are COCO compressed RLE.

Everything is a function of ``seed`` (each image has its own generator
seeded by ``(seed, split, index)``), so output is identical across runs. The
result is read with ``read_coco`` like any other COCO data.
"""
from __future__ import annotations

import math
import os
import time
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from keras_fpn.data.dataset import logger, write_json_atomic
from keras_fpn.data.images import PathLike

CLASSES = ("circle", "square", "triangle", "ring", "cross")
_SPLITS = {"train": 0, "val": 1}
# sqrt(visible area) ranges at 320 px: small < 32, 32 <= medium < 96, large >= 96
_SIZE_BINS = ((10.0, 28.0), (36.0, 88.0), (104.0, 176.0))
#: style -> (clutter, size bins in px or None for ``_SIZE_BINS`` scaled by image_size / 320)
STYLES = {"cluttered": (True, None), "clean": (False, ((12.0, 30.0), (36.0, 88.0), (100.0, None)))}
_MAX_COVER = 0.25


def _shape_mask(cls: int, d: float, cx: float, cy: float, theta: float, size: int) -> tuple:
    """Draw one shape of nominal area d**2 centred at (cx, cy).

    Returns:
        (bool patch [ph, pw], y0, x0): the patch covers rows y0.. and columns x0..
        of the image and is clipped to it.
    """
    rad = _radius(cls, d)
    y0, x0 = max(int(cy - rad) - 1, 0), max(int(cx - rad) - 1, 0)
    y1, x1 = min(int(cy + rad) + 2, size), min(int(cx + rad) + 2, size)
    img = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(img)
    c, s = math.cos(theta), math.sin(theta)
    lx, ly = cx - x0, cy - y0

    def poly(points):
        return [(lx + x * c - y * s, ly + x * s + y * c) for x, y in points]

    name = CLASSES[cls]
    if name == "circle":
        r = d / math.sqrt(math.pi)
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
    elif name == "square":
        h = d / 2
        draw.polygon(poly([(-h, -h), (h, -h), (h, h), (-h, h)]), fill=255)
    elif name == "triangle":
        a = d * math.sqrt(4 / math.sqrt(3))
        rc = a / math.sqrt(3)
        pts = [(rc * math.cos(t), rc * math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(poly(pts), fill=255)
    elif name == "ring":
        big = d / math.sqrt(math.pi * (1 - 0.55 ** 2))
        draw.ellipse([lx - big, ly - big, lx + big, ly + big], fill=255)
        small = 0.55 * big
        draw.ellipse([lx - small, ly - small, lx + small, ly + small], fill=0)
    else:  # cross: a plus sign of span a and arm width a/3
        a = 3 * d / math.sqrt(5)
        h, t = a / 2, a / 6
        pts = [(-t, -h), (t, -h), (t, -t), (h, -t), (h, t), (t, t), (t, h), (-t, h),
               (-t, t), (-h, t), (-h, -t), (-t, -t)]
        draw.polygon(poly(pts), fill=255)
    return np.asarray(img) > 0, y0, x0


def _radius(cls: int, d: float) -> float:
    """Bounding radius of a shape of nominal area d**2 (any rotation)."""
    name = CLASSES[cls]
    if name == "circle":
        return d / math.sqrt(math.pi)
    if name == "square":
        return d / math.sqrt(2)
    if name == "triangle":
        return d * math.sqrt(4 / math.sqrt(3)) / math.sqrt(3)
    if name == "ring":
        return d / math.sqrt(math.pi * (1 - 0.55 ** 2))
    a = 3 * d / math.sqrt(5)
    return math.hypot(a / 2, a / 6)


def _size_bins(style: str, size: int) -> tuple:
    """The three (low, high) size ranges in px of a style at ``size``."""
    bins = STYLES[style][1]
    if bins is None:
        return tuple((lo * size / 320.0, hi * size / 320.0) for lo, hi in _SIZE_BINS)
    top = 0.8 * size  # no object wider than 80 % of the image; small images shrink the bins that reach past it
    capped = [(lo, top if hi is None else min(hi, top)) for lo, hi in bins]
    return tuple((lo if lo < hi else hi / 2, hi) for lo, hi in capped)


def _background(rng: np.random.Generator, size: int, clutter: bool) -> np.ndarray:
    """A two-colour linear gradient plus blotchy noise, then faint lines (float32 [S, S, 3]);
    without ``clutter``: the gradient with faint noise only."""
    c0 = rng.uniform(0, 255, 3)
    c1 = np.clip(c0 + rng.normal(0, 60, 3), 0, 255)
    theta = rng.uniform(0, 2 * math.pi)
    cells = int(rng.integers(3, 12)) if clutter else 4
    # Build a cells x cells image (gradient sampled at the cell centres + noise) and
    # upsample it bilinearly: one small resize instead of full-size float arithmetic.
    coord = (np.arange(cells) + 0.5) / cells - 0.5
    t = math.cos(theta) * coord[None, :] + math.sin(theta) * coord[:, None] + 0.5
    small = c0 + t[..., None] * (c1 - c0) + rng.normal(0, rng.uniform(8, 30) if clutter else 6, (cells, cells, 3))
    pil = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    if not clutter:
        return np.asarray(pil).astype(np.float32)
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 6))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        col = tuple(int(v) for v in np.clip(np.asarray(pil.getpixel((int(x0), int(y0))))
                                            + rng.normal(0, 35, 3), 0, 255))
        draw.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(1, 3)))
    return np.asarray(pil).astype(np.float32)


def _object_colour(rng, bg_mean: np.ndarray) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(12):
        col = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(col - bg_mean))
        if d > best_d:
            best, best_d = col, d
        if d > 110:
            break
    return best


def _make_image(rng: np.random.Generator, size: int, max_objects: int, noise: np.ndarray, style: str):
    clutter = STYLES[style][0]
    bins = _size_bins(style, size)
    img = _background(rng, size, clutter)
    label = np.zeros((size, size), np.int32)  # visible object id per pixel, 0 = background
    objects = []  # class ids, index = object id - 1
    visible = [0]  # visible area per object id (index 0 unused)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(CLASSES)))
        lo, hi = bins[int(rng.integers(3))]
        d = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        rad = min(_radius(cls, d), size / 2 - 1)
        for _attempt in range(15):
            cx, cy = rng.uniform(rad, size - rad, 2)
            patch, y0, x0 = _shape_mask(cls, d, cx, cy, rng.uniform(0, 2 * math.pi), size)
            area = int(patch.sum())
            if area == 0:
                continue
            win = label[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]]
            covered = np.bincount(win[patch], minlength=len(objects) + 1)
            if covered[1:].sum() > _MAX_COVER * area or np.any(
                    covered[1:] > _MAX_COVER * np.maximum(np.array(visible[1:]), 1)):
                continue
            ph, pw = patch.shape
            region = img[y0:y0 + ph, x0:x0 + pw]
            step = max(1, min(ph, pw) // 16)  # a sparse sample is enough for the mean colour
            sample = region[::step, ::step][patch[::step, ::step]]
            bg_mean = sample.mean(axis=0) if len(sample) else region.reshape(-1, 3).mean(axis=0)
            colour = _object_colour(rng, bg_mean)
            g = rng.normal(0, 0.25, 2) / max(d, 1.0)  # shading gradient, ~25 % over the object
            shade = (1.0 + g[0] * (np.arange(ph, dtype=np.float32) + (y0 - cy)))[:, None] + \
                g[1] * (np.arange(pw, dtype=np.float32) + (x0 - cx))[None, :]
            for ch in range(3):  # per channel: broadcasting over a last axis of 3 is slow
                plane = region[..., ch]
                plane[patch] = np.clip(colour[ch] * shade[patch], 0, 255)
            objects.append(cls)
            for k in range(1, len(visible)):
                visible[k] -= int(covered[k])
            visible.append(area)
            win[patch] = len(objects)
            break
    # pixel noise: a random window of a pre-drawn N(0, 1) field (drawing 3 * size**2
    # normals per image would dominate the run time)
    oy, ox = (int(v) for v in rng.integers(0, size + 1, 2))
    img += noise[oy:oy + size, ox:ox + size] * np.float32(rng.uniform(2, 10))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if clutter and rng.uniform() < 0.3:  # some images slightly soft (3x3 smoothing; Gaussian blur is slow)
        pil = pil.filter(ImageFilter.SMOOTH)
    return pil, label, objects


def _annotations(label: np.ndarray, objects: list, image_id: int, first_ann_id: int, masks: bool):
    from pycocotools import mask as mask_utils

    anns = []
    for k, cls in enumerate(objects, start=1):
        m = label == k
        area = int(m.sum())
        if area == 0:
            continue
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        x0, y0 = int(cols[0]), int(rows[0])
        bbox = [x0, y0, int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0]
        ann = {"id": first_ann_id + len(anns), "image_id": image_id, "category_id": cls + 1,
               "bbox": bbox, "area": area, "iscrowd": 0}
        if masks:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            ann["segmentation"] = {"size": [int(v) for v in rle["size"]],
                                   "counts": rle["counts"].decode("ascii")}
        anns.append(ann)
    return anns


_NOISE: dict = {}


def _noise_bank(seed: int, size: int) -> np.ndarray:
    key = (seed, size)
    if key not in _NOISE:
        _NOISE.clear()
        _NOISE[key] = np.random.default_rng([seed, 99]).standard_normal((2 * size, 2 * size, 3),
                                                                        dtype=np.float32)
    return _NOISE[key]


def _render(job: tuple) -> list:
    """Draw and save one image; return its annotations (ids filled in later)."""
    seed, split, index, image_id, path, size, max_objects, masks, quality, style = job
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    pil, label, objects = _make_image(rng, size, max_objects, _noise_bank(seed, size), style)
    pil.save(path, format="JPEG", quality=quality)
    return _annotations(label, objects, image_id, 0, masks)


def generate_synthetic_coco(out_dir: PathLike, num_train: int = 2000, num_val: int = 200,
                            image_size: int = 320, seed: int = 0, masks: bool = True,
                            max_objects: int = 8, jpeg_quality: int = 90,
                            workers: Optional[int] = None, style: str = "cluttered") -> dict:
    """Write the synthetic shapes dataset as COCO (JPEGs + train.json / val.json).

    Args:
        out_dir: Output folder; images go to ``train/`` and ``val/``, with
            ``train.json`` and ``val.json`` beside them (written atomically,
            last, so a finished JSON means a complete split).
        num_train: Training images.
        num_val: Validation images.
        image_size: Side of the square images in pixels.
        seed: Seed; the same seed gives byte-identical output.
        masks: Write instance masks (COCO compressed RLE ``segmentation``).
        max_objects: Objects per image are drawn uniformly from 1..max_objects.
        jpeg_quality: JPEG quality of the written images.
        workers: Worker processes (multiprocessing "spawn"; a calling script
            then needs the ``if __name__ == "__main__"`` guard). Default 1:
            2 000 images take about 20 s of one core. The output does not
            depend on it.
        style: ``"cluttered"`` or ``"clean"`` (see the module docstring).

    Returns:
        {"train": path of train.json, "val": path of val.json, "seconds": float}.
    """
    if style not in STYLES:
        raise ValueError(f"synthetic style must be one of {sorted(STYLES)}, got {style!r}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    t0 = time.perf_counter()
    jobs = {}
    image_id = 0
    for split, count in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        jobs[split] = []
        for i in range(count):
            image_id += 1
            jobs[split].append((seed, split, i, image_id, os.path.join(out_dir, split, f"{i:06d}.jpg"),
                                image_size, max_objects, masks, jpeg_quality, style))
    workers = 1 if workers is None else int(workers)
    all_jobs = jobs["train"] + jobs["val"]
    if workers > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            anns = pool.map(_render, all_jobs, chunksize=max(1, len(all_jobs) // (8 * workers)))
    else:
        anns = [_render(j) for j in all_jobs]
    result = {}
    k = 0
    for split in ("train", "val"):
        images, annotations = [], []
        for job in jobs[split]:
            images.append({"id": job[3], "file_name": os.path.basename(job[4]),
                           "width": image_size, "height": image_size})
            for a in anns[k]:
                annotations.append({**a, "id": len(annotations) + 1})
            k += 1
        data = {"info": {"description": f"keras_fpn synthetic shapes, {style} style, seed {seed}",
                         "version": "1"},
                "images": images, "annotations": annotations,
                "categories": [{"id": c + 1, "name": n, "supercategory": "shape"}
                               for c, n in enumerate(CLASSES)]}
        path = os.path.join(out_dir, f"{split}.json")
        write_json_atomic(path, data)
        result[split] = path
    result["seconds"] = time.perf_counter() - t0
    logger.info("synthetic dataset: %d + %d images in %.1f s -> %s", num_train, num_val,
                result["seconds"], out_dir)
    return result


