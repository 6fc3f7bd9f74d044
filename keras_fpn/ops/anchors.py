"""Anchor generation for FPN detectors (pure numpy, no TensorFlow).

Conventions (used by every function here):

- ``image_size`` is the model input canvas ``(height, width)`` in pixels; it may
  be non-square.
- Level ``l`` has stride ``2**l``; its feature map is
  ``ceil(H / 2**l) x ceil(W / 2**l)`` cells (the size a chain of stride-2
  "same"-padded convolutions produces; equal to ``H / 2**l`` when H is
  divisible, which the model builder enforces).
- The anchor centre of cell ``(i, j)`` at level ``l`` is
  ``((i + 0.5) * 2**l, (j + 0.5) * 2**l)`` px.
- At each location there are ``scales_per_octave * len(aspect_ratios)``
  anchors, scale-major: for ``k`` in ``0..scales_per_octave-1`` (scale
  ``s = 2**(k / scales_per_octave)``), for each ratio ``r = h / w``:
  ``h = base * s * sqrt(r)``, ``w = base * s / sqrt(r)`` with
  ``base = anchor_scale * 2**l`` px.
- Output order is level (min -> max) -> row y -> column x -> anchor at the
  location; boxes are ``[ymin, xmin, ymax, xmax]`` normalized by the canvas
  (y by H, x by W), float32, not clipped.

The public RetinaNet setting is ``anchor_scale=4``, ``scales_per_octave=3``,
``aspect_ratios=(0.5, 1.0, 2.0)`` on levels P3-P7 (9 anchors per location).

Single-level heads (``on_level``, the FPN paper's Table 1 single-scale
baselines): the anchors that levels ``min_level..max_level`` would carry all
sit on the grid of the one level ``on_level`` (stride ``2**on_level``), so the
head still covers every object size. Each location then has
``(max_level - min_level + 1) * scales_per_octave * len(aspect_ratios)``
anchors, ordered octave ``l`` (min -> max) -> scale ``k`` -> ratio, i.e. by
ascending size ``anchor_scale * 2**(l + k / scales_per_octave)``; the sizes are
exactly those of the per-level anchors. ``on_level == min_level == max_level``
gives the same anchors as ``on_level=None``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "feature_map_size",
    "num_anchors_per_location",
    "anchors_per_level",
    "generate_anchors",
    "model_anchors",
    "model_anchors_per_location",
]


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (height, width), got {image_size!r}")
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return height, width


def _check_levels(min_level: int, max_level: int) -> None:
    if not 0 <= min_level <= max_level:
        raise ValueError(
            f"need 0 <= min_level <= max_level, got min_level={min_level}, max_level={max_level}")


def feature_map_size(image_size: Sequence[int], level: int) -> tuple[int, int]:
    """Return the (rows, cols) of the level-``level`` feature map.

    Args:
        image_size: canvas ``(height, width)`` in pixels.
        level: pyramid level ``l`` (stride ``2**l``).

    Returns:
        ``(ceil(H / 2**l), ceil(W / 2**l))``.
    """
    height, width = _check_image_size(image_size)
    stride = 2 ** int(level)
    return -(-height // stride), -(-width // stride)


def num_anchors_per_location(scales_per_octave: int, aspect_ratios: Sequence[float]) -> int:
    """Return the number of anchors at one feature-map location.

    Args:
        scales_per_octave: number of intermediate scales per octave.
        aspect_ratios: anchor aspect ratios (h / w).

    Returns:
        ``scales_per_octave * len(aspect_ratios)``.
    """
    if int(scales_per_octave) < 1 or len(aspect_ratios) < 1:
        raise ValueError("need scales_per_octave >= 1 and at least one aspect ratio, got "
                         f"scales_per_octave={scales_per_octave}, aspect_ratios={aspect_ratios!r}")
    return int(scales_per_octave) * len(aspect_ratios)


def _grid_levels(min_level: int, max_level: int, on_level) -> list[tuple[int, int, int]]:
    """``[(grid level, first octave, octaves per location)]``: each level with its own octave,
    or the one ``on_level`` with the octaves of all levels ``min..max``."""
    _check_levels(min_level, max_level)
    if on_level is None:
        return [(level, level, 1) for level in range(min_level, max_level + 1)]
    if int(on_level) < 0:
        raise ValueError(f"on_level must be >= 0, got {on_level}")
    return [(int(on_level), min_level, max_level - min_level + 1)]


def anchors_per_level(image_size: Sequence[int], min_level: int, max_level: int,
                      scales_per_octave: int, aspect_ratios: Sequence[float], *,
                      on_level: int | None = None) -> dict[str, int]:
    """Return the number of anchors on each level, keyed ``"P{l}"``.

    Args:
        image_size: canvas ``(height, width)`` in pixels.
        min_level: first pyramid level.
        max_level: last pyramid level (inclusive).
        scales_per_octave: number of intermediate scales per octave.
        aspect_ratios: anchor aspect ratios (h / w).
        on_level: put all anchors on this one level (see the module docstring).

    Returns:
        Ordered dict ``{"P3": rows * cols * k, ...}`` (one entry with
        ``on_level``); the values sum to the ``A`` of :func:`generate_anchors`.
    """
    k = num_anchors_per_location(scales_per_octave, aspect_ratios)
    out = {}
    for level, _, octaves in _grid_levels(min_level, max_level, on_level):
        rows, cols = feature_map_size(image_size, level)
        out[f"P{level}"] = rows * cols * k * octaves
    return out


def generate_anchors(image_size: Sequence[int], min_level: int, max_level: int,
                     anchor_scale: float, scales_per_octave: int,
                     aspect_ratios: Sequence[float], *, on_level: int | None = None) -> np.ndarray:
    """Generate the anchors of all pyramid levels (see the module conventions).

    Args:
        image_size: canvas ``(height, width)`` in pixels (may be non-square).
        min_level: first pyramid level (RetinaNet: 3).
        max_level: last pyramid level, inclusive (RetinaNet: 7).
        anchor_scale: base anchor size in units of the level stride (RetinaNet: 4).
        scales_per_octave: intermediate scales per octave (RetinaNet: 3).
        aspect_ratios: ratios ``h / w`` (RetinaNet: (0.5, 1.0, 2.0)).
        on_level: None (each level carries its own anchors), or the one level
            whose grid carries the anchors of all levels ``min..max``.

    Returns:
        ``[A, 4]`` float32 normalized ``[ymin, xmin, ymax, xmax]``, ordered
        level -> y -> x -> (scale, ratio); with ``on_level``: y -> x ->
        (octave, scale, ratio).
    """
    height, width = _check_image_size(image_size)
    grid = _grid_levels(min_level, max_level, on_level)
    num_anchors_per_location(scales_per_octave, aspect_ratios)  # validates
    if not anchor_scale > 0 or any(not r > 0 for r in aspect_ratios):
        raise ValueError(f"anchor_scale and aspect_ratios must be positive, got "
                         f"anchor_scale={anchor_scale}, aspect_ratios={aspect_ratios!r}")

    # Per-location sizes, scale-major then ratio, in float64 for exactness.
    scales = [2.0 ** (k / scales_per_octave) for k in range(int(scales_per_octave))]
    unit_h = np.array([s * math.sqrt(r) for s in scales for r in aspect_ratios])
    unit_w = np.array([s / math.sqrt(r) for s in scales for r in aspect_ratios])

    per_level = []
    for level, first, octaves in grid:
        stride = 2.0 ** level
        rows, cols = feature_map_size((height, width), level)
        # Base size of each octave carried here: the level's own, or those of min..max on one grid.
        bases = anchor_scale * 2.0 ** (first + np.arange(octaves))  # (O,)
        half_h = 0.5 * (bases[:, None] * unit_h).reshape(-1)  # (O * K,) octave-major
        half_w = 0.5 * (bases[:, None] * unit_w).reshape(-1)
        cy = (np.arange(rows) + 0.5) * stride  # (rows,)
        cx = (np.arange(cols) + 0.5) * stride  # (cols,)
        # (rows, 1, 1) x (1, cols, 1) x (1, 1, O * K) -> (rows, cols, O * K)
        cy = cy[:, None, None]
        cx = cx[None, :, None]
        ymin = (cy - half_h) / height
        xmin = (cx - half_w) / width
        ymax = (cy + half_h) / height
        xmax = (cx + half_w) / width
        ymin, xmin, ymax, xmax = np.broadcast_arrays(ymin, xmin, ymax, xmax)
        # (rows, cols, K, 4) -> (rows * cols * K, 4): row-major keeps y -> x -> anchor
        per_level.append(np.stack([ymin, xmin, ymax, xmax], axis=-1).reshape(-1, 4))
    return np.concatenate(per_level, axis=0).astype(np.float32)


def _on_level(model_cfg) -> int | None:
    """The single grid level of a ``ModelConfig`` with a single-level neck, else None."""
    return None if model_cfg.neck.kind == "fpn" else model_cfg.head_levels[0]


def model_anchors_per_location(model_cfg) -> int:
    """Anchors per feature-map cell of a ``keras_fpn.config.ModelConfig`` (``neck`` aware)."""
    octaves = 1 if _on_level(model_cfg) is None else model_cfg.neck.max_level - model_cfg.neck.min_level + 1
    return octaves * num_anchors_per_location(model_cfg.anchors.scales_per_octave, model_cfg.anchors.aspect_ratios)


def model_level_sizes(model_cfg) -> list[int]:
    """Anchors per level of a ``ModelConfig``, in :func:`model_anchors` order (for the ATSS matcher)."""
    return list(anchors_per_level(tuple(model_cfg.image_size), model_cfg.neck.min_level, model_cfg.neck.max_level,
                                  model_cfg.anchors.scales_per_octave, tuple(model_cfg.anchors.aspect_ratios),
                                  on_level=_on_level(model_cfg)).values())


def model_anchors(model_cfg) -> np.ndarray:
    """``[A, 4]`` anchors of a ``keras_fpn.config.ModelConfig``, in its model's output order.

    The one place that maps the config (``neck``, levels, anchor keys) to
    :func:`generate_anchors`: training targets, evaluation, export and the
    detector's head width all follow it.
    """
    return generate_anchors(tuple(model_cfg.image_size), model_cfg.neck.min_level, model_cfg.neck.max_level,
                            model_cfg.anchors.scale, model_cfg.anchors.scales_per_octave,
                            tuple(model_cfg.anchors.aspect_ratios), on_level=_on_level(model_cfg))
