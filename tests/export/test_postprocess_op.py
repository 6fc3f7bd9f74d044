"""fpn_export.postprocess_op: the in-graph TFLite_Detection_PostProcess vs the numpy decode + NMS."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

import edge_tiny_models as etm  # noqa: E402
from fpn_edge import Detector  # noqa: E402
from fpn_edge.detector import _map_postprocess_outputs  # noqa: E402
from fpn_edge.metadata import strip_metadata as strip, write_metadata  # noqa: E402
from fpn_edge.postprocess import decode_boxes, decode_detections  # noqa: E402
from fpn_export.postprocess_op import (OP_NAME, anchors_to_center_size, attach_postprocess,  # noqa: E402
                                       implements_signature, kernel_score_threshold,
                                       patch_postprocess_options, postprocess_options)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return etm.get_models(tmp_path_factory)


def _ops(path_or_bytes):
    from ai_edge_litert.interpreter import Interpreter
    kw = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": str(path_or_bytes)}
    it = Interpreter(**kw)
    it.allocate_tensors()
    return [op["op_name"] for op in it._get_ops_details()]


def _numpy_reference(raw, nms=etm.NMS):
    return decode_detections(raw["box_deltas"][0], raw["class_logits"][0], etm.tiny_anchors(),
                             scale_factors=etm.SCALE_FACTORS, score_threshold=nms["score_threshold"],
                             iou_threshold=nms["iou_threshold"],
                             max_detections_per_class=nms["max_detections_per_class"],
                             max_detections=nms["max_detections"])


def _canvases(raccoon_dir, det):
    """Normalized model inputs: 3 real raccoon photos and one noise image."""
    files = sorted((raccoon_dir / "images").glob("*.jpg"))[:3]
    out = []
    for f in files:
        x, _ = det.preprocess(det.load(f))
        out.append(x.copy())
    out.append(np.random.default_rng(5).uniform(-1, 1, (1, etm.H, etm.W, 3)).astype(np.float32))
    return out


def test_anchor_conversion():
    a = np.array([[0.1, 0.2, 0.5, 0.4]], np.float32)
    np.testing.assert_allclose(anchors_to_center_size(a), [[0.3, 0.3, 0.4, 0.2]], atol=1e-7)
    with pytest.raises(ValueError, match="positive height"):
        anchors_to_center_size(np.array([[0.5, 0.2, 0.1, 0.4]]))


def test_signature_text():
    s = implements_signature(num_classes=3, scale_factors=(10, 10, 5, 5), score_threshold=0.3,
                             iou_threshold=0.5, max_detections=20, max_detections_per_class=10,
                             use_regular_nms=True)
    assert s.startswith(f'name: "{OP_NAME}"')
    for part in ('key: "num_classes" value { i: 3 }', 'key: "use_regular_nms" value { b: true }',
                 f'key: "nms_score_threshold" value {{ f: {kernel_score_threshold(0.3)!r} }}',
                 'key: "y_scale" value { f: 10.0 }',
                 'key: "detections_per_class" value { i: 10 }', 'key: "max_classes_per_detection" value { i: 1 }'):
        assert part in s


def test_converter_drops_detections_per_class_and_patch_restores_it(models):
    """TF 2.21's converter leaves detections_per_class out of the op options (kernel default 100)."""
    unpatched = _identity_pp_model(ANCHORS_ID, max_detections_per_class=2, patch=False)
    (opts,) = postprocess_options(unpatched)
    assert "detections_per_class" not in opts
    assert opts["max_detections"] == 5 and opts["num_classes"] == C_ID
    (patched,) = postprocess_options(patch_postprocess_options(unpatched, detections_per_class=2))
    assert patched["detections_per_class"] == 2
    assert {k: v for k, v in patched.items() if k != "detections_per_class"} == pytest.approx(opts)
    # 3 classes -> one op of classes 0-1 (20 rows) and one of class 2 (10 rows = its per-class cap)
    full = postprocess_options(strip(models["pp_fp32"].read_bytes()))
    common = {"max_classes_per_detection": 1, "detections_per_class": 10, "use_regular_nms": True,
              "nms_score_threshold": 0.3, "nms_iou_threshold": 0.5,
              "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0}
    assert sorted(full, key=lambda o: -o["num_classes"]) == [
        pytest.approx(dict(common, num_classes=2, max_detections=20)),
        pytest.approx(dict(common, num_classes=1, max_detections=10))]
    # without the patch the per-class cap is not applied
    deltas = np.zeros((A_ID, 4), np.float32)
    logits = np.full((A_ID, C_ID), -10.0, np.float32)
    logits[[0, 1, 3, 4, 5], 0] = _logit(np.array([0.9, 0.8, 0.7, 0.6, 0.55]))
    _, classes, _ = _run_identity(unpatched, deltas, logits)
    assert list(classes) == [0, 0, 0, 0, 0]
    _, classes, _ = _run_identity(patch_postprocess_options(unpatched, detections_per_class=2), deltas, logits)
    assert list(classes) == [0, 0]


def test_op_in_graph_and_signature(models):
    ops = [o for o in _ops(models["pp_fp32"]) if o != "DELEGATE"]
    # 3 classes: two ops (classes 0-1, class 2), then the int32 merge ending in BITCAST/CAST
    assert ops.count(OP_NAME) == 2 and {"TOPK_V2", "GATHER", "BITCAST"} <= set(ops[ops.index(OP_NAME):])
    assert set(ops[-3:]) <= {"BITCAST", "CAST", "MUL", "GATHER"}
    assert OP_NAME not in _ops(models["raw_fp32"])
    det = Detector.from_file(models["pp_fp32"])
    shapes = {k: list(det._out_details[i]["shape"]) for k, i in det._out_map.items()}
    n = etm.NMS["max_detections"]
    assert shapes == {"boxes": [1, n, 4], "classes": [1, n], "scores": [1, n], "num_detections": [1]}


def test_stub_equals_numpy_decode_fp32(models, raccoon_dir):
    """Same input -> op detections == numpy decode + per-class NMS of the raw model's outputs."""
    pp = Detector.from_file(models["pp_fp32"], threads=1)
    raw = Detector.from_file(models["raw_fp32"], threads=1)
    anchors = etm.tiny_anchors()
    total = 0
    for x in _canvases(raccoon_dir, raw):
        r = raw.raw_outputs(x)
        # precondition of exact parity: every decoded box lies inside the canvas (no clipping)
        dec = decode_boxes(r["box_deltas"][0], anchors, etm.SCALE_FACTORS)
        assert dec.min() >= 0 and dec.max() <= 1
        ref = _numpy_reference(r)
        o = pp.raw_outputs(x)
        n = int(o["num_detections"][0])
        assert n == ref["num_detections"] > 0
        np.testing.assert_array_equal(o["classes"][0, :n].astype(int), ref["classes"][:n])
        np.testing.assert_allclose(o["boxes"][0, :n], ref["boxes"][:n], atol=1e-4, rtol=0)
        np.testing.assert_allclose(o["scores"][0, :n], ref["scores"][:n], atol=1e-5, rtol=0)
        # padding rows are zeros, like the numpy output
        assert not o["boxes"][0, n:].any() and not o["scores"][0, n:].any()
        total += n
    assert total >= 20


def test_detector_pp_equals_raw_on_real_images(models, raccoon_dir):
    """End to end through fpn_edge.Detector: post-process model == raw model + numpy NMS."""
    pp = Detector.from_file(models["pp_fp32"], threads=1)
    raw = Detector.from_file(models["raw_fp32"], threads=1)
    for f in sorted((raccoon_dir / "images").glob("*.jpg"))[:3]:
        a, b = pp.detect(f), raw.detect(f)
        assert len(a) == len(b) > 0
        assert [d.class_id for d in a] == [d.class_id for d in b]
        assert [d.label for d in a] == [d.label for d in b]
        np.testing.assert_allclose([d.box_yxyx for d in a], [d.box_yxyx for d in b], atol=1e-4)
        np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-5)


