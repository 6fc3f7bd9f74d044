"""Dataset statistics: counts, box sizes in COCO terms, pyramid-level assignment.

Two size scales are reported:

- ``original``: the COCO ``area`` of each object in original-image pixels (the
  mask area when the annotation has one, else the box area) - what
  pycocotools uses for AP_small/medium/large.
- ``model input``: the box area in canvas pixels after the letterbox resize
  to ``image_size`` (box area * scale**2) - what the detector actually sees.

COCO bins: small < 32**2, medium < 96**2, large >= 96**2 px.

Pyramid level per box (at the model input scale, s = sqrt(box w * h) px):

- ``fpn_rule``: the FPN paper's RoI rule ``k = floor(4 + log2(s / 224))``,
  clamped to [min_level, max_level];
- ``anchor``: the level whose base anchor side ``anchor_scale * 2**l`` is
  nearest to s in log scale, ``l = round(log2(s / anchor_scale))``, clamped -
  roughly where IoU matching against RetinaNet anchors puts the box.
Crowd regions are left out of the box statistics.
"""
from __future__ import annotations

import math

import numpy as np

from keras_fpn.data.dataset import DetectionDataset

SMALL, MEDIUM = 32 ** 2, 96 ** 2


def _bins(areas: np.ndarray) -> dict:
    return {"small": int((areas < SMALL).sum()),
            "medium": int(((areas >= SMALL) & (areas < MEDIUM)).sum()),
            "large": int((areas >= MEDIUM).sum())}


def compute_stats(dataset: DetectionDataset, image_size=320, min_level: int = 3,
                  max_level: int = 7, anchor_scale: float = 4.0) -> dict:
    """Compute the dataset statistics described in the module docstring.

    Args:
        dataset: The DetectionDataset.
        image_size: Model input (H, W) or an int.
        min_level: Lowest pyramid level.
        max_level: Highest pyramid level.
        anchor_scale: Base anchor side in strides (RetinaNet 4).

    Returns:
        JSON-serializable dict of counts and histograms.
    """
    H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    lm = dataset.label_map
    per_class = np.zeros(lm.num_classes, np.int64)
    per_image, orig_areas, canvas_sides = [], [], []
    widths = [r.width for r in dataset.records]
    heights = [r.height for r in dataset.records]
    for r in dataset.records:
        m = ~r.iscrowd
        per_image.append(int(m.sum()))
        np.add.at(per_class, r.classes[m], 1)
        orig_areas.append(r.areas[m])
        scale = min(H / r.height, W / r.width)
        b = r.boxes[m].astype(np.float64)
        hh = (b[:, 2] - b[:, 0]) * r.height * scale
        ww = (b[:, 3] - b[:, 1]) * r.width * scale
        canvas_sides.append(np.sqrt(np.maximum(hh * ww, 0.0)))
    orig = np.concatenate(orig_areas) if orig_areas else np.zeros(0)
    sides = np.concatenate(canvas_sides) if canvas_sides else np.zeros(0)
    per_image = np.array(per_image, np.int64)
    levels = list(range(min_level, max_level + 1))
    with np.errstate(divide="ignore"):
        fpn = np.clip(np.floor(4 + np.log2(np.maximum(sides, 1e-9) / 224.0)), min_level, max_level)
        anc = np.clip(np.round(np.log2(np.maximum(sides, 1e-9) / anchor_scale)), min_level, max_level)
    smallest_anchor = anchor_scale * 2 ** min_level
    hist_max = int(per_image.max()) if len(per_image) else 0
    return {
        "source": dataset.source,
        "images": dataset.num_images,
        "background_images": int((per_image == 0).sum()),
        "boxes": int(per_image.sum()),
        "crowd": dataset.num_crowd,
        "difficult": int(sum(int(r.difficult.sum()) for r in dataset.records)),
        "classes": lm.num_classes,
        "classes_present": int((per_class > 0).sum()),
        "per_class": {n: int(c) for n, c in zip(lm.names, per_class)},
        "boxes_per_image": {"min": int(per_image.min()) if len(per_image) else 0,
                            "mean": float(per_image.mean()) if len(per_image) else 0.0,
                            "max": hist_max,
                            "histogram": np.bincount(per_image, minlength=hist_max + 1).tolist()},
        "image_width": [int(min(widths, default=0)), int(max(widths, default=0))],
        "image_height": [int(min(heights, default=0)), int(max(heights, default=0))],
        "image_size": [H, W],
        "sizes_original": _bins(orig),
        "sizes_model_input": _bins(sides ** 2),
        "box_side_model_input_px": {
            "min": float(sides.min()) if len(sides) else 0.0,
            "median": float(np.median(sides)) if len(sides) else 0.0,
            "max": float(sides.max()) if len(sides) else 0.0},
        "smaller_than_smallest_anchor": int((sides < smallest_anchor / math.sqrt(2)).sum()),
        "levels_fpn_rule": {f"P{l}": int((fpn == l).sum()) for l in levels},
        "levels_anchor": {f"P{l}": int((anc == l).sum()) for l in levels},
    }


def format_stats(stats: dict) -> str:
    """Render compute_stats output as a short text report.

    Args:
        stats: The dict from compute_stats.

    Returns:
        Multi-line text.
    """
    s = stats
    bpi = s["boxes_per_image"]
    H, W = s["image_size"]
    lines = [
        f"dataset: {s['source']}",
        f"images: {s['images']} ({s['background_images']} without boxes), "
        f"sizes {s['image_width'][0]}-{s['image_width'][1]} x {s['image_height'][0]}-{s['image_height'][1]} px",
        f"boxes: {s['boxes']} (+ {s['crowd']} crowd, {s['difficult']} difficult); "
        f"per image min {bpi['min']} / mean {bpi['mean']:.2f} / max {bpi['max']}",
        f"classes: {s['classes']} ({s['classes_present']} present)",
    ]
    top = sorted(s["per_class"].items(), key=lambda kv: -kv[1])
    lines.append("  " + ", ".join(f"{n} {c}" for n, c in top[:20])
                 + (f", ... ({len(top) - 20} more)" if len(top) > 20 else ""))
    lines.append("boxes per image histogram: " + " ".join(
        f"{k}:{v}" for k, v in enumerate(bpi["histogram"]) if v))
    o, m = s["sizes_original"], s["sizes_model_input"]
    lines.append(f"COCO sizes, original pixels (annotation area): small {o['small']}, "
                 f"medium {o['medium']}, large {o['large']}")
    lines.append(f"COCO sizes, model input {H}x{W} (letterboxed box area): small {m['small']}, "
                 f"medium {m['medium']}, large {m['large']}")
    side = s["box_side_model_input_px"]
    lines.append(f"box side sqrt(wh) at model input: min {side['min']:.1f}, median "
                 f"{side['median']:.1f}, max {side['max']:.1f} px; "
                 f"{s['smaller_than_smallest_anchor']} smaller than the smallest anchor / sqrt(2)")
    lines.append("level, FPN rule floor(4 + log2(sqrt(wh)/224)): " + ", ".join(
        f"{k} {v}" for k, v in s["levels_fpn_rule"].items()))
    lines.append("level, nearest anchor size round(log2(sqrt(wh)/anchor_scale)): " + ", ".join(
        f"{k} {v}" for k, v in s["levels_anchor"].items()))
    return "\n".join(lines)
