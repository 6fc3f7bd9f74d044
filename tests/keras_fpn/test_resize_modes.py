"""model.resize: letterbox | stretch through the Keras-side geometry (preprocess, augment, pipeline,
evaluation's mask paste-back, predict), checked against hand-computed numbers."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_fpn.config import ConfigError, ModelConfig  # noqa: E402
from keras_fpn.data.augment import AugmentConfig, augment_example, augment_with_mask  # noqa: E402
from keras_fpn.data.preprocess import (canvas_to_original, letterbox, preprocess_for_inference,  # noqa: E402
                                       resized_size)

# A 640 x 480 photo (w x h) on a 320 x 320 canvas: stretch scales x by 0.5 and y by 2/3.
IMG_H, IMG_W, SIDE = 480, 640, 320
# [x1, y1, x2, y2] pixels -> on the stretched canvas [50, 40, 150, 160]; letterboxed (scale 0.5) [50, 30, 150, 120]
BOX_XYXY = np.array([100.0, 60.0, 300.0, 240.0])
STRETCH_XYXY = np.array([50.0, 40.0, 150.0, 160.0])
LETTERBOX_XYXY = np.array([50.0, 30.0, 150.0, 120.0])


def _image():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (IMG_H, IMG_W, 3), dtype=np.uint8)


def _norm_yxyx(xyxy, h, w):
    x1, y1, x2, y2 = xyxy
    return np.array([[y1 / h, x1 / w, y2 / h, x2 / w]], np.float32)


def test_resized_size_per_mode():
    assert tuple(int(v) for v in resized_size(IMG_H, IMG_W, SIDE)) == (240, 320)          # default: letterbox
    assert tuple(int(v) for v in resized_size(IMG_H, IMG_W, SIDE, resize="stretch")) == (320, 320)
    assert tuple(int(v) for v in resized_size(IMG_H, IMG_W, (256, 384), resize="stretch")) == (256, 384)
    assert tuple(int(v) for v in resized_size(IMG_H, IMG_W, SIDE, 0.5, "stretch")) == (160, 160)
    with pytest.raises(ValueError, match="resize must be one of letterbox, stretch, got 'crop'"):
        resized_size(IMG_H, IMG_W, SIDE, resize="crop")


@pytest.mark.parametrize("resize, expected_xyxy, content_hw", [("stretch", STRETCH_XYXY, (320, 320)),
                                                               ("letterbox", LETTERBOX_XYXY, (240, 320))])
def test_box_through_preprocessing_and_back_is_exact(resize, expected_xyxy, content_hw):
    """The training pipeline's mapping (augment_example, no augmentation) puts the box where the hand
    computation says; canvas_to_original maps it back to the original box exactly."""
    image = _image()
    boxes = _norm_yxyx(BOX_XYXY, IMG_H, IMG_W)
    canvas, canvas_boxes, visible = augment_example(image, boxes, tf.constant([0, 0], tf.int64), SIDE, None, resize)
    y1, x1, y2, x2 = canvas_boxes.numpy()[0] * SIDE
    np.testing.assert_allclose([x1, y1, x2, y2], expected_xyxy, atol=1e-4)
    assert float(visible[0]) == pytest.approx(1.0)
    # the canvas is the inference preprocessing's, which is tf.image.resize of the content size
    ref, resized_hw = letterbox(image, SIDE, resize)
    assert tuple(resized_hw.numpy()) == content_hw
    np.testing.assert_array_equal(canvas.numpy(), ref.numpy())
    content = tf.image.resize(image, content_hw, method="bilinear", antialias=False).numpy()
    np.testing.assert_array_equal(ref.numpy()[:content_hw[0], :content_hw[1]], content)
    assert not ref.numpy()[content_hw[0]:].any()  # letterbox padding rows are zeros; stretch has none
    back = canvas_to_original(canvas_boxes.numpy(), resized_hw.numpy(), SIDE)
    np.testing.assert_allclose(back, boxes, atol=1e-6)
    back_tf = canvas_to_original(canvas_boxes, resized_hw, SIDE).numpy()
    np.testing.assert_allclose(back_tf, boxes, atol=1e-6)


def test_stretch_scale_jitter_scales_both_axes():
    """Training's scale jitter multiplies each axis' own stretch scale: jitter 0.5 puts the 640 x 480
    photo on a 160 x 160 patch at the top-left, the box at [25, 20, 75, 80]."""
    cfg = AugmentConfig(hflip=False, scale_jitter=(0.5, 0.5), photometric=False)
    canvas, boxes, _ = augment_example(_image(), _norm_yxyx(BOX_XYXY, IMG_H, IMG_W),
                                       tf.constant([1, 2], tf.int64), SIDE, cfg, "stretch")
    y1, x1, y2, x2 = boxes.numpy()[0] * SIDE
    np.testing.assert_allclose([x1, y1, x2, y2], [25, 20, 75, 80], atol=1e-4)
    assert canvas.numpy()[:160, :160].any() and not canvas.numpy()[160:].any() and not canvas.numpy()[:, 160:].any()


def test_segmentation_labels_resized_and_pasted_back_per_axis():
    """A class map whose left 3/4 is class 1 and top half class 2 is stretched per axis onto the canvas
    (nearest), and canvas logits are pasted back per axis (evaluation's logits_to_class_map)."""
    from keras_fpn.evaluation.segmentation import logits_to_class_map

    mask = np.zeros((IMG_H, IMG_W), np.uint8)
    mask[:, :480] = 1
    mask[:240] = 2
    _, canvas_mask = augment_with_mask(_image(), mask, tf.constant([0, 0], tf.int64), SIDE, None, resize="stretch")
    expected = np.zeros((SIDE, SIDE), np.uint8)
    expected[:, :240] = 1          # 480 px * 0.5
    expected[:160] = 2             # 240 px * 2/3
    np.testing.assert_array_equal(canvas_mask.numpy(), expected)
    _, lb_mask = augment_with_mask(_image(), mask, tf.constant([0, 0], tf.int64), SIDE, None)
    assert (lb_mask.numpy()[240:] == 255).all()    # letterbox: the padding is the ignore label
    logits = np.stack([expected == k for k in range(3)], axis=-1).astype(np.float32)
    np.testing.assert_array_equal(logits_to_class_map(logits, (SIDE, SIDE), (IMG_H, IMG_W)), mask)


def test_inference_pipeline_follows_resize(tmp_path):
    """build_inference_dataset reports the content size of the model's resize (96 px squares)."""
    from keras_fpn.data.formats import read_dataset
    from keras_fpn.data.pipeline import build_inference_dataset
    from keras_fpn.data.synthetic import generate_synthetic_coco

    norm = {"channel_order": "RGB", "mean": [0.0] * 3, "std": [1.0] * 3}
    ds = read_dataset(str(generate_synthetic_coco(tmp_path / "d", num_train=1, num_val=1, image_size=96,
                                                   seed=0, workers=1)["val"]))
    for resize, hw in (("stretch", (64, 128)), ("letterbox", (64, 64))):
        images, info = next(iter(build_inference_dataset(ds, image_size=(64, 128), normalization=norm,
                                                         batch_size=1, resize=resize)))
        assert tuple(info["resized_hw"].numpy()[0]) == hw


def _one_anchor_detector(cfg, k):
    """A Keras 'detector' whose box deltas are 0 and whose only positive logit is anchor ``k``'s: its one
    detection is anchor k itself, on the canvas."""
    import keras

    from keras_fpn.ops.anchors import model_anchors

    n = len(model_anchors(cfg))
    x = keras.Input(tuple(cfg.image_size) + (3,))
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    deltas = keras.layers.Reshape((n, 4))(keras.layers.Dense(n * 4, kernel_initializer="zeros")(pooled))
    dense = keras.layers.Dense(n, kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(np.where(np.arange(n) == k, 5.0, -5.0)))
    logits = keras.layers.Reshape((n, 1))(dense(pooled))
    return keras.Model(x, {"box_deltas": deltas, "class_logits": logits})


def test_predict_maps_boxes_back_per_axis():
    """keras-fpn predict (detect_image) on the 640 x 480 photo: a stretch model's canvas box is scaled
    back by 1/sx = 2 and 1/sy = 1.5; a letterbox model's by 2 on both axes."""
    from keras_fpn.ops.anchors import model_anchors
    from keras_fpn.training.predict import detect_image

    for resize in ("stretch", "letterbox"):
        cfg = ModelConfig(image_size=(SIDE, SIDE), num_classes=1, resize=resize)
        anchors = model_anchors(cfg)
        inside = np.flatnonzero((anchors.min(axis=1) > 0.05) & (anchors.max(axis=1) < 0.7))
        k = int(inside[len(inside) // 2])
        dets = detect_image(_one_anchor_detector(cfg, k), cfg, ["thing"], _image(), threshold=0.5, max_detections=5)
        assert len(dets) == 1
        y1, x1, y2, x2 = anchors[k] * SIDE                     # canvas pixels
        sy, sx = (SIDE / IMG_H, SIDE / IMG_W) if resize == "stretch" else (0.5, 0.5)
        np.testing.assert_allclose(dets[0]["box_xyxy"], [x1 / sx, y1 / sy, x2 / sx, y2 / sy], atol=2e-3)


def test_config_key():
    assert ModelConfig().resize == "letterbox"
    assert ModelConfig(resize="stretch").resize == "stretch"
    with pytest.raises(ConfigError, match="model.resize must be one of letterbox, stretch, got 'pad'"):
        ModelConfig(resize="pad")
    from keras_fpn.config import config_from_dict, config_to_dict

    d = config_to_dict(config_from_dict({"model": {"resize": "stretch"}}))
    assert d["model"]["resize"] == "stretch"
    assert config_from_dict({"model": {}}).model.resize == "letterbox"   # configs written before the key


def test_preprocess_for_inference_stretch_matches_tf_resize():
    image = _image()
    norm = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}
    x, hw = preprocess_for_inference(image, (256, 192), norm, "stretch")
    ref = (tf.image.resize(image, (256, 192), method="bilinear", antialias=False).numpy() - 127.5) / 127.5
    assert tuple(hw.numpy()) == (256, 192)
    np.testing.assert_array_equal(x.numpy(), ref.astype(np.float32))