# -- the op's own semantics, checked on chosen inputs --------------------------------------------

A_ID, C_ID = 6, 2


def _identity_pp_model(anchors, *, use_regular_nms=True, score_threshold=0.3, iou_threshold=0.5,
                       max_detections=5, max_detections_per_class=5, patch=True):
    """A model whose inputs ARE the deltas / logits, ending in the op: feeds the op chosen values."""
    d = keras.Input((A_ID, 4), batch_size=1, name="deltas")
    c = keras.Input((A_ID, C_ID), batch_size=1, name="logits")
    b = keras.layers.Reshape((A_ID, 4), name="box_deltas")(d)
    k = keras.layers.Reshape((A_ID, C_ID), name="class_logits")(c)
    m = keras.Model([d, c], [b, k])
    pp = attach_postprocess(m, anchors, num_classes=C_ID, scale_factors=(10, 10, 5, 5),
                            score_threshold=score_threshold, iou_threshold=iou_threshold,
                            max_detections=max_detections, max_detections_per_class=max_detections_per_class,
                            use_regular_nms=use_regular_nms)
    tfl = etm.convert(pp, int8=False)
    return patch_postprocess_options(tfl, pp) if patch else tfl


def _run_identity(tflite, deltas, logits):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], (deltas if d["shape"][-1] == 4 else logits)[None].astype(np.float32))
    it.invoke()
    op = next(o for o in it._get_ops_details() if o["op_name"] == OP_NAME)
    boxes, classes, scores, num = (it.get_tensor(i) for i in op["outputs"])
    n = int(num[0])
    return boxes[0, :n], classes[0, :n].astype(int), scores[0, :n]


