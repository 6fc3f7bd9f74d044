"""Fixtures of the interop tests: the interop venv's Python and a tiny trained detector with its exports."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

#: 96 px square detector, 5 classes (the thread bug of TFLite_Detection_PostProcess drops a class at
#: 2..C-1 threads, so 4 threads can show it), MobileNetV2 0.35 from the ImageNet weights, trained 60 steps
#: on 64 clean-style synthetic images (at most 3 shapes each): about 4 detections an image above 0.3,
#: which is all the agreement tests need (its AP50 is ~0.27).
TINY_DET_CONFIG = """
model:
  image_size: [96, 96]
  num_classes: 5
  backbone: {alpha: 0.35, weights: "WEIGHTS"}
  neck: {min_level: 3, max_level: 5, width: 16}
  head: {width: 16, depth: 1}
  bn_momentum: 0.9
  postprocess: {score_threshold: 0.3, max_detections: 20, max_detections_per_class: 20}
data: {train: data/train.json, val: data/val.json, cache: false}
train: {epochs: 1, steps_per_epoch: 60, batch_size: 8, optimizer: adamw,
        learning_rate: 0.005, warmup_epochs: 0.1, eval_every: 1}
export:
  representative_images: 4
  qat_steps: 2
  qat_batch_size: 2
"""
MODES = ("fp32", "int8", "qat-int8")


@pytest.fixture(scope="session")
def interop_python() -> Path:
    """The interop venv's Python (MediaPipe, optionally tflite-support; no TensorFlow): ``.ci/run`` makes it
    (``tests/interop/make_venv.sh DIR``) and sets ``KERAS_FPN_INTEROP_PYTHON``."""
    value = os.environ.get("KERAS_FPN_INTEROP_PYTHON")
    if not value:
        pytest.skip("KERAS_FPN_INTEROP_PYTHON is not set: make the interop venv with "
                    "`bash tests/interop/make_venv.sh DIR` and set it to DIR/bin/python (.ci/run does)")
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"KERAS_FPN_INTEROP_PYTHON={value}: no such file")
    return path


@pytest.fixture(scope="session")
def tiny_det_exports(train_tiny, mobilenet_v2_weights) -> dict:
    """``{mode: path}`` of fp32, int8 and qat-int8 exports of a tiny detector trained through the CLI (once)."""
    from fpn_export.convert import export_model

    config = TINY_DET_CONFIG.replace("WEIGHTS", str(mobilenet_v2_weights[0.35]))
    run = train_tiny("tiny_det", config, num_train=64, num_val=6, image_size=96, seed=3, masks=False,
                     style="clean", max_objects=3)
    return {mode: export_model(run, mode) for mode in MODES}
