"""fpn_export.edgetpu: op lists and the Edge TPU report on known graphs."""
from __future__ import annotations

import json

import numpy as np
import pytest

import export_helpers as H


def _small_model():
    """conv(stride 2) -> nearest x2 -> + conv1x1(input) -> reshape: a mini top-down FPN step."""
    import tf_keras

    L = tf_keras.layers
    x = tf_keras.Input((16, 16, 3), batch_size=1, name="image")
    a = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv_a")(x)
    up = L.UpSampling2D(2, interpolation="nearest", name="up")(a)
    b = L.Conv2D(8, 1, name="conv_b")(x)
    y = L.Add(name="merge")([up, b])
    y = L.Reshape((16 * 16 * 2, 4), name="flat")(y)
    return tf_keras.Model(x, y, name="mini_fpn")


def _rep():
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32) for _ in range(4)]


@pytest.fixture(scope="module")
def small_int8():
    from fpn_export.tflite import convert_keras

    data, _ = convert_keras(_small_model(), "int8", representative=_rep(), int8_io="uint8")
    return data


@pytest.fixture(scope="module")
def small_fp32():
    from fpn_export.tflite import convert_keras

    data, _ = convert_keras(_small_model(), "fp32")
    return data


def test_op_list_of_known_int8_graph(small_int8):
    from fpn_export.flatbuffer import read_graph

    graph = read_graph(small_int8)
    assert sorted(op.name for op in graph.ops) == sorted(
        ["QUANTIZE", "CONV_2D", "RESIZE_NEAREST_NEIGHBOR", "CONV_2D", "ADD", "RESHAPE", "QUANTIZE"])
    assert graph.ops[0].name == "QUANTIZE" and graph.ops[-1].name == "QUANTIZE"
    assert [t.dtype for t in graph.inputs] == ["UINT8"] and [t.dtype for t in graph.outputs] == ["UINT8"]
    resize = next(op for op in graph.ops if op.name == "RESIZE_NEAREST_NEIGHBOR")
    assert resize.options["half_pixel_centers"] is True and resize.version == 3
    assert list(resize.outputs[0].shape) == [1, 16, 16, 8]


def test_edgetpu_report_on_int8_graph_is_clean(small_int8):
    from fpn_export.edgetpu import check_edgetpu

    rep = check_edgetpu(small_int8)
    assert rep.clean and rep.num_edgetpu == 7 and rep.num_cpu == 0 and rep.cut == ()
    resize = next(v for v in rep.ops if v.op == "RESIZE_NEAREST_NEIGHBOR")
    assert resize.placement == "edgetpu" and any("half_pixel_centers" in w for w in resize.warnings)
    text = rep.to_text()
    assert "cannot be installed" in text and "| CONV_2D | 3 | 2 | edgetpu |" in text


def test_edgetpu_report_flags_float_ops(small_fp32):
    from fpn_export.edgetpu import check_edgetpu

    rep = check_edgetpu(small_fp32)
    assert not rep.clean and rep.num_edgetpu == 0
    first = rep.ops[0]
    assert first.placement == "cpu" and any("FLOAT32" in r for r in first.reasons)
    # Cut where the graph starts: the two convs that read the float input (both branches).
    assert sorted(v.op for v in rep.cut) == ["CONV_2D", "CONV_2D"] and first in rep.cut
    assert all(v.placement == "cpu" for v in rep.ops)


def test_edgetpu_report_cuts_at_a_float_island():
    """A float op in the middle of an int8 graph: cut there, everything downstream on the CPU."""
    import tensorflow as tf
    import tf_keras

    from fpn_export.edgetpu import check_edgetpu

    L = tf_keras.layers
    x = tf_keras.Input((8, 8, 3), batch_size=1, name="image")
    a = L.Conv2D(4, 3, padding="same", name="conv_a")(x)
    s = L.Lambda(lambda t: tf.sin(t), name="wave")(a)
    b = L.Conv2D(4, 3, padding="same", name="conv_b")(s)
    c = L.Conv2D(4, 1, name="conv_side")(x)   # parallel branch, not after the cut
    model = tf_keras.Model(x, [b, c])
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([r[:, :8, :8]] for r in _rep())
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.uint8
    rep = check_edgetpu(conv.convert())
    placement = {v.op: v.placement for v in rep.ops if v.op in ("SIN",)}
    assert placement == {"SIN": "cpu"}
    assert [v.op for v in rep.cut] == ["DEQUANTIZE"]
    convs = [v for v in rep.ops if v.op == "CONV_2D"]
    assert sorted(v.placement for v in convs) == ["cpu", "edgetpu", "edgetpu"]
    after = next(v for v in convs if v.placement == "cpu")
    assert "after the cut" in after.reasons[0]


def test_detector_edgetpu_export_is_clean_and_writes_report(tmp_path_factory, mobilenet_v2_weights,
                                                             raccoon_dir):
    from fpn_export.edgetpu import check_edgetpu

    path = H.export(tmp_path_factory.mktemp("etpu"), mobilenet_v2_weights[0.35], raccoon_dir,
                    "edgetpu", raw=False)
    rep = check_edgetpu(path)
    assert rep.clean
    assert [v.op for v in rep.cut] == ["DEQUANTIZE", "DEQUANTIZE"]
    assert [v.op for v in rep.cpu_ops] == ["DEQUANTIZE", "DEQUANTIZE", "TFLite_Detection_PostProcess"]
    assert rep.input_dtypes == ("UINT8",)
    saved = json.loads(path.with_name(path.stem + "_edgetpu_report.json").read_text())
    assert saved["clean"] is True and saved["num_cpu"] == 3
    assert path.with_name(path.stem + "_edgetpu_report.md").read_text().startswith("# Edge TPU")
