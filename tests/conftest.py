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
# The shipped real-data configs name their files as ${KERAS_FPN_DATA}/...; product code has no default for it.
os.environ.setdefault("KERAS_FPN_DATA", str(DATA_DIR))


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


#: A tiny segmenter that learns something in 40 steps (64 px, MobileNetV2 0.35 from scratch, P3-P5 + C2 skip;
#: BN momentum 0.9 so that the moving statistics follow the short run); QAT: 2 steps of batch 2.
TINY_SEG_CONFIG = """
model:
  task: segmentation
  image_size: [64, 64]
  backbone: {alpha: 0.35, weights: null}
  neck: {min_level: 3, max_level: 5, width: 16}
  segmentation: {width: 16, c2_skip: true}
  bn_momentum: 0.9
data:
  train: data/train.json
  val: data/val.json
  cache: false
train:
  epochs: 1
  steps_per_epoch: 40
  batch_size: 4
  optimizer: adamw
  learning_rate: 0.003
  warmup_epochs: 0.1
  eval_every: 1
  checkpoint_metric: val_mIoU
  dice_weight: 0.5
export:
  representative_images: 4
  qat_steps: 2
  qat_batch_size: 2
"""


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """``train_tiny(name, config_yaml, **synthetic) -> run dir``: a run trained through the CLI on synthetic
    data (``synthetic``: ``generate_synthetic_coco`` keywords) in a new temporary folder NAME."""
    from keras_fpn.cli import main
    from keras_fpn.data.synthetic import generate_synthetic_coco

    def train(name: str, config: str, **synthetic) -> Path:
        root = tmp_path_factory.mktemp(name)
        generate_synthetic_coco(root / "data", **synthetic)
        (root / "tiny.yaml").write_text(config)
        run = root / "run"
        assert main(["train", str(root / "tiny.yaml"), "--run-dir", str(run), "--quiet"]) == 0
        return run
    return train


@pytest.fixture(scope="session")
def tiny_seg_run(train_tiny) -> Path:
    """A segmentation run directory trained through the CLI on 16 + 4 synthetic 64 px images (shared, once)."""
    return train_tiny("tiny_seg", TINY_SEG_CONFIG, num_train=16, num_val=4, image_size=64, seed=2, masks=True)


@pytest.fixture(scope="session")
def tiny_seg_exports(tiny_seg_run) -> dict:
    """``{mode: path}``: fp32, int8 and qat-int8 exports of ``tiny_seg_run`` (RUN/model_<mode>.tflite, once)."""
    from fpn_export.convert import export_model

    return {mode: export_model(tiny_seg_run, mode) for mode in ("fp32", "int8", "qat-int8")}
