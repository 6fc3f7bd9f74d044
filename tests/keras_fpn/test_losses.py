"""Losses: hand-computed focal and Huber values, ignore handling, batch normalization, fit."""
import math

import numpy as np

import keras_fpn  # noqa: F401
import keras

from keras_fpn.ops.losses import BoxLoss, FocalLoss

LN2 = math.log(2.0)


def _focal_reference(y_true, logits, alpha=0.25, gamma=2.0):
    """Plain numpy focal loss (float64): total over the batch / max(1, positives)."""
    y_true = np.asarray(y_true)
    logits = np.asarray(logits, np.float64)
    onehot = (np.arange(logits.shape[-1]) == y_true[..., None]).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    p_t = np.where(onehot == 1, p, 1 - p)
    a_t = np.where(onehot == 1, alpha, 1 - alpha)
    loss = -a_t * (1 - p_t) ** gamma * np.log(p_t)
    loss = loss.sum(-1) * (y_true != -2)
    return loss.sum() / max(1, (y_true >= 0).sum())


def test_focal_loss_by_hand():
    # Anchor 0: class 1, logits (0, 0): p = 0.5 everywhere.
    #   class 0 (negative): 0.75 * 0.5**2 * ln2 = 0.1875 ln2; class 1: 0.25 * 0.25 * ln2 = 0.0625 ln2.
    # Anchor 1: background, logits (0, ln 3): class 0 0.1875 ln2; class 1 p = 0.75:
    #   0.75 * 0.75**2 * ln 4 = 0.84375 ln2.
    # Anchor 2: ignored, contributes nothing whatever its logits.
    y_true = np.array([[1, -1, -2]], np.float32)
    logits = np.array([[[0, 0], [0, math.log(3)], [5, -7]]], np.float32)
    expected = (0.1875 + 0.0625 + 0.1875 + 0.84375) * LN2  # one positive
    got = float(FocalLoss()(y_true, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got, _focal_reference(y_true, logits), rtol=1e-6)


def test_focal_loss_normalized_by_batch_positive_count():
    rng = np.random.default_rng(0)
    y_true = np.array([[0, 2, -1, -1, -2], [1, -1, -1, -2, -2], [-1, -1, -1, -1, -1]], np.float32)
    logits = rng.normal(0, 2, (3, 5, 3)).astype(np.float32)
    got = float(FocalLoss()(y_true, logits))
    np.testing.assert_allclose(got, _focal_reference(y_true, logits), rtol=1e-5)
    # 3 positives in the batch: the sum over all samples divided by 3 (not a mean of per-sample ratios).
    total = sum(_focal_reference(y_true[i:i + 1], logits[i:i + 1]) * max(1, (y_true[i] >= 0).sum())
                for i in range(3))
    np.testing.assert_allclose(got, total / 3, rtol=1e-5)
    # No positives: divided by 1.
    bg = np.full((2, 5), -1, np.float32)
    np.testing.assert_allclose(float(FocalLoss()(bg, logits[:2])), _focal_reference(bg, logits[:2]), rtol=1e-5)
    # Other alpha / gamma.
    np.testing.assert_allclose(float(FocalLoss(alpha=0.5, gamma=0.0)(y_true, logits)),
                               _focal_reference(y_true, logits, 0.5, 0.0), rtol=1e-5)


def test_box_loss_by_hand():
    # Positive anchor, errors (0.05, -0.2, 0.1, 0) with delta 0.1:
    #   0.5 * 0.05**2 = 0.00125; 0.1 * (0.2 - 0.05) = 0.015; 0.5 * 0.1**2 = 0.005; 0.
    # Anchor 1 has weight 0: ignored whatever its prediction.
    y_true = np.array([[[0, 0, 0, 0, 1], [1, 1, 1, 1, 0]]], np.float32)
    y_pred = np.array([[[0.05, -0.2, 0.1, 0.0], [9, 9, 9, 9]]], np.float32)
    got = float(BoxLoss()(y_true, y_pred))
    np.testing.assert_allclose(got, (0.00125 + 0.015 + 0.005) / 4, rtol=1e-5)
    # delta 1: all quadratic: 0.5 * (0.0025 + 0.04 + 0.01) / 4.
    np.testing.assert_allclose(float(BoxLoss(delta=1.0)(y_true, y_pred)), 0.5 * 0.0525 / 4, rtol=1e-5)


def test_box_loss_normalized_by_batch_positive_count():
    y_true = np.zeros((2, 3, 5), np.float32)
    y_true[0, 0, 4] = 1  # sample 0: one positive, error 1 on ty -> 0.1 * (1 - 0.05) = 0.095
    y_true[1, :2, 4] = 1  # sample 1: two positives, error 0.1 on tx each -> 0.005 each
    y_pred = np.zeros((2, 3, 4), np.float32)
    y_pred[0, 0, 0] = 1.0
    y_pred[1, :2, 1] = 0.1
    y_pred[:, 2] = 5.0  # negatives: ignored
    np.testing.assert_allclose(float(BoxLoss()(y_true, y_pred)), (0.095 + 0.01) / (4 * 3), rtol=1e-5)
    np.testing.assert_allclose(float(BoxLoss()(np.zeros_like(y_true), y_pred)), 0.0)


def test_serialization_round_trip():
    for loss in (FocalLoss(alpha=0.3, gamma=1.5), BoxLoss(delta=0.2)):
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss)
        assert clone.get_config() == loss.get_config()
    assert FocalLoss(alpha=0.3).get_config()["alpha"] == 0.3
    assert BoxLoss.from_config(BoxLoss(delta=0.2).get_config()).delta == 0.2


def _toy_model(num_anchors, num_classes):
    inputs = keras.Input((6,))
    box = keras.layers.Dense(num_anchors * 4)(inputs)
    box = keras.layers.Reshape((num_anchors, 4), name="box_deltas")(box)
    cls = keras.layers.Dense(num_anchors * num_classes)(inputs)
    cls = keras.layers.Reshape((num_anchors, num_classes), name="class_logits")(cls)
    return keras.Model(inputs, {"box_deltas": box, "class_logits": cls})


def test_compile_fit_and_evaluate_match_direct_call():
    keras.utils.set_random_seed(0)
    num_anchors, num_classes, batch = 7, 3, 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 6)).astype(np.float32)
    cls_t = rng.integers(-2, num_classes, size=(batch, num_anchors)).astype(np.float32)
    box_t = np.concatenate([rng.normal(size=(batch, num_anchors, 4)),
                            (cls_t >= 0)[..., None]], -1).astype(np.float32)
    y = {"box_deltas": box_t, "class_logits": cls_t}
    model = _toy_model(num_anchors, num_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss={"box_deltas": BoxLoss(), "class_logits": FocalLoss()})
    hist = model.fit(x, y, batch_size=batch, epochs=2, verbose=0)
    assert all(np.isfinite(v) for v in hist.history["loss"])
    # The compiled (Keras-reduced) loss equals the documented batch-normalized value.
    pred = model.predict(x, batch_size=batch, verbose=0)
    expected = float(BoxLoss()(box_t, pred["box_deltas"])) + float(FocalLoss()(cls_t, pred["class_logits"]))
    n_pos = (cls_t >= 0).sum()
    np.testing.assert_allclose(float(FocalLoss()(cls_t, pred["class_logits"])),
                               _focal_reference(cls_t, pred["class_logits"]), rtol=1e-5)
    assert n_pos > 1
    got = model.evaluate(x, y, batch_size=batch, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
