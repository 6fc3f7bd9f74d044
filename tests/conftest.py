"""Shared test fixtures.

Real-data tests find `../shared/data` through ``KERAS_FPN_DATA`` (default: the
``shared/data`` folder beside the project root) and skip with a reason when it
is absent (a user's fresh clone). ``.ci/run`` sets it and requires it.
"""
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("KERAS_FPN_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set KERAS_FPN_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real datasets and weights."""
    return _require(DATA_DIR)


@pytest.fixture(scope="session")
def mobilenet_v2_weights(shared_data) -> dict:
    """ImageNet MobileNetV2 (include_top=False) weight files keyed by alpha."""
    w = shared_data / "weights"
    return {1.0: _require(w / "mobilenet_v2_1.0_no_top.weights.h5"),
            0.35: _require(w / "mobilenet_v2_0.35_no_top.weights.h5")}


@pytest.fixture(scope="session")
def raccoon_dir(shared_data) -> Path:
    return _require(shared_data / "raccoon")
