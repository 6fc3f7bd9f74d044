"""fpn_export.debug: QuantizationDebugger statistics and keeping the worst layers float."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import export_helpers as H


def _model():
    import tf_keras

    L = tf_keras.layers
    x = tf_keras.Input((16, 16, 3), batch_size=1, name="image")
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    y = L.Conv2D(8, 3, padding="same", name="conv_b")(y)
    y = L.Conv2D(4, 1, name="conv_c")(y)
    model = tf_keras.Model(x, y, name="stack")
    # An outlier weight makes conv_b's output range wide: its int8 error dominates.
    k, b = model.get_layer("conv_b").get_weights()
    k[0, 0, 0, 0] = 40.0
    model.get_layer("conv_b").set_weights([k, b])
    return model


def _rep():
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32) for _ in range(4)]


def test_debugger_writes_per_layer_stats(tmp_path):
    from fpn_export.flatbuffer import read_graph
    from fpn_export.tflite import convert_keras

    data, info = convert_keras(_model(), "int8", representative=_rep(), debug_dir=str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "layer_stats.csv")))
    assert len(rows) == 3 and {r["op_name"] for r in rows} == {"CONV_2D"}
    assert {"mean_squared_error", "max_abs_error", "scale", "zero_point", "tensor_name"} <= set(rows[0])
    stats = json.loads((tmp_path / "layer_stats.json").read_text())
    worst = stats["layers"]
    assert [r["rmse_over_scale"] for r in worst] == sorted((r["rmse_over_scale"] for r in worst), reverse=True)
    assert stats["kept_float"] == []
    assert info["debug"]["csv"].endswith("layer_stats.csv")
    # The returned model is the normal full-integer one.
    assert [t.dtype for t in read_graph(data).inputs] == ["UINT8"]


def test_keep_float_denylists_the_worst_layers(tmp_path):
    from fpn_export.flatbuffer import read_graph
    from fpn_export.tflite import convert_keras

    data, info = convert_keras(_model(), "int8", representative=_rep(), debug_dir=str(tmp_path),
                               keep_float=1)
    kept = info["debug"]["kept_float"]
    assert len(kept) == 1
    graph = read_graph(data)
    float_convs = [op for op in graph.ops if op.name == "CONV_2D" and op.outputs[0].dtype == "FLOAT32"]
    assert len(float_convs) == 1 and float_convs[0].outputs[0].name == kept[0]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], _rep()[0])
    interp.invoke()


@pytest.mark.slow
def test_detector_debug_export(tmp_path, mobilenet_v2_weights, raccoon_dir):
    from fpn_edge.metadata import read_metadata
    from fpn_export.detection import export_detector

    path = export_detector(H.tiny_twin(mobilenet_v2_weights[0.35]), H.tiny_config(raccoon_dir), H.LABELS,
                           "int8", out=tmp_path / "dbg.tflite", raw=True,
                           representative=H.calibration(raccoon_dir), debug=True)
    stats = json.loads((tmp_path / "dbg_debug" / "layer_stats.json").read_text())
    assert len(stats["layers"]) > 80
    meta, _ = read_metadata(path)
    assert meta["export"]["debug"]["kept_float"] == []
