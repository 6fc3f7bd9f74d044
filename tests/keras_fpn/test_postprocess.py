"""Decode + NMS: TF (keras_fpn) vs numpy (fpn_edge) parity and hand-checked suppression."""
import math
import subprocess
import sys

import numpy as np
import pytest

import keras_fpn  # noqa: F401
import tensorflow as tf

from fpn_edge import postprocess as edge_pp
from keras_fpn.ops import postprocess as tf_pp
from keras_fpn.ops.anchors import generate_anchors


def _assert_parity(tf_out, deltas, logits, anchors, **kw):
    for b in range(deltas.shape[0]):
        np_out = edge_pp.decode_detections(deltas[b], logits[b], anchors, **kw)
        n = int(tf_out["num_detections"][b])
        assert n == np_out["num_detections"]
        np.testing.assert_array_equal(tf_out["classes"][b].numpy(), np_out["classes"])
        np.testing.assert_allclose(tf_out["boxes"][b].numpy(), np_out["boxes"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(tf_out["scores"][b].numpy(), np_out["scores"], atol=1e-6, rtol=0)
        assert np.all(np_out["scores"][n:] == 0) and np.all(np_out["boxes"][n:] == 0)
    return n


@pytest.mark.parametrize("kw", [
    dict(),
    dict(pre_nms_top_k=None, score_threshold=0.3, iou_threshold=0.4,
         max_detections_per_class=15, max_detections=40),
    dict(pre_nms_top_k=25, score_threshold=0.0, iou_threshold=0.6,
         max_detections_per_class=50, max_detections=200),
])
def test_tf_numpy_parity_random_overlapping(kw):
    # 64 x 96 canvas, P3-P5, 9 anchors per location: 1134 heavily overlapping anchors.
    anchors = generate_anchors((64, 96), 3, 5, 4, 3, (0.5, 1.0, 2.0))
    rng = np.random.default_rng(42)
    batch, num_classes = 2, 4
    deltas = rng.normal(0, 0.5, (batch, len(anchors), 4)).astype(np.float32)
    logits = rng.normal(-1.5, 2.0, (batch, len(anchors), num_classes)).astype(np.float32)
    out = tf_pp.decode_detections(deltas, logits, anchors, **kw)
    n_out = kw.get("max_detections", 100)
    assert out["boxes"].shape == (batch, n_out, 4) and out["boxes"].dtype == tf.float32
    assert out["classes"].dtype == tf.int32 and out["num_detections"].dtype == tf.int32
    n = _assert_parity(out, deltas, logits, anchors, **kw)
    assert n > 10
    boxes = out["boxes"].numpy()
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert len(set(out["classes"].numpy()[0, :n])) == num_classes  # several classes present
    scores = out["scores"].numpy()[0, :n]
    assert np.all(np.diff(scores) <= 0)  # sorted by descending score


def test_parity_inside_tf_function_and_batched_edge_input():
    anchors = generate_anchors((64, 64), 3, 4, 4, 1, (1.0,))
    rng = np.random.default_rng(3)
    deltas = rng.normal(0, 0.3, (1, len(anchors), 4)).astype(np.float32)
    logits = rng.normal(0, 2, (1, len(anchors), 3)).astype(np.float32)
    fn = tf.function(lambda d, l: tf_pp.decode_detections(d, l, anchors, max_detections=20))
    out = fn(deltas, logits)
    np_out = edge_pp.decode_detections(deltas, logits, anchors, max_detections=20)  # [1, A, k] inputs
    np.testing.assert_array_equal(out["classes"][0].numpy(), np_out["classes"])
    np.testing.assert_allclose(out["boxes"][0].numpy(), np_out["boxes"], atol=1e-5)


def _hand_case():
    # Anchors are the boxes themselves; zero deltas decode to them.
    anchors = np.array([[0.0, 0.0, 0.5, 0.5],     # A
                        [0.0, 0.05, 0.5, 0.55],   # B: IoU(A, B) = 0.225 / 0.275 = 0.818
                        [0.6, 0.6, 0.9, 0.9]],    # C: disjoint
                       np.float32)
    deltas = np.zeros((1, 3, 4), np.float32)
    logits = np.array([[[2.0, -9.0], [1.0, 3.0], [0.0, -9.0]]], np.float32)
    return deltas, logits, anchors


def test_hand_case_suppression_and_per_class_nms():
    deltas, logits, anchors = _hand_case()
    for impl in ("tf", "np"):
        if impl == "tf":
            out = {k: v.numpy()[0] for k, v in tf_pp.decode_detections(deltas, logits, anchors,
                                                                        max_detections=5).items()}
        else:
            out = edge_pp.decode_detections(deltas, logits, anchors, max_detections=5)
        # Class 0: B is suppressed by A (IoU 0.82 > 0.5); C kept. Class 1: B alone is kept.
        assert int(out["num_detections"]) == 3, impl
        np.testing.assert_array_equal(out["classes"], [1, 0, 0, 0, 0])
        np.testing.assert_allclose(out["scores"][:3], [1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-2)), 0.5],
                                   atol=1e-6)
        np.testing.assert_allclose(out["boxes"][:3], anchors[[1, 0, 2]], atol=1e-6)
        np.testing.assert_array_equal(out["boxes"][3:], 0)


