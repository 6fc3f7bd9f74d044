"""Matcher: hand-made IoUs, thresholds, force-match, padding, empty ground truth, tf.data."""
import math

import numpy as np
import pytest

import keras_fpn  # noqa: F401
import tensorflow as tf

from keras_fpn.ops.matcher import box_iou, encode_targets

# Four 0.4 x 0.4 anchors (area 0.16), one per quadrant.
ANCHORS = np.array([[0.0, 0.0, 0.4, 0.4],
                    [0.5, 0.5, 0.9, 0.9],
                    [0.0, 0.5, 0.4, 0.9],
                    [0.5, 0.0, 0.9, 0.4]], np.float32)
G_POS = [0.0, 0.0, 0.4, 0.3]     # IoU with anchor 0: 0.12 / 0.16 = 0.75 -> positive
G_IGN = [0.5, 0.5, 0.9, 0.68]    # IoU with anchor 1: 0.072 / 0.16 = 0.45 -> ignore
G_NEG = [0.5, 0.0, 0.9, 0.14]    # IoU with anchor 3: 0.056 / 0.16 = 0.35 -> background
PAD = [0.0, 0.5, 0.4, 0.9]       # identical to anchor 2, but a padding row


def _encode(boxes, classes, **kw):
    out = encode_targets(np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.float32),
                         ANCHORS, **kw)
    return out["box_deltas"].numpy(), out["class_logits"].numpy()


