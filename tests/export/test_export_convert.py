"""fpn_export.detection / fpn_export.tflite: every mode converts and runs in ai_edge_litert; parity; metadata; op lists."""
from __future__ import annotations

import numpy as np
import pytest

import export_helpers as H

# The tiny detector's graph through the tf_keras twin (P3-P7, head depth 1, 5 levels):
# 17 backbone depthwise convs; 35 backbone convs + 3 lateral + 3 output + 2 extra + 5 levels x
# (2 towers + 2 outputs) = 63 convs; 10 backbone adds + 2 FPN merges; 2 nearest x2 upsamplings;
# 10 per-level reshapes and 2 concatenations; the RELU in front of P7 (the other ReLUs are
# fused into their convs).
NETWORK_OPS = {"CONV_2D": 63, "DEPTHWISE_CONV_2D": 17, "ADD": 12, "RELU": 1, "RESHAPE": 10,
               "RESIZE_NEAREST_NEIGHBOR": 2, "CONCATENATION": 2}
FORBIDDEN = {"SHAPE", "PACK", "STRIDED_SLICE", "TILE", "GATHER", "FILL", "BROADCAST_TO"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def exported(out_dir, mobilenet_v2_weights, raccoon_dir):
    def get(mode, raw, **kw):
        return H.export(out_dir, mobilenet_v2_weights[0.35], raccoon_dir, mode, raw=raw, **kw)
    return get


@pytest.fixture(scope="module")
def keras_outputs(mobilenet_v2_weights, raccoon_dir):
    model = H.tiny_model(mobilenet_v2_weights[0.35])
    return [{k: np.asarray(v) for k, v in model(x, training=False).items()}
            for x in H.evaluation(raccoon_dir)]


def test_fp32_raw_matches_keras_on_real_images(exported, keras_outputs, raccoon_dir):
    from fpn_export.flatbuffer import op_counts

    path = exported("fp32", True)
    assert op_counts(path) == NETWORK_OPS
    for x, ref in zip(H.evaluation(raccoon_dir), keras_outputs):
        got = H.run_tflite(path, x)
        for k in ("box_deltas", "class_logits"):
            assert got[k].shape == ref[k].shape
            assert np.abs(got[k] - ref[k]).max() <= 1e-4, k


@pytest.mark.slow
def test_keras3_upsampling_lowers_to_tile_and_twin_to_resize(exported, keras_outputs, raccoon_dir):
    """Keras 3 UpSampling2D -> RESHAPE/TILE/RESHAPE; the tf_keras twin -> RESIZE_NEAREST_NEIGHBOR."""
    from fpn_export.flatbuffer import op_counts

    k3 = op_counts(exported("fp32", True, via="keras"))
    twin = op_counts(exported("fp32", True))
    assert k3.get("TILE") == 4 and "RESIZE_NEAREST_NEIGHBOR" not in k3
    assert k3["RESHAPE"] == twin["RESHAPE"] + 6
    assert twin["RESIZE_NEAREST_NEIGHBOR"] == 2 and "TILE" not in twin
    # Both compute the same thing.
    x = H.evaluation(raccoon_dir)[0]
    a, b = H.run_tflite(exported("fp32", True, via="keras"), x), H.run_tflite(exported("fp32", True), x)
    assert np.abs(a["class_logits"] - b["class_logits"]).max() <= 1e-4


@pytest.mark.parametrize("mode,raw,in_dtype", [
    ("fp16", False, np.float32),
    ("dynamic", True, np.float32),
    ("int16x8", True, np.float32),
    ("int8", True, np.uint8),
    ("edgetpu", False, np.uint8),
])
def test_mode_converts_and_runs(exported, raccoon_dir, mode, raw, in_dtype):
    from ai_edge_litert.interpreter import Interpreter

    from fpn_edge.detector import Detector
    from fpn_edge.metadata import read_metadata
    from fpn_export.flatbuffer import read_graph

    path = exported(mode, raw)
    interp = Interpreter(model_path=str(path))
    (inp,) = interp.get_input_details()
    assert list(inp["shape"]) == [1, 128, 128, 3] and inp["dtype"] == in_dtype
    shapes = sorted(tuple(d["shape"]) for d in interp.get_output_details())
    if raw:
        assert shapes == [(1, 3069, 1), (1, 3069, 4)]
    else:
        assert shapes == [(1,), (1, 20), (1, 20), (1, 20, 4)]
        assert all(d["dtype"] == np.float32 for d in interp.get_output_details())
    names = {op.name for op in read_graph(path).ops}
    assert not names & FORBIDDEN, names & FORBIDDEN
    assert ("TFLite_Detection_PostProcess" in names) == (not raw)
    meta, anchors = read_metadata(path)
    assert meta["export"]["mode"] == mode and meta["output"] == ("raw" if raw else "postprocess")
    # The TF-free runtime loads and runs it.
    det = Detector.from_file(path)
    out = det.raw_outputs(H.evaluation(raccoon_dir)[0])
    assert all(np.all(np.isfinite(v)) for v in out.values())


def test_metadata_describes_the_model(exported):
    from fpn_edge.metadata import read_metadata
    from keras_fpn.ops.anchors import model_anchors

    cfg = H.tiny_config()
    meta, anchors = read_metadata(exported("int8", True))
    assert meta["labels"] == ["raccoon"]
    assert meta["input"] == {"height": 128, "width": 128, "normalization": H.NORM, "resize": "letterbox"}
    assert meta["box_coder"] == {"scale_factors": [10.0, 10.0, 5.0, 5.0]}
    assert meta["nms"] == {"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 20,
                           "max_detections_per_class": 20, "thread_safe": True}
    assert meta["config"]["model"]["neck"]["width"] == 32 and meta["config"]["model"]["num_classes"] == 1
    assert meta["export"]["io_dtype"] == "uint8" and meta["export"]["via"] == "tf_keras"
    np.testing.assert_array_equal(anchors, model_anchors(cfg.model))
    assert set(meta["output_tensors"]) == {"box_deltas", "class_logits"}
    meta_pp, anchors_pp = read_metadata(exported("fp16", False))
    assert meta_pp["output"] == "postprocess" and anchors_pp is None


def _rel_rmse(got, ref):
    return float(np.sqrt(np.mean((got - ref) ** 2)) / ref.std())


def test_int8_and_int16x8_close_to_float(exported, keras_outputs, raccoon_dir):
    """Full-int8 PTQ (4 calibration images) and int16x8 vs float, on 3 other real images.

    Measured on the tiny model (relative RMSE = RMSE / std of the float output):
    int8 class_logits 0.28-0.40, box_deltas 0.23-0.38, max |score diff| 0.10-0.35;
    int16x8 about 0.7x that. The error comes mostly from the int8 *weights*
    (int16 activations barely help): in MobileNetV2-0.35 a 1x1 projection of
    all-positive ReLU6 inputs cancels most of its signal, so one layer's int8
    weights alone give 2-3 % output error (measured on expanded_conv_project),
    accumulating to ~40 % at C5 with 4 or 32 calibration images alike. The
    quantization debugger shows no single bad layer. Tolerances: 1.5x the worst
    measured value.
    """
    int8, i16 = exported("int8", True), exported("int16x8", True)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    for x, ref in zip(H.evaluation(raccoon_dir), keras_outputs):
        for path in (int8, i16):
            got = H.run_tflite(path, x)
            for k in ("class_logits", "box_deltas"):
                assert _rel_rmse(got[k], ref[k]) <= 0.6, (path.name, k, _rel_rmse(got[k], ref[k]))
            assert np.abs(sig(got["class_logits"]) - sig(ref["class_logits"])).max() <= 0.5


def test_int16x8_shared_head_biases_are_rescaled(exported):
    """The int16x8 converter shares one bias across the 5 level calls of a head conv; we split it."""
    from fpn_export.flatbuffer import read_graph

    graph = read_graph(exported("int16x8", True))
    seen = {}
    convs = [op for op in graph.ops if op.name == "CONV_2D" and "head_cls_logits" in op.outputs[0].name]
    assert len(convs) == 5
    for op in graph.ops:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(op.inputs) == 3:
            inp, w, b = op.inputs
            assert b.index not in seen, f"bias {b.name} shared"
            seen[b.index] = op.index
            np.testing.assert_allclose(np.asarray(b.scales), inp.scales[0] * np.asarray(w.scales), rtol=1e-5)


def test_postprocess_op_list(exported):
    """Exact op list of the int8 post-process export (what the Edge TPU report sees)."""
    from fpn_export.flatbuffer import op_counts

    counts = op_counts(exported("edgetpu", False))
    assert counts == {"QUANTIZE": 1, **NETWORK_OPS, "DEQUANTIZE": 2, "LOGISTIC": 1,
                      "TFLite_Detection_PostProcess": 1}


def test_bad_mode_and_missing_calibration_are_clear(tmp_path, mobilenet_v2_weights, raccoon_dir):
    from fpn_export.detection import export_detector
    from fpn_export.errors import ExportError

    model = H.tiny_model(mobilenet_v2_weights[0.35])
    cfg = H.tiny_config(raccoon_dir)
    with pytest.raises(ExportError, match="unknown mode 'int4'"):
        export_detector(model, cfg, H.LABELS, "int4", out=tmp_path / "m.tflite")
    with pytest.raises(ExportError, match="needs representative images"):
        export_detector(model, cfg, H.LABELS, "int8", out=tmp_path / "m.tflite")
    with pytest.raises(ExportError, match="2 labels but model.num_classes is 1"):
        export_detector(model, cfg, ["a", "b"], "fp32", out=tmp_path / "m.tflite")


def test_float_op_left_in_int8_names_the_layer():
    """The converter silently keeps ops without an int8 kernel in float; the export refuses it."""
    import keras

    from fpn_export.errors import ExportError
    from fpn_export.tflite import convert_keras

    x = keras.Input((8, 8, 3), batch_size=1, name="image")
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(x)
    y = keras.layers.Lambda(lambda t: keras.ops.sin(t), name="wave")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv_b")(y)
    model = keras.Model(x, y, name="odd")
    rep = [np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32) for _ in range(2)]
    with pytest.raises(ExportError, match=r"int8 conversion of model 'odd' left op SIN in float \(layer 'wave'"):
        convert_keras(model, "int8", representative=rep)