def test_hand_case_thresholds_are_strict():
    deltas, logits, anchors = _hand_case()
    kw = dict(score_threshold=0.5, iou_threshold=0.9, max_detections=5)
    tf_out = tf_pp.decode_detections(deltas, logits, anchors, **kw)
    np_out = edge_pp.decode_detections(deltas, logits, anchors, **kw)
    # C's score is exactly 0.5: not > 0.5, dropped. IoU 0.82 < 0.9: B survives in class 0.
    for out in (np_out, {k: v.numpy()[0] for k, v in tf_out.items()}):
        assert int(out["num_detections"]) == 3
        np.testing.assert_array_equal(out["classes"][:3], [1, 0, 0])
        np.testing.assert_allclose(out["boxes"][:3], anchors[[1, 0, 1]], atol=1e-6)


def test_caps_per_class_and_total():
    deltas, logits, anchors = _hand_case()
    kw = dict(iou_threshold=1.0, max_detections_per_class=1, max_detections=1)
    for out in (edge_pp.decode_detections(deltas, logits, anchors, **kw),
                {k: v.numpy()[0] for k, v in tf_pp.decode_detections(deltas, logits, anchors, **kw).items()}):
        assert int(out["num_detections"]) == 1
        assert out["classes"].tolist() == [1]


def test_numpy_nms_directly():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.9], [0, 0, 0.1, 0.1], [0, 0, 1, 1]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.5], np.float32)
    keep = edge_pp.nms(boxes, scores, iou_threshold=0.5, max_output_size=10)
    np.testing.assert_array_equal(keep, [1, 2])
    # Equal scores: lower index first.
    keep = edge_pp.nms(boxes, scores, iou_threshold=1.0, max_output_size=10, score_threshold=0.6)
    np.testing.assert_array_equal(keep, [1, 2])
    keep = edge_pp.nms(boxes[[0, 3]], scores[[0, 3]], iou_threshold=1.0, max_output_size=10)
    np.testing.assert_array_equal(keep, [0, 1])


def test_score_threshold_logit_equivalence():
    for t in (0.05, 0.3, 0.5, 0.9):
        assert tf_pp.score_threshold_to_logit(t) == edge_pp.score_threshold_to_logit(t)
        np.testing.assert_allclose(1 / (1 + math.exp(-edge_pp.score_threshold_to_logit(t))), t)
    assert edge_pp.score_threshold_to_logit(0.0) == -math.inf
    assert edge_pp.score_threshold_to_logit(1.0) == math.inf
    x = np.array([-100, -5, 0, 5, 100], np.float32)
    np.testing.assert_allclose(edge_pp.sigmoid(x), tf.sigmoid(x).numpy(), atol=1e-7)


def test_bad_arguments():
    deltas, logits, anchors = _hand_case()
    with pytest.raises(ValueError, match="iou_threshold"):
        edge_pp.decode_detections(deltas, logits, anchors, iou_threshold=1.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        tf_pp.decode_detections(deltas, logits, anchors, iou_threshold=1.5)
    with pytest.raises(ValueError, match="one image"):
        edge_pp.decode_detections(np.concatenate([deltas, deltas]), logits, anchors)


def test_edge_module_does_not_import_tensorflow():
    code = ("import sys, fpn_edge.postprocess; "
            "bad = [m for m in ('tensorflow', 'keras', 'keras_fpn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parity_with_exact_ties_quantized_logits():
    # Logits on a 0.5 grid (like dequantized int8 outputs): many exactly equal
    # scores. Both sides resolve ties by anchor index, then class.
    anchors = generate_anchors((64, 96), 3, 5, 4, 3, (0.5, 1.0, 2.0))
    rng = np.random.default_rng(7)
    deltas = rng.normal(0, 0.5, (2, len(anchors), 4)).astype(np.float32)
    logits = (np.round(rng.normal(-1, 2, (2, len(anchors), 3)) * 2) / 2).astype(np.float32)
    for k in (None, 40):
        out = tf_pp.decode_detections(deltas, logits, anchors, pre_nms_top_k=k)
        _assert_parity(out, deltas, logits, anchors, pre_nms_top_k=k)


def test_no_detections_and_padding_beyond_selections():
    deltas, logits, anchors = _hand_case()
    for kw, expected in ((dict(score_threshold=0.99), 0), (dict(max_detections=100), 3)):
        out = tf_pp.decode_detections(deltas, logits, anchors, **kw)
        assert out["boxes"].shape == (1, kw.get("max_detections", 100), 4)
        assert int(out["num_detections"][0]) == expected
        _assert_parity(out, deltas, logits, anchors, **kw)
