"""Box coder: hand-computed encodings, broadcasting, round trip, degenerate boxes."""
import math

import numpy as np

import keras_fpn  # noqa: F401  (sets the Keras backend before TF/Keras load)
import tensorflow as tf

from keras_fpn.ops.box_coder import decode_boxes, encode_boxes

ANCHOR = [0.2, 0.2, 0.6, 0.4]  # centre (0.4, 0.3), size 0.4 x 0.2


def test_encode_by_hand():
    box = [0.3, 0.25, 0.5, 0.45]  # centre (0.4, 0.35), size 0.2 x 0.2
    # ty = 10 * 0 / 0.4, tx = 10 * 0.05 / 0.2, th = 5 * log(0.2 / 0.4), tw = 5 * log(0.2 / 0.2)
    got = encode_boxes(np.array([box]), np.array([ANCHOR])).numpy()
    np.testing.assert_allclose(got, [[0.0, 2.5, 5 * math.log(0.5), 0.0]], atol=1e-5)
    got = encode_boxes([box], [ANCHOR], scale_factors=(1, 2, 3, 4)).numpy()
    np.testing.assert_allclose(got, [[0.0, 0.5, 3 * math.log(0.5), 0.0]], atol=1e-6)


def test_decode_by_hand():
    # ty = 1 -> y = 0.4 + 0.1 * 0.4 = 0.44; th = 5 * log 2 -> h = 0.8; tx = tw = 0.
    got = decode_boxes([[1.0, 0.0, 5 * math.log(2.0), 0.0]], [ANCHOR]).numpy()
    np.testing.assert_allclose(got, [[0.04, 0.2, 0.84, 0.4]], atol=1e-6)
    assert got.dtype == np.float32


def test_round_trip_with_batch_broadcast():
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 0.6, (50, 2))
    anchors = np.concatenate([corner, corner + rng.uniform(0.05, 0.4, (50, 2))], axis=-1)  # (50, 4)
    lo = rng.uniform(0, 0.5, (3, 50, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.01, 0.5, (3, 50, 2))], axis=-1)  # (3, 50, 4)
    deltas = encode_boxes(boxes, anchors)
    assert deltas.shape == (3, 50, 4)
    back = decode_boxes(deltas, tf.constant(anchors, tf.float32)).numpy()
    np.testing.assert_allclose(back, boxes, atol=1e-5)


def test_zero_size_box_is_finite():
    got = encode_boxes([[0.3, 0.3, 0.3, 0.5]], [ANCHOR]).numpy()
    assert np.all(np.isfinite(got))
    assert got[0, 2] < -50  # 5 * log(1e-8 / 0.4)
