"""Quantization debugging (``keras-fpn export ... --debug``): which layers lose accuracy under int8.

``debug_quantization`` runs TF's ``tf.lite.experimental.QuantizationDebugger``
on the configured converter: the model is calibrated on the representative
images, converted with a NumericVerify op after every quantized tensor, and run
on the same images; for each quantized tensor the debugger compares the
dequantized int8 result with the float result of the same op given the same
(quantized) input, i.e. the error each layer *adds*.

Written to the debug folder:

``layer_stats.csv``
    The debugger's own dump: ``op_name, tensor_idx, num_elements, stddev,
    mean_error, max_abs_error, mean_squared_error, scale, zero_point,
    tensor_name``.
``layer_stats.json``
    The same rows plus ``rmse_over_scale = sqrt(mean_squared_error) / scale``
    (the error in units of the quantization step: uniform rounding noise alone
    gives ~0.29; layers far above that clip or have a range too wide for 8 bits)
    and ``range = 255 * scale``, sorted worst first, with the list of layers
    kept in float.

``keep_float=N`` re-quantizes with the N worst tensors denylisted
(``QuantizationDebugOptions(denylisted_nodes=...)``): those ops stay float32,
with QUANTIZE/DEQUANTIZE around them. Such a model is no longer full-integer
(not for the Edge TPU) and its input/output are float32.

``keep_float`` may also be the tensor names themselves (a ranking made by an
earlier run, ``ranking``): the model is calibrated and re-quantized with them
denylisted, without collecting the statistics again (the accuracy-budget
search of ``fpn_export.budget`` converts several plans from one ranking).
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
from pathlib import Path
from fpn_edge.atomic import write_text_atomic

__all__ = ["debug_quantization", "worst_layers", "ranking"]


def _rows(csv_text: str) -> list:
    rows = []
    for row in csv.DictReader(io.StringIO(csv_text)):
        out = {}
        for k, v in row.items():
            try:
                out[k] = float(v) if k not in ("op_name", "tensor_name") else v
            except (TypeError, ValueError):
                out[k] = v
        scale = out.get("scale") or 0.0
        mse = out.get("mean_squared_error") or 0.0
        out["rmse_over_scale"] = math.sqrt(mse) / scale if scale else float("inf")
        out["range"] = 255.0 * scale
        for k in ("tensor_idx", "num_elements", "zero_point"):
            if isinstance(out.get(k), float):
                out[k] = int(out[k])
        rows.append(out)
    rows.sort(key=lambda r: r["rmse_over_scale"], reverse=True)
    return rows


def worst_layers(rows: list, n: int) -> list:
    """Tensor names of the ``n`` rows with the largest ``rmse_over_scale``."""
    names = []
    for r in rows:
        if len(names) >= n:
            break
        if r["tensor_name"] not in names and math.isfinite(r["rmse_over_scale"]):
            names.append(r["tensor_name"])
    return names


def ranking(json_path, n=None) -> list:
    """The tensor names of a ``layer_stats.json``, worst first (the ``n`` worst; all by default)."""
    rows = json.loads(Path(json_path).read_text())["layers"]
    return worst_layers(rows, len(rows) if n is None else n)


def _denylisted_model(converter, representative, names) -> tuple:
    """Calibrate and quantize with ``names`` denylisted (float), without collecting statistics."""
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(names))
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative,
                                                         debug_options=options)
    return debugger.get_nondebug_quantized_model(), {"csv": None, "json": None, "kept_float": list(names),
                                                     "worst": []}


def debug_quantization(converter, representative, out_dir, *, keep_float=0) -> tuple:
    """Run the QuantizationDebugger, write the statistics, and return the model to export.

    Args:
        converter: a ``tf.lite.TFLiteConverter`` configured for a calibrated
            integer mode (optimizations + representative dataset); it is
            modified by the debugger.
        representative: the dataset factory (yields ``[image]`` lists).
        out_dir: folder for ``layer_stats.csv`` / ``layer_stats.json``.
        keep_float: keep this many worst tensors float (0: export the normal
            quantized model), or a sequence of tensor names to keep float (no
            statistics are collected then; empty: the normal quantized model).

    Returns:
        ``(tflite bytes, info)`` with info ``{"csv", "json", "kept_float", "worst"}``.
    """
    import tensorflow as tf

    if not isinstance(keep_float, numbers.Integral):
        if keep_float:
            return _denylisted_model(converter, representative, keep_float)
        return converter.convert(), {"csv": None, "json": None, "kept_float": [], "worst": []}
    out_dir = Path(out_dir)
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative)
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = _rows(buf.getvalue())
    kept = worst_layers(rows, keep_float) if keep_float else []
    csv_path = out_dir / "layer_stats.csv"
    json_path = out_dir / "layer_stats.json"
    write_text_atomic(csv_path, buf.getvalue())
    write_text_atomic(json_path, json.dumps(
        {"note": "rmse_over_scale = sqrt(mean_squared_error) / scale; ~0.29 is pure rounding noise",
         "kept_float": kept, "layers": rows}, indent=2))
    if kept:
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=kept)
        data = debugger.get_nondebug_quantized_model()
    else:
        converter._experimental_calibrate_only = False  # back to a normal conversion
        data = converter.convert()
    info = {"csv": str(csv_path), "json": str(json_path), "kept_float": kept,
            "worst": [{k: r[k] for k in ("tensor_name", "op_name", "rmse_over_scale", "scale")}
                      for r in rows[:10]]}
    return data, info