def test_box_iou_by_hand():
    iou = box_iou([G_POS, G_IGN, G_NEG], ANCHORS).numpy()
    assert iou.shape == (3, 4)
    np.testing.assert_allclose(iou[0], [0.75, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(iou[1], [0, 0.45, 0, 0], atol=1e-6)
    np.testing.assert_allclose(iou[2], [0, 0, 0, 0.35], atol=1e-6)
    # Half-overlapping squares: inter 0.08, union 0.24.
    np.testing.assert_allclose(box_iou([[0, 0, 0.4, 0.4]], [[0, 0.2, 0.4, 0.6]]).numpy(), [[1 / 3]], atol=1e-6)
    assert box_iou([[0.1, 0.1, 0.1, 0.1]], [[0.1, 0.1, 0.1, 0.1]]).numpy()[0, 0] == 0.0  # empty union


def test_thresholds_without_force_match():
    deltas, classes = _encode([G_POS, G_IGN, G_NEG, PAD], [2, 1, 0, -1], force_match=False)
    np.testing.assert_array_equal(classes, [2, -2, -1, -1])
    # Anchor 0 vs G_POS: ty = 0, tx = 10 * (0.15 - 0.2) / 0.4, th = 0, tw = 5 * log(0.3 / 0.4).
    np.testing.assert_allclose(deltas[0], [0, -1.25, 0, 5 * math.log(0.75), 1.0], atol=1e-5)
    np.testing.assert_array_equal(deltas[1:], 0.0)
    assert deltas.dtype == np.float32 and classes.dtype == np.float32


def test_force_match_promotes_each_box_best_anchor():
    deltas, classes = _encode([G_POS, G_IGN, G_NEG, PAD], [2, 1, 0, -1])
    np.testing.assert_array_equal(classes, [2, 1, -1, 0])  # padding row still ignored
    np.testing.assert_array_equal(deltas[:, 4], [1, 1, 0, 1])
    # Anchor 3 vs G_NEG: centre (0.7, 0.07), size 0.4 x 0.14.
    np.testing.assert_allclose(deltas[3, :4], [0, 10 * (0.07 - 0.2) / 0.4, 0, 5 * math.log(0.14 / 0.4)], atol=1e-5)


def test_tiny_box_force_matched():
    tiny = [0.1, 0.1, 0.12, 0.12]  # IoU with anchor 0: 0.0004 / 0.16 = 0.0025
    _, classes = _encode([tiny], [4], force_match=False)
    np.testing.assert_array_equal(classes, [-1, -1, -1, -1])
    deltas, classes = _encode([tiny], [4])
    np.testing.assert_array_equal(classes, [4, -1, -1, -1])
    np.testing.assert_allclose(deltas[0, 2], 5 * math.log(0.02 / 0.4), atol=1e-4)


def test_force_match_conflicts_are_deterministic():
    t1 = [0.1, 0.1, 0.12, 0.12]  # IoU 0.0025 with anchor 0
    t2 = [0.2, 0.2, 0.25, 0.25]  # IoU 0.015625 with anchor 0: higher, wins
    _, classes = _encode([t1, t2], [5, 6])
    np.testing.assert_array_equal(classes, [6, -1, -1, -1])
    # Equal IoU: the lower ground-truth row wins.
    _, classes = _encode([t1, t1], [7, 3])
    np.testing.assert_array_equal(classes, [7, -1, -1, -1])
    # The big box also claims anchor 0 (IoU 0.75) and beats the tiny one.
    _, classes = _encode([t1, G_POS], [5, 2])
    np.testing.assert_array_equal(classes, [2, -1, -1, -1])


def test_empty_and_all_padding_ground_truth():
    for boxes, cls in (([], []), ([G_POS, G_IGN], [-1, -1])):
        deltas, classes = _encode(boxes, cls)
        np.testing.assert_array_equal(classes, [-1, -1, -1, -1])
        np.testing.assert_array_equal(deltas, np.zeros((4, 5)))


def test_degenerate_box_matches_nothing():
    deltas, classes = _encode([[0.2, 0.2, 0.2, 0.3]], [1])
    np.testing.assert_array_equal(classes, [-1, -1, -1, -1])
    assert np.all(np.isfinite(deltas))


def test_inside_tf_data_map_with_dynamic_n():
    samples = [([G_POS, G_IGN, G_NEG, PAD], [2, 1, 0, -1]), ([], []), ([[0.1, 0.1, 0.12, 0.12]], [4])]

    def gen():
        for boxes, cls in samples:
            yield np.array(boxes, np.float32).reshape(-1, 4), np.array(cls, np.int32)

    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)))
    ds = ds.map(lambda b, c: encode_targets(b, c, ANCHORS))
    got = list(ds.as_numpy_iterator())
    assert len(got) == 3
    for (boxes, cls), out in zip(samples, got):
        deltas, classes = _encode(boxes, cls)
        np.testing.assert_array_equal(out["class_logits"], classes)
        np.testing.assert_allclose(out["box_deltas"], deltas, atol=1e-6)
    np.testing.assert_array_equal(got[0]["class_logits"], [2, 1, -1, 0])
    np.testing.assert_array_equal(got[2]["class_logits"], [4, -1, -1, -1])


def test_realistic_anchor_grid_every_box_gets_a_positive():
    from keras_fpn.ops.anchors import generate_anchors
    anchors = generate_anchors((128, 128), 3, 5, 4, 3, (0.5, 1.0, 2.0))
    rng = np.random.default_rng(1)
    lo = rng.uniform(0, 0.8, (12, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.01, 0.2, (12, 2))], -1).astype(np.float32)
    classes = np.arange(12) % 3
    out = encode_targets(boxes, classes, anchors)
    cls = out["class_logits"].numpy()
    assert out["box_deltas"].shape == (len(anchors), 5)
    assert set(np.unique(cls)) <= {-2, -1, 0, 1, 2}
    # Force-match: each box owns at least its best anchor unless another box took it.
    best = box_iou(boxes, anchors).numpy().argmax(axis=1)
    assert len(set(best)) == 12
    np.testing.assert_array_equal(cls[best], classes)


def test_bad_thresholds():
    with pytest.raises(ValueError, match="negative_iou"):
        encode_targets([G_POS], [0], ANCHORS, positive_iou=0.3, negative_iou=0.5)