def test_failed_export_keeps_the_existing_file(tmp_path, monkeypatch, mobilenet_v2_weights, raccoon_dir):
    import fpn_export.detection as det
    from fpn_export.errors import ExportError

    out = tmp_path / "model.tflite"
    out.write_bytes(b"previous model")

    def boom(*args, **kwargs):
        raise ExportError("fp32 conversion of model 'x' failed at op tfl.conv_2d: simulated")

    monkeypatch.setattr(det, "convert_keras", boom)
    with pytest.raises(ExportError, match="simulated"):
        det.export_detector(H.tiny_model(mobilenet_v2_weights[0.35]), H.tiny_config(raccoon_dir),
                             H.LABELS, "fp32", out=out, raw=True, via="keras")
    assert out.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_unloadable_conversion_fails_before_writing(tmp_path, monkeypatch, mobilenet_v2_weights, raccoon_dir):
    """A converted model the interpreter cannot prepare (seen: int16x8 of a barely trained FPNLite,
    ``no_integer_overflow_from_quantization``) fails the export; the earlier file stays."""
    import fpn_export.detection as det
    from fpn_export.errors import ExportError

    out = tmp_path / "model.tflite"
    out.write_bytes(b"previous model")
    real, info = det.convert_keras(H.tiny_model(mobilenet_v2_weights[0.35]), "fp32")
    monkeypatch.setattr(det, "convert_keras", lambda *a, **k: (real[: len(real) // 2], info))  # truncated
    with pytest.raises(ExportError, match=r"model.tflite: the converted model does not load in the TFLite "
                                               r"interpreter \(.*\); nothing was written"):
        det.export_detector(H.tiny_model(mobilenet_v2_weights[0.35]), H.tiny_config(raccoon_dir),
                             H.LABELS, "fp32", out=out, raw=True, via="keras")
    assert out.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_converter_error_names_op_and_layer():
    from fpn_export.tflite import conversion_error

    class FakeConverterError(Exception):
        pass

    exc = FakeConverterError(
        'loc(fused["Erfinv:", callsite("odd_1/wave_1/Erfinv@__inference_serve_12"(at "x"))]): '
        "error: 'tf.Erfinv' op is neither a custom op nor a flex op\n"
        "<unknown>:0: note: see current operation")

    class M:
        name = "odd"

    err = conversion_error(exc, "fp32", M(), ["conv_a", "wave", "conv_b"])
    assert str(err).startswith("fp32 conversion of model 'odd' failed at op tf.Erfinv, layer 'wave': ")
    assert "neither a custom op nor a flex op" in str(err)
