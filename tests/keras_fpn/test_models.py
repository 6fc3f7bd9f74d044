"""Backbones, Feature Pyramid and detector assembly: shapes, counts, errors, twin parity."""
import numpy as np
import pytest

import keras_fpn  # noqa: F401  (sets KERAS_BACKEND)
import keras
from PIL import Image

from keras_fpn.config import BackboneConfig, ModelConfig
from keras_fpn.models.backbones import WeightsError, build_backbone
from keras_fpn.models.detector import build_detector
from keras_fpn.models.fpn import build_fpn
from keras_fpn.models.twin import build_twin

H, W = 320, 448  # non-square; divisible by 32 and 64, not by 128


def _pyramid_model(backbone, *, lite, alpha=0.35, min_level=3, max_level=6, width=32, weights=None,
                   finer_input=False):
    inputs = keras.Input((H, W, 3))
    feats = build_backbone(keras, backbone, inputs, alpha=alpha, weights=weights)
    pyr = build_fpn(keras, feats, min_level=min_level, max_level=max_level, width=width,
                    lite=lite, batch_norm=lite, extra_levels_from="P5" if lite else "C5",
                    finer_input=finer_input)
    return keras.Model(inputs, pyr), feats


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenetv3small", "mobilenetv3large_minimalistic", "resnet50"])
def test_backbone_taps_have_strides_4_to_32(backbone):
    inputs = keras.Input((H, W, 3))
    feats = build_backbone(keras, backbone, inputs, alpha=1.0, weights=None)
    assert sorted(feats) == ["C2", "C3", "C4", "C5"]
    for level, t in feats.items():
        stride = 2 ** int(level[1])
        assert tuple(t.shape[1:3]) == (H // stride, W // stride), (backbone, level)


def test_tap_layer_names_as_documented():
    inputs = keras.Input((H, W, 3))
    feats = build_backbone(keras, "mobilenetv2", inputs, alpha=1.0, weights=None)
    names = {k: v._keras_history.operation.name for k, v in feats.items()}
    assert names == {"C2": "block_3_expand_relu", "C3": "block_6_expand_relu",
                     "C4": "block_13_expand_relu", "C5": "out_relu"}
    inputs = keras.Input((H, W, 3))
    feats = build_backbone(keras, "resnet50", inputs, alpha=1.0, weights=None)
    names = {k: v._keras_history.operation.name for k, v in feats.items()}
    assert names == {"C2": "conv2_block3_out", "C3": "conv3_block4_out",
                     "C4": "conv4_block6_out", "C5": "conv5_block3_out"}


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenetv3large", "resnet50"])
@pytest.mark.parametrize("lite", [False, True])
def test_pyramid_shapes_non_square(backbone, lite):
    model, _ = _pyramid_model(backbone, lite=lite)
    out = model.output
    assert sorted(out) == ["P3", "P4", "P5", "P6"]
    for level, t in out.items():
        stride = 2 ** int(level[1])
        assert tuple(t.shape[1:]) == (H // stride, W // stride, 32)
    y = model.predict(np.zeros((1, H, W, 3), "float32"), verbose=0)
    assert y["P6"].shape == (1, H // 64, W // 64, 32)


def _neck_params(model):
    return sum(int(np.prod(w.shape)) for l in model.layers if l.name.startswith("fpn_")
               for w in l.trainable_weights)


def test_fpn_neck_parameter_count_by_hand():
    # MobileNetV2 alpha 0.35: C3 96 ch, C4 192 ch, C5 1280 ch; width 32; P3..P7, P6 from C5.
    model, feats = _pyramid_model("mobilenetv2", lite=False, max_level=7, width=32)
    assert [feats[k].shape[-1] for k in ("C3", "C4", "C5")] == [96, 192, 1280]
    laterals = (96 * 32 + 32) + (192 * 32 + 32) + (1280 * 32 + 32)
    outputs = 3 * (3 * 3 * 32 * 32 + 32)
    p6 = 3 * 3 * 1280 * 32 + 32
    p7 = 3 * 3 * 32 * 32 + 32
    assert _neck_params(model) == laterals + outputs + p6 + p7 == 455_936


def test_finer_input_adds_one_strided_conv_of_c2_into_p3():
    # MobileNetV2 alpha 0.35: C2 (block_3_expand_relu) has 6 * 8 = 48 channels at stride 4.
    base, feats = _pyramid_model("mobilenetv2", lite=False, max_level=7, width=32)
    model, _ = _pyramid_model("mobilenetv2", lite=False, max_level=7, width=32, finer_input=True)
    pyr = model.output
    assert feats["C2"].shape[-1] == 48
    assert _neck_params(model) - _neck_params(base) == 3 * 3 * 48 * 32 + 32
    finer = model.get_layer("fpn_finer_P3")
    assert tuple(finer.output.shape[1:]) == (H // 8, W // 8, 32)
    assert finer.output in model.get_layer("fpn_merge_P3").input
    assert all(tuple(t.shape[1:3]) == tuple(base.output[k].shape[1:3]) for k, t in pyr.items())
    with pytest.raises(ValueError, match=r"finer_input needs the backbone's C1 \(stride 2\) for P2"):
        _pyramid_model("mobilenetv2", lite=False, min_level=2, max_level=5, finer_input=True)


def test_fpnlite_neck_parameter_count_by_hand():
    # Lite: depthwise 3x3 (no bias) + pointwise 1x1 (no bias) + BN (gamma, beta trainable).
    model, _ = _pyramid_model("mobilenetv2", lite=True, max_level=7, width=32)
    laterals = (96 * 32 + 32) + (192 * 32 + 32) + (1280 * 32 + 32)
    sep = 3 * 3 * 32 + 32 * 32 + 2 * 32
    assert _neck_params(model) == laterals + 5 * sep == 57_152


def test_input_not_divisible_is_a_clear_error():
    import dataclasses
    cfg = ModelConfig(num_classes=2, backbone=BackboneConfig(weights=None))
    bad = dataclasses.replace(cfg, image_size=(320, 320))
    object.__setattr__(bad, "image_size", (300, 320))  # bypass the config check: the builder checks too
    with pytest.raises(ValueError, match=r"300x320 must be divisible by 32 .* use e.g. 320x320"):
        build_detector(bad)
    from keras_fpn.config import ConfigError
    with pytest.raises(ConfigError, match=r"model.image_size 300x448 must be divisible by 32"):
        ModelConfig(image_size=(300, 448))


def test_p6_p7_sizes_are_ceil_of_stride_on_320():
    # 320 px with P3..P7 (TF OD API's 320x320 FPN models): P6 is 5x5, P7 is ceil(320/128) = 3.
    model, _ = _pyramid_model("mobilenetv2", lite=False, max_level=7)
    sizes = {k: tuple(v.shape[1:3]) for k, v in model.output.items()}
    assert sizes == {"P3": (40, 56), "P4": (20, 28), "P5": (10, 14), "P6": (5, 7), "P7": (3, 4)}


def test_unknown_backbone_error():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_backbone(keras, "vgg16", keras.Input((64, 64, 3)), alpha=1.0, weights=None)


def test_missing_weights_file_is_one_line_error(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(WeightsError, match=f"{missing}: backbone weights file not found"):
        build_backbone(keras, "mobilenetv2", keras.Input((64, 64, 3)), alpha=1.0, weights=str(missing))


def test_mismatched_weights_file_is_one_line_error(mobilenet_v2_weights):
    path = mobilenet_v2_weights[1.0]
    with pytest.raises(WeightsError) as err:
        build_backbone(keras, "mobilenetv2", keras.Input((64, 64, 3)), alpha=0.35, weights=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_real_imagenet_weights_load(mobilenet_v2_weights, raccoon_dir):
    img = Image.open(raccoon_dir / "images" / "raccoon-1.jpg").convert("RGB").resize((224, 224))
    x = np.asarray(img, "float32")[None] / 127.5 - 1.0

    def c5(weights):
        inputs = keras.Input((224, 224, 3))
        feats = build_backbone(keras, "mobilenetv2", inputs, alpha=0.35, weights=weights)
        return keras.Model(inputs, feats["C5"]).predict(x, verbose=0)

    pretrained, random = c5(str(mobilenet_v2_weights[0.35])), c5(None)
    # Pretrained out_relu on a photo is sparse-ish with mean ~0.3 (weights README); random init differs.
    assert np.abs(pretrained - random).mean() > 0.1
    assert 0.05 < pretrained.mean() < 1.5 and (pretrained == 0).mean() > 0.5


def _tiny_cfg(preset, **kw):
    """``preset`` at 128x256 with widths 32, head depth 2, 3 classes; ``kw`` merged into the model section."""
    from keras_fpn.config import config_from_dict, deep_merge

    small = {"preset": preset, "image_size": [128, 256], "num_classes": 3,
             "backbone": {"alpha": 0.35, "weights": None}, "neck": {"width": 32}, "head": {"width": 32, "depth": 2}}
    return config_from_dict({"model": deep_merge(small, kw)}).model


@pytest.mark.parametrize("preset, overrides", [
    ("retinanet_mobilenetv2_fpn", {"neck": {"kind": "fpn"}}), ("ssd_mobilenetv2_fpnlite", {"neck": {"kind": "fpn"}}),
    ("retinanet_mobilenetv2_fpn", {"neck": {"kind": "c5_only"}}),
    ("ssd_mobilenetv2_fpnlite", {"neck": {"kind": "finest_no_topdown"}}),
    ("retinanet_mobilenetv2_fpn", {"neck": {"finer_input": True}}),
    # tf_keras names MobileNetV3 layers differently (Conv/BatchNorm vs conv_bn)
    ("retinanet_mobilenetv2_fpn", {"backbone": {"name": "mobilenetv3small_minimalistic", "alpha": 1.0}}),
    ("retinanet_mobilenetv2_fpn", {"backbone": {"name": "mobilenetv3large", "alpha": 1.0}})])
def test_tf_keras_twin_matches(preset, overrides):
    cfg = _tiny_cfg(preset, **overrides)
    model = build_detector(cfg)
    # Perturb BN statistics so the parity check also covers non-trivial BN folding.
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([g * rng.uniform(0.5, 1.5, g.shape), b + rng.normal(0, 0.1, b.shape),
                               m + rng.normal(0, 0.1, m.shape), v * rng.uniform(0.5, 2.0, v.shape)])
    twin = build_twin(cfg, model)
    x = rng.uniform(-1, 1, (2, 128, 256, 3)).astype("float32")
    a, b = model(x, training=False), twin(x, training=False)
    for key in ("box_deltas", "class_logits"):
        assert np.abs(np.asarray(a[key]) - np.asarray(b[key])).max() <= 1e-5


def test_detector_outputs_and_prior_bias():
    cfg = _tiny_cfg("retinanet_mobilenetv2_fpn")
    model = build_detector(cfg, batch_size=1)
    # anchors: 9 per cell on P3..P7 of 128x256: (16*32 + 8*16 + 4*8 + 2*4 + 1*2) * 9
    a = (16 * 32 + 8 * 16 + 4 * 8 + 2 * 4 + 1 * 2) * 9
    assert model.output["box_deltas"].shape == (1, a, 4)
    assert model.output["class_logits"].shape == (1, a, 3)
    bias = model.get_layer("head_cls_logits").get_weights()[1]
    np.testing.assert_allclose(bias, -np.log(0.99 / 0.01), rtol=1e-6)
    assert not model.get_layer("head_box_deltas").get_weights()[1].any()


# ---------------------------------------------------------------- neck ablation (model.neck)

NECK_SIZE = (256, 320)  # non-square


@pytest.fixture(scope="module")
def neck_models():
    """The ablation configs' model (demo config: MobileNetV2 0.35, width 32, BN, P3-P6, 2 anchors
    per level cell, head depth 1) for each neck, 5 classes, on 256x320."""
    from keras_fpn.config import NECKS, config_from_dict

    out = {}
    for neck in NECKS:
        cfg = config_from_dict({"model": {
            "preset": "retinanet_mobilenetv2_fpn", "image_size": list(NECK_SIZE), "num_classes": 5,
            "backbone": {"alpha": 0.35, "weights": None},
            "neck": {"kind": neck, "max_level": 6, "width": 32, "batch_norm": True},
            "head": {"width": 32, "depth": 1}, "anchors": {"scales_per_octave": 2, "aspect_ratios": [1.0]}}}).model
        out[neck] = (cfg, build_detector(cfg))
    return out


@pytest.mark.parametrize("neck, level, cells, per_cell", [
    ("fpn", None, 32 * 40 + 16 * 20 + 8 * 10 + 4 * 5, 2),  # P3..P6, 2 anchors per cell
    ("c5_only", 5, 8 * 10, 8),                                # P5 only, 4 levels x 2 anchors per cell
    ("finest_no_topdown", 3, 32 * 40, 8),                     # P3 only
])
def test_neck_output_shapes_and_anchor_counts(neck_models, neck, level, cells, per_cell):
    from keras_fpn.ops.anchors import model_anchors

    cfg, model = neck_models[neck]
    a = cells * per_cell
    assert a == {"fpn": 3400, "c5_only": 640, "finest_no_topdown": 10240}[neck]
    assert tuple(model.output["box_deltas"].shape) == (None, a, 4)
    assert tuple(model.output["class_logits"].shape) == (None, a, 5)
    assert model_anchors(cfg).shape == (a, 4)
    names = {layer.name for layer in model.layers}
    if level is not None:
        stride = 2 ** level
        assert tuple(model.get_layer(f"fpn_output_P{level}").output.shape) == (
            None, NECK_SIZE[0] // stride, NECK_SIZE[1] // stride, 32)
        # One lateral + one output conv: no top-down pathway, no other level.
        assert sorted(n for n in names if n.startswith("fpn_")) == [
            f"fpn_lateral_P{level}", f"fpn_output_P{level}", f"fpn_output_P{level}_bn"]
        assert model.get_layer("head_cls_logits").output.shape[-1] == per_cell * 5
    y = model.predict(np.zeros((1, *NECK_SIZE, 3), "float32"), verbose=0)
    assert y["box_deltas"].shape == (1, a, 4) and y["class_logits"].shape == (1, a, 5)


def test_neck_parameter_count_difference_by_hand(neck_models):
    count = {neck: model.count_params() for neck, (_, model) in neck_models.items()}
    # MobileNetV2 0.35: C3 96 ch, C5 1280 ch; width 32; 3x3 outputs with BN (4 x 32 weights, no bias).
    out3x3 = 3 * 3 * 32 * 32 + 4 * 32
    fpn_neck = (96 * 32 + 32) + (192 * 32 + 32) + (1280 * 32 + 32) + 3 * out3x3 + (3 * 3 * 1280 * 32 + 4 * 32)
    assert fpn_neck == 447_072

    def predictors(a):  # head_cls_logits (5 classes) + head_box_deltas, 3x3 on 32 channels
        return (3 * 3 * 32 * a * 5 + a * 5) + (3 * 3 * 32 * a * 4 + a * 4)
    head_growth = predictors(8) - predictors(2)
    assert head_growth == 15_606
    c5_neck = (1280 * 32 + 32) + out3x3
    assert count["c5_only"] - count["fpn"] == c5_neck - fpn_neck + head_growth == -381_130
    # finest_no_topdown also drops the backbone after C3 (block_6_pad .. out_relu).
    _, fpn = neck_models["fpn"]
    _, finest = neck_models["finest_no_topdown"]
    kept = {layer.name for layer in finest.layers}
    dropped = [layer for layer in fpn.layers if layer.name not in kept and not layer.name.startswith(("fpn_", "head_"))]
    assert dropped[0].name == "block_6_pad" and dropped[-1].name == "out_relu"
    backbone_after_c3 = sum(layer.count_params() for layer in dropped)
    assert backbone_after_c3 == 392_624
    c3_neck = (96 * 32 + 32) + out3x3
    assert count["finest_no_topdown"] - count["fpn"] == (
        c3_neck - fpn_neck + head_growth - backbone_after_c3) == -811_642
    assert count == {"fpn": 880_978, "c5_only": 499_848, "finest_no_topdown": 69_336}


def test_config_head_names_are_the_builders():
    """``model.head.kind`` is checked at config load against ``keras_fpn.config.HEADS``; the builders live in
    ``keras_fpn.models.heads.HEADS``: the two must name the same heads."""
    from keras_fpn.config import HEADS as CONFIG_HEADS
    from keras_fpn.models.heads import HEADS as BUILDERS

    assert set(CONFIG_HEADS) == set(BUILDERS)
