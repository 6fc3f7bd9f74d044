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


# ATSS (matcher="atss"). A 100 x 100 px canvas, two levels: four 20 px anchors
# centred at (10, 10), (10, 30), (30, 10), (30, 30) px, two 40 px anchors at (20, 20), (20, 60).
ATSS_ANCHORS = np.array([[0, 0, .2, .2], [0, .2, .2, .4], [.2, 0, .4, .2], [.2, .2, .4, .4],
                         [0, 0, .4, .4], [0, .4, .4, .8]], np.float32)
ATSS_KW = dict(matcher="atss", level_sizes=[4, 2], atss_top_k=2, image_size=(100, 100))


def test_atss_threshold_by_hand():
    # Box y 5..25, x 6..26 px, centre (15, 16). Nearest two per level: anchors 0 (61 px^2), 1 (221)
    # and 4, 5. IoUs 210/590, 90/710, 400/1600, 0 -> mean 0.18317, std (n-1) 0.15389, threshold 0.33706:
    # only anchor 0 (IoU 0.356, centre (10, 10) inside the box) is positive. The IoU rule would give
    # it nothing (0.356 < 0.4 -> background; without force-match).
    box = [[0.05, 0.06, 0.25, 0.26]]
    for force in (False, True):
        out = encode_targets(box, [3], ATSS_ANCHORS, force_match=force, **ATSS_KW)
        np.testing.assert_array_equal(out["class_logits"].numpy(), [3, -1, -1, -1, -1, -1])
        # Anchor 0 centre (0.1, 0.1) size 0.2; box centre (0.15, 0.16) size 0.2 x 0.2.
        np.testing.assert_allclose(out["box_deltas"].numpy()[0], [2.5, 3.0, 0, 0, 1], atol=1e-5)
    iou_rule = encode_targets(box, [3], ATSS_ANCHORS, force_match=False)["class_logits"].numpy()
    np.testing.assert_array_equal(iou_rule, [-1, -1, -1, -1, -1, -1])


def _atss_reference(boxes, anchors, level_sizes, top_k, hw):
    """Plain-numpy ATSS (one box at a time, float32 like the TF code), class per anchor or -1."""
    iou = box_iou(boxes, anchors).numpy()
    scale = np.array(hw, np.float32)
    a_centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = np.full(len(anchors), -1.0, np.float32)
    owner = np.full(len(anchors), -1)
    for n, box in enumerate(boxes):
        centre = (box[:2] + box[2:]) / 2
        dist = (((a_centre - centre) * scale) ** 2).sum(-1)
        cands, start = [], 0
        for size in level_sizes:
            cands += list(start + np.argsort(dist[start:start + size], kind="stable")[:min(top_k, size)])
            start += size
        ious = iou[n, cands].astype(np.float32)
        threshold = ious.mean(dtype=np.float32) + ious.std(ddof=1, dtype=np.float32)
        for c in cands:
            inside = np.all(a_centre[c] > box[:2]) and np.all(a_centre[c] < box[2:])
            if inside and iou[n, c] >= threshold and iou[n, c] > best[c]:
                best[c], owner[c] = iou[n, c], n
    return owner


def test_atss_matches_numpy_reference_on_a_real_grid():
    from keras_fpn.ops.anchors import anchors_per_level, generate_anchors
    hw = (96, 160)  # non-square: centre distances are in pixels, not normalized units
    args = (hw, 3, 5, 4, 2, (0.5, 1.0, 2.0))
    anchors = generate_anchors(*args)
    sizes = list(anchors_per_level(hw, 3, 5, 2, (0.5, 1.0, 2.0)).values())
    rng = np.random.default_rng(3)
    lo = rng.uniform(0, 0.75, (15, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.04, 0.25, (15, 2))], -1).astype(np.float32)
    classes = np.arange(15) % 4
    out = encode_targets(boxes, classes, anchors, matcher="atss", level_sizes=sizes, atss_top_k=9,
                         image_size=hw, force_match=False)
    owner = _atss_reference(boxes, anchors, sizes, 9, hw)
    expected = np.where(owner >= 0, classes[np.maximum(owner, 0)], -1)
    np.testing.assert_array_equal(out["class_logits"].numpy(), expected)
    assert (owner >= 0).sum() > 15 * 3  # several positives per box, not just its best anchor
    assert np.all(out["box_deltas"].numpy()[:, 4] == (owner >= 0))


def test_atss_gives_a_small_box_more_positives_than_the_iou_rule():
    # The demo's grid (192 px, P3-P6, anchor scale 4, 2 scales per octave): a 14 px box has IoU
    # <= 0.19 with every anchor, so the IoU rule has only its force-matched anchor.
    from keras_fpn.config import AnchorConfig, ModelConfig, NeckConfig
    from keras_fpn.ops.anchors import model_anchors, model_level_sizes
    mcfg = ModelConfig(image_size=(192, 192), neck=NeckConfig(max_level=6),
                       anchors=AnchorConfig(scales_per_octave=2, aspect_ratios=(1.0,)))
    anchors, sizes = model_anchors(mcfg), model_level_sizes(mcfg)
    assert sizes == [24 * 24 * 2, 12 * 12 * 2, 6 * 6 * 2, 3 * 3 * 2]
    box = np.array([[90, 91, 104, 105]], np.float32) / 192
    iou_rule = encode_targets(box, [0], anchors)["class_logits"].numpy()
    atss = encode_targets(box, [0], anchors, matcher="atss", level_sizes=sizes,
                          image_size=(192, 192))["class_logits"].numpy()
    assert (iou_rule == 0).sum() == 1
    assert (atss == 0).sum() >= 3 and np.all(np.nonzero(atss == 0)[0] < sizes[0])  # all on P3
    assert not np.any(atss == -2)  # no ignore band


@pytest.mark.parametrize("kw, match", [(dict(level_sizes=None), "level_sizes"),
                                       (dict(level_sizes=[4, 1]), "level_sizes"),
                                       (dict(matcher="centre"), "matcher")])
def test_atss_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        encode_targets([G_POS], [0], ATSS_ANCHORS, **{**ATSS_KW, **kw})


def test_atss_inside_tf_data_map_with_dynamic_n():
    samples = [([[0.05, 0.06, 0.25, 0.26], [0.5, 0.5, 0.9, 0.9]], [3, 1]), ([], [])]
    ds = tf.data.Dataset.from_generator(lambda: ((np.array(b, np.float32).reshape(-1, 4), np.array(c, np.int32))
                                                 for b, c in samples),
                                        output_signature=(tf.TensorSpec([None, 4], tf.float32),
                                                          tf.TensorSpec([None], tf.int32)))
    got = list(ds.map(lambda b, c: encode_targets(b, c, ATSS_ANCHORS, **ATSS_KW)).as_numpy_iterator())
    for (boxes, cls), out in zip(samples, got):
        eager = encode_targets(np.array(boxes, np.float32).reshape(-1, 4), cls, ATSS_ANCHORS, **ATSS_KW)
        np.testing.assert_array_equal(out["class_logits"], eager["class_logits"].numpy())
    np.testing.assert_array_equal(got[1]["class_logits"], [-1] * 6)
