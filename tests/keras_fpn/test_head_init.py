"""The head starts where it can learn (issue 32): the features its predictors see keep their scale.

Before, every head conv was N(0, 0.01): the RetinaNet class tower shrank its input ~30x over two
layers, and the FPNLite tower (pre-BN variance under BatchNorm's epsilon) output zeros, so the
backbone got no gradient. Measured at initialization on one random batch, training mode.
"""
import numpy as np

import keras_fpn  # noqa: F401
import keras

from keras_fpn.config import config_from_dict
from keras_fpn.models.detector import build_detector


def _stds(preset, head, names):
    keras.utils.set_random_seed(0)
    cfg = config_from_dict({"model": {"preset": preset, "image_size": [128, 128], "num_classes": 5,
                                      "backbone": {"weights": None}, "head": head}})
    model = build_detector(cfg.model)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    x = np.random.default_rng(0).uniform(-1, 1, (4, 128, 128, 3)).astype(np.float32)
    outputs = probe(x, training=True)
    return [float(np.std(np.asarray(t))) for t in (outputs if isinstance(outputs, list) else [outputs])]


def test_retinanet_class_tower_keeps_the_scale_of_its_input():
    fpn, tower, logits = _stds("retinanet_mobilenetv2_fpn", {"width": 64, "depth": 2},
                               ["fpn_output_P3", "head_cls_tower_1_relu", "class_logits"])
    assert tower / fpn > 0.3        # was 0.03: N(0, 0.01) x sqrt(576) = 0.24 a layer, and ReLU
    assert logits < 1.0             # the predictor itself stays small: logits start near the prior


def test_fpnlite_tower_output_is_not_zero():
    tower, = _stds("ssd_mobilenetv2_fpnlite", {}, ["head_tower_3_relu_P3"])
    assert tower > 0.2              # was 0.000: pre-BN variance 1.2e-5 of the input's < epsilon 1e-3