def _logit(p):
    return np.log(p / (1 - p))


ANCHORS_ID = np.array([[0.00, 0.00, 0.20, 0.20],   # at the corner: a grown box leaves the canvas
                       [0.10, 0.10, 0.30, 0.30],
                       [0.11, 0.11, 0.31, 0.31],   # IoU with anchor 1 = 0.82
                       [0.50, 0.50, 0.70, 0.70],
                       [0.70, 0.10, 0.90, 0.30],
                       [0.40, 0.75, 0.60, 0.95]], np.float32)


@pytest.fixture(scope="module")
def identity_models():
    return {"regular": _identity_pp_model(ANCHORS_ID),
            "fast": _identity_pp_model(ANCHORS_ID, use_regular_nms=False),
            "cap2": _identity_pp_model(ANCHORS_ID, max_detections_per_class=2)}


def test_op_semantics_regular_nms(identity_models):
    deltas = np.zeros((A_ID, 4), np.float32)
    deltas[0, 2:] = 5.0                       # exp(1) larger, centred on the corner -> ymin < 0
    logits = np.full((A_ID, C_ID), -10.0, np.float32)
    logits[0, 0] = _logit(0.9)
    logits[1, 0], logits[2, 0] = _logit(0.8), _logit(0.7)   # overlap 0.82 -> 2 suppressed by 1
    logits[2, 1] = _logit(0.6)                # same box, other class: kept (per-class NMS)
    logits[3, 1] = _logit(0.5)
    logits[4, 0] = _logit(0.29)               # under the 0.3 threshold
    boxes, classes, scores = _run_identity(identity_models["regular"], deltas, logits)
    np.testing.assert_array_equal(classes, [0, 0, 1, 1])
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.6, 0.5], atol=1e-6)
    # unclipped: the op returns the box reaching past the canvas; keras_fpn/numpy clip it
    assert boxes[0, 0] < 0 and boxes[0, 1] < 0
    ref = decode_detections(deltas, logits, ANCHORS_ID, score_threshold=0.3, iou_threshold=0.5,
                            max_detections_per_class=5, max_detections=5)
    n = ref["num_detections"]
    np.testing.assert_array_equal(ref["classes"][:n], classes)
    np.testing.assert_allclose(ref["scores"][:n], scores, atol=1e-6)
    np.testing.assert_allclose(ref["boxes"][:n], np.clip(boxes, 0, 1), atol=1e-6)
    assert ref["boxes"][0, 0] == 0.0


def test_op_semantics_detections_per_class(identity_models):
    deltas = np.zeros((A_ID, 4), np.float32)
    logits = np.full((A_ID, C_ID), -10.0, np.float32)
    logits[[0, 1, 3, 4, 5], 0] = _logit(np.array([0.9, 0.8, 0.7, 0.6, 0.55]))
    logits[3, 1] = _logit(0.4)
    boxes, classes, scores = _run_identity(identity_models["cap2"], deltas, logits)
    np.testing.assert_array_equal(classes, [0, 0, 1])           # 2 per class, then the other class
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.4], atol=1e-6)


def test_op_fast_nms_is_class_agnostic(identity_models):
    """use_regular_nms=False: one box per anchor (best class), NMS across classes."""
    deltas = np.zeros((A_ID, 4), np.float32)
    logits = np.full((A_ID, C_ID), -10.0, np.float32)
    logits[1, 0] = _logit(0.8)
    logits[2, 1] = _logit(0.7)               # overlaps anchor 1 (IoU 0.82) but another class
    logits[3, 0], logits[3, 1] = _logit(0.6), _logit(0.5)   # two classes on one anchor
    _, c_reg, s_reg = _run_identity(identity_models["regular"], deltas, logits)
    _, c_fast, s_fast = _run_identity(identity_models["fast"], deltas, logits)
    np.testing.assert_array_equal(c_reg, [0, 1, 0, 1])
    np.testing.assert_allclose(s_reg, [0.8, 0.7, 0.6, 0.5], atol=1e-6)
    np.testing.assert_array_equal(c_fast, [0, 0])            # class-1 box suppressed by class 0; 1 class/anchor
    np.testing.assert_allclose(s_fast, [0.8, 0.6], atol=1e-6)


