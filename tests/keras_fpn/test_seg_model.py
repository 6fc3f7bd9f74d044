"""The FPN semantic head: shapes on a non-square input, names, weight counts, tf_keras twin, loss, config."""
import dataclasses

import keras
import numpy as np
import pytest

from keras_fpn.config import ConfigError, ModelConfig, config_from_dict
from keras_fpn.models.factory import build_model
from keras_fpn.models.twin import build_twin
from keras_fpn.ops.seg_losses import SegmentationLoss

F, S, C = 16, 16, 3   # fpn width, seg width, foreground classes (K = 4)


def _cfg(min_level=3, **segmentation):
    """The small test segmenter (MobileNetV2 0.35, P{min_level}..P5) with ``segmentation`` head keys."""
    from keras_fpn.config import BackboneConfig, NeckConfig, SegmentationHeadConfig

    return ModelConfig(task="segmentation", image_size=(128, 192), num_classes=C,
                       backbone=BackboneConfig(alpha=0.35, weights=None),
                       neck=NeckConfig(min_level=min_level, max_level=5, width=F),
                       segmentation=SegmentationHeadConfig(width=S, **segmentation))


def _seg_params(model) -> int:
    return sum(int(np.prod(w.shape)) for layer in model.layers if layer.name.startswith("seg_")
               for w in layer.weights)


@pytest.mark.parametrize("kw, levels", [({}, (3, 4, 5)), ({"c2_skip": True}, (3, 4, 5)),
                                        ({"min_level": 2}, (2, 3, 4, 5))])
def test_head_shapes_names_and_weight_count(kw, levels):
    cfg = _cfg(**kw)
    model = build_model(cfg, batch_size=2)
    assert model.name == "fpn_segmenter" and list(model.output) == ["seg_logits"]
    assert tuple(model.output["seg_logits"].shape) == (2, 128, 192, C + 1)
    for level in levels:
        ups = level - 2
        last = model.get_layer(f"seg_P{level}_conv{max(ups, 1) - 1}_relu").output
        # every branch ends at stride 4 (32 x 48 on 128 x 192)
        out = model.get_layer(f"seg_P{level}_up{ups - 1}").output if ups else last
        assert tuple(out.shape[1:]) == (32, 48, S)
    assert tuple(model.get_layer("seg_classifier").output.shape[1:]) == (32, 48, C + 1)
    # head weights by hand: a 3x3 conv F->S on each level's first stage, S->S after; BN 4*S each;
    # classifier S*K + K; the C2 skip a 1x1 conv C2ch->S + BN.
    convs = [(F if i == 0 else S) for level in levels for i in range(max(level - 2, 1))]
    expected = sum(9 * cin * S + 4 * S for cin in convs) + S * (C + 1) + (C + 1)
    if kw.get("c2_skip"):
        c2ch = model.get_layer("seg_C2_skip").input.shape[-1]
        assert c2ch == 48  # MobileNetV2 0.35 block_3_expand_relu
        expected += c2ch * S + 4 * S
    assert _seg_params(model) == expected
    assert not any(l.name.startswith("fpn_") and "P6" in l.name for l in model.layers)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == cfg.bn_momentum for l in bns)   # the backbone's too


def test_tf_keras_twin_matches():
    cfg = _cfg(c2_skip=True)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([g * rng.uniform(0.5, 1.5, g.shape), b + rng.normal(0, 0.1, b.shape),
                               m + rng.normal(0, 0.1, m.shape), v * rng.uniform(0.5, 2.0, v.shape)])
    twin = build_twin(cfg, model)
    assert [l.name for l in twin.layers if l.weights] == [l.name for l in model.layers if l.weights]
    x = rng.uniform(-1, 1, (2, 128, 192, 3)).astype("float32")
    a, b = model(x, training=False)["seg_logits"], twin(x, training=False)["seg_logits"]
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5


def test_nearest_and_bilinear_final_upsample_share_weights():
    cfg = _cfg()
    bil = build_model(cfg)
    near = build_model(dataclasses.replace(cfg, segmentation=dataclasses.replace(cfg.segmentation,
                                                                                 final_upsample="nearest")))
    near.set_weights(bil.get_weights())
    x = np.random.default_rng(1).uniform(-1, 1, (1, 128, 192, 3)).astype("float32")
    stride4 = keras.Model(bil.input, bil.get_layer("seg_classifier").output)(x)
    out = np.asarray(near(x)["seg_logits"])
    np.testing.assert_allclose(out[0, ::4, ::4], np.asarray(stride4)[0], atol=1e-6)  # 4x4 blocks


def test_loss_by_hand_with_ignore_and_dice():
    # one image, 1 x 3 pixels, K = 2; the last pixel is ignored
    logits = np.array([[[[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]]]], np.float32)
    labels = np.array([[[0, 0, 255]]], np.uint8)
    ce = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))]   # -log softmax of the true class
    loss = SegmentationLoss()
    assert float(loss(labels, logits)) == pytest.approx(np.mean(ce), rel=1e-6)
    p0 = [1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(1.0))]          # P(class 0) of the 2 valid pixels
    dice0 = (2 * sum(p0) + 1) / (sum(p0) + 2 + 1)
    dice1 = (0 + 1) / ((2 - sum(p0)) + 0 + 1)
    with_dice = SegmentationLoss(dice_weight=0.5)(labels, logits)
    assert float(with_dice) == pytest.approx(np.mean(ce) + 0.5 * (1 - (dice0 + dice1) / 2), rel=1e-5)
    # batch normalization: mean over the valid pixels of the whole batch
    two = SegmentationLoss()(np.concatenate([labels, np.full_like(labels, 255)]), np.concatenate([logits] * 2))
    assert float(two) == pytest.approx(np.mean(ce), rel=1e-6)


def test_config_checks():
    with pytest.raises(ConfigError, match="model.task must be one of"):
        config_from_dict({"model": {"task": "panoptic"}})
    with pytest.raises(ConfigError, match="checkpoint_metric 'val_AP' does not apply to model.task 'segmentation'"):
        config_from_dict({"model": {"task": "segmentation"}})
    with pytest.raises(ConfigError, match="'val_mIoU' does not apply to model.task 'detection'"):
        config_from_dict({"train": {"checkpoint_metric": "val_mIoU"}})
    with pytest.raises(ConfigError, match="model.segmentation.final_upsample must be one of bilinear, nearest"):
        config_from_dict({"model": {"task": "segmentation", "segmentation": {"final_upsample": "bicubic"}},
                          "train": {"checkpoint_metric": "val_mIoU"}})
    cfg = config_from_dict({"model": {"task": "segmentation"}, "train": {"checkpoint_metric": "val_mIoU"}})
    assert cfg.model.segmentation.ignore_label == 255 and cfg.train.dice_weight == 0.0
    assert config_from_dict({}).model.task == "detection"   # the default is unchanged
