"""argparse value types shared by the ``fpn-edge`` and ``keras-fpn`` command lines.

Each one turns a bad value into ``argparse.ArgumentTypeError``, which the
command prints as one line naming the option (``fpn_edge.cli``; ``keras_fpn.cli``).
"""
from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "nonneg_int", "positive_float", "unit_interval", "fraction"]


def _parse(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (threads, runs, counts)."""
    value = _parse(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0 (warmup runs, pixel tolerances)."""
    value = _parse(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a scale)."""
    value = _parse(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A finite number in [0, 1] (a score threshold, an opacity): ``nan`` and ``inf`` are refused."""
    value = _parse(text, float)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a sparsity)."""
    value = unit_interval(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value