def test_random_inputs_regular_nms_matches_numpy(identity_models):
    """Many random draws (boxes inside the canvas): op == numpy decode + per-class NMS."""
    rng = np.random.default_rng(0)
    tfl = identity_models["regular"]
    for _ in range(30):
        deltas = rng.normal(0, 0.3, (A_ID, 4)).astype(np.float32)
        logits = rng.normal(0, 2, (A_ID, C_ID)).astype(np.float32)
        if decode_boxes(deltas, ANCHORS_ID).min() < 0 or decode_boxes(deltas, ANCHORS_ID).max() > 1:
            continue
        boxes, classes, scores = _run_identity(tfl, deltas, logits)
        ref = decode_detections(deltas, logits, ANCHORS_ID, score_threshold=0.3, iou_threshold=0.5,
                                max_detections_per_class=5, max_detections=5)
        n = ref["num_detections"]
        assert len(classes) == n
        np.testing.assert_array_equal(ref["classes"][:n], classes)
        np.testing.assert_allclose(ref["boxes"][:n], boxes, atol=1e-6)
        np.testing.assert_allclose(ref["scores"][:n], scores, atol=1e-6)


# -- quantized and tf_keras -----------------------------------------------------------------------

def test_int8_postprocess_model_runs(models, raccoon_dir):
    det = Detector.from_file(models["pp_int8"], threads=1)
    assert det.input_dtype == np.uint8
    ops = _ops(models["pp_int8"])
    assert OP_NAME in ops and "QUANTIZE" in ops
    x, _ = det.preprocess(det.load(sorted((raccoon_dir / "images").glob("*.jpg"))[0]))
    o = det.raw_outputs(x)
    n = etm.NMS["max_detections"]
    assert o["boxes"].shape == (1, n, 4) and o["classes"].shape == (1, n)
    assert o["scores"].shape == (1, n) and o["num_detections"].shape == (1,)
    k = int(o["num_detections"][0])
    assert 0 < k <= n
    assert np.all(o["scores"][0, :k] >= etm.NMS["score_threshold"])
    assert set(o["classes"][0, :k].astype(int)) <= set(range(etm.C))
    # int8 vs fp32 on the same input: scores within a few quantization steps
    ref = Detector.from_file(models["pp_fp32"], threads=1).raw_outputs(x)
    assert abs(float(o["scores"][0, 0]) - float(ref["scores"][0, 0])) < 0.05


def test_tf_keras_namespace(models):
    """ns=tf_keras (the QAT path): same weights -> same detections as the Keras 3 model."""
    tf_keras = pytest.importorskip("tf_keras")
    km = models["keras"]
    tm = etm.build_keras(tf_keras)
    tm.set_weights(km.get_weights())
    pp = attach_postprocess(tm, etm.tiny_anchors(), num_classes=etm.C, scale_factors=etm.SCALE_FACTORS,
                            score_threshold=etm.NMS["score_threshold"], iou_threshold=etm.NMS["iou_threshold"],
                            max_detections=etm.NMS["max_detections"],
                            max_detections_per_class=etm.NMS["max_detections_per_class"], ns=tf_keras)
    assert isinstance(pp, tf_keras.Model)
    tfl = patch_postprocess_options(etm.convert(pp, int8=False), pp)
    assert OP_NAME in _ops(tfl)
    from ai_edge_litert.interpreter import Interpreter
    x = np.random.default_rng(3).uniform(-1, 1, (1, etm.H, etm.W, 3)).astype(np.float32)
    it = Interpreter(model_content=tfl)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    out_map = _map_postprocess_outputs(it, it.get_output_details(), "tf_keras model")
    ref = Detector.from_file(models["pp_fp32"]).raw_outputs(x)
    for key, i in out_map.items():
        np.testing.assert_allclose(it.get_tensor(i), ref[key], atol=1e-5)


def test_attach_rejects_bad_models():
    x = keras.Input((8, 8, 3), batch_size=1)
    y = keras.layers.Conv2D(4, 1)(x)
    b = keras.layers.Reshape((64, 4))(y)
    c = keras.layers.Reshape((64, 4))(keras.layers.Conv2D(4, 1)(x))
    m = keras.Model(x, [b, c])
    kw = dict(num_classes=4, scale_factors=(10, 10, 5, 5), score_threshold=0.1, iou_threshold=0.5,
              max_detections=5, max_detections_per_class=5)
    with pytest.raises(ValueError, match="64 anchors|anchors but"):
        attach_postprocess(m, np.tile([[0, 0, 1, 1]], (10, 1)).astype(np.float32), **kw)
    with pytest.raises(ValueError, match="iou_threshold"):
        attach_postprocess(m, np.tile([[0, 0, 1, 1]], (64, 1)).astype(np.float32), **dict(kw, iou_threshold=0))
    xd = keras.Input((8, 8, 3))  # dynamic batch
    md = keras.Model(xd, [keras.layers.Reshape((64, 4))(keras.layers.Conv2D(4, 1)(xd)),
                          keras.layers.Reshape((64, 4))(keras.layers.Conv2D(4, 1)(xd))])
    with pytest.raises(ValueError, match="static batch of 1"):
        attach_postprocess(md, np.tile([[0, 0, 1, 1]], (64, 1)).astype(np.float32), **kw)

# The thread-count regression tests (5-class linear detector) are in test_nms_threads.py.
