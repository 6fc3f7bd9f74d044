"""Every preset learns several classes: `keras-fpn train` must overfit 8 synthetic images (5 classes)
to AP50 >= 0.9 in a fixed number of steps with the shipped recipe (SGD, warmup, cosine).

The guard against a head that sits on the focal-loss plateau (issue 32: the 80-class set and the
FPNLite preset did not learn in hundreds of steps). Presets run at 128 px with the preset's own
widths; the MobileNetV2 ones from the ImageNet weights in ``${KERAS_FPN_DATA}``. Steps per preset
(measured: RetinaNet AP50 1.000 at 120 steps, ~2 min CPU; FPNLite 0.876 at 120 and 1.000 at 200,
~2.7 min CPU, so marked slow; its init is guarded fast by ``test_head_init.py``). ResNet50 has no
local ImageNet weights: from random init it reached AP50 0.215 in 200 steps (class loss 0.52,
~9 min CPU), so its test is slow and an expected failure until pretrained weights can be loaded.
"""
import pytest

import keras_fpn  # noqa: F401

from keras_fpn.config import config_from_dict
from keras_fpn.data.synthetic import generate_synthetic_coco
from keras_fpn.training.train import train

STEPS = {"retinanet_mobilenetv2_fpn": 120, "ssd_mobilenetv2_fpnlite": 200, "retinanet_resnet50_fpn": 200}


@pytest.fixture(scope="module")
def eight_images(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic8")
    generate_synthetic_coco(out, num_train=8, num_val=1, image_size=128, seed=3, masks=False, max_objects=3,
                            style="clean")
    return out / "train.json"


def _overfit(preset, train_json, run_dir, weights):
    cfg = config_from_dict({
        "model": {"preset": preset, "image_size": [128, 128], "backbone": {"weights": weights}},
        "data": {"train": str(train_json), "val": str(train_json), "hflip": False, "scale_jitter": [1.0, 1.0],
                 "photometric": False},
        "train": {"epochs": STEPS[preset] // 10, "steps_per_epoch": 10, "batch_size": 8, "eval_every": 0,
                  "precise_bn_batches": 1}})
    result = train(cfg, run_dir, verbose=0)
    print(f"{preset}: AP50 {result['eval']['AP50']:.3f} AP {result['eval']['AP']:.3f} in {result['seconds']:.0f} s")
    return result


@pytest.mark.parametrize("preset", ["retinanet_mobilenetv2_fpn",
                                    pytest.param("ssd_mobilenetv2_fpnlite", marks=pytest.mark.slow)])
def test_mobilenet_presets_overfit_eight_multiclass_images(preset, eight_images, mobilenet_v2_weights, tmp_path):
    result = _overfit(preset, eight_images, tmp_path / "run", str(mobilenet_v2_weights[1.0]))
    assert result["eval"]["AP50"] >= 0.9, result["eval"]


@pytest.mark.slow
@pytest.mark.xfail(reason="no local ImageNet ResNet50 weights: random init reached AP50 0.215 in 200 steps",
                   strict=False)
def test_resnet50_preset_overfits_eight_multiclass_images(eight_images, tmp_path):
    result = _overfit("retinanet_resnet50_fpn", eight_images, tmp_path / "run", None)
    assert result["eval"]["AP50"] >= 0.9, result["eval"]
