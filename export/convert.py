"""Keras -> TFLite export of keras-fpn detectors: one entry point keyed by mode.

Modes (``MODES``):

============  ==============================================================
``fp32``      float32 weights and activations.
``fp16``      float16 weights (dequantized to float32 at load), float activations.
``dynamic``   int8 weights, float activations (dynamic-range quantization).
``int8``      full integer: int8 weights (per-channel) and activations,
              calibrated on a representative dataset of real training images
              through the training pipeline's own preprocessing; input (and
              raw outputs) in ``ExportConfig.int8_io`` (uint8 | int8 | float32).
``int16x8``   int16 activations, int8 weights (float32 I/O); calibrated.
``qat-int8``  quantization-aware fine-tuning of the tf_keras twin with tfmot
              (``fpn_export.qat``), then full integer conversion.
``edgetpu``   ``int8`` with uint8 I/O and an Edge TPU op report
              (``fpn_export.edgetpu``) next to the model.
============  ==============================================================

Every export:

* has a static batch of 1 (``[1, H, W, 3]`` input);
* is converted **through the tf_keras twin** of the Keras 3 model (same
  builder code, same weights, outputs identical): Keras 3's ``UpSampling2D``
  lowers to RESHAPE + TILE + RESHAPE in TFLite (4 TILE and 6 extra RESHAPE ops
  for a P3-P5 top-down path), tf_keras's to one RESIZE_NEAREST_NEIGHBOR, which
  the Edge TPU maps and TILE it does not (``via="keras"`` converts the Keras 3
  model as it is);
* ends, unless ``raw=True``, in the ``TFLite_Detection_PostProcess`` op
  (``fpn_export.postprocess_op``) with float32 outputs boxes ``[1, N, 4]``,
  classes ``[1, N]``, scores ``[1, N]``, num_detections ``[1]``; a raw export
  outputs ``box_deltas [1, A, 4]`` and ``class_logits [1, A, C]``;
* carries the keras-fpn metadata (labels, input size and normalization, output
  kind, box coder, NMS settings, the resolved config, the anchors for raw
  models) appended by ``fpn_edge.metadata.write_metadata``;
* is written atomically (temporary file + rename): a failed export leaves any
  earlier file in place.

Conversion goes through a SavedModel of one ``tf.function`` (batch-1 input
signature) whose module tracks the model's variables directly. That is what
``TFLiteConverter.from_keras_model`` does too, minus Keras' own SavedModel
serialization of every layer (5-8x slower on these models); the variables are
frozen by the converter, and the post-process stub survives (its
``experimental_implements`` function is kept as one call).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

logger = logging.getLogger("fpn_export")

MODES = ("fp32", "fp16", "dynamic", "int8", "int16x8", "qat-int8", "edgetpu")
#: modes that need a representative dataset
CALIBRATED_MODES = ("int8", "int16x8", "edgetpu")
INT8_IO = ("uint8", "int8", "float32")

__all__ = ["MODES", "CALIBRATED_MODES", "ExportError", "export_model", "export_detector",
           "convert_keras", "detector_metadata", "detector_anchors", "default_output_path",
           "as_batch1", "representative_from_config", "train_data_from_config", "fix_shared_biases",
           "check_export_args", "check_loads", "graph_to_convert", "write_export"]


class ExportError(RuntimeError):
    """An export failed; the message names the mode, and the op/layer where the converter says."""


# --------------------------------------------------------------------------- helpers

def detector_anchors(model_cfg) -> np.ndarray:
    """``[A, 4]`` anchors of a ``ModelConfig`` (``keras_fpn.ops.anchors.model_anchors``, ``neck`` aware)."""
    from keras_fpn.ops.anchors import model_anchors

    return model_anchors(model_cfg)


def _normalization(model_cfg) -> dict:
    from keras_fpn.models.backbones import NORMALIZATION

    try:
        norm = NORMALIZATION[model_cfg.backbone]
    except KeyError:
        raise ExportError(f"unknown backbone {model_cfg.backbone!r}: no input normalization known") from None
    return {"channel_order": norm["channel_order"], "mean": [float(v) for v in norm["mean"]],
            "std": [float(v) for v in norm["std"]]}


def detector_metadata(config, labels, *, output: str, mode: str, extra: Optional[dict] = None) -> dict:
    """The ``fpn_meta.json`` dict (schema in ``fpn_edge.metadata``) for a keras-fpn export.

    Args:
        config: the resolved ``keras_fpn.config.Config``.
        labels: class names, id order (C entries).
        output: ``"postprocess"`` or ``"raw"``.
        mode: the export mode (recorded under ``export``).
        extra: more keys for the ``export`` section (I/O dtype, pruning, ...).
    """
    from keras_fpn.config import config_to_dict

    m = config.model
    h, w = (int(v) for v in m.image_size)
    return {
        "task": "detection",
        "labels": [str(s) for s in labels],
        "input": {"height": h, "width": w, "normalization": _normalization(m)},
        "output": output,
        "box_coder": {"scale_factors": [float(v) for v in m.box_scale_factors]},
        "nms": {"score_threshold": float(m.score_threshold), "iou_threshold": float(m.iou_threshold),
                "max_detections": int(m.max_detections),
                "max_detections_per_class": int(m.max_detections_per_class)},
        "config": config_to_dict(config),
        "export": {"mode": mode, **(extra or {})},
    }


def default_output_path(run_dir, mode: str, raw: bool = False, prune: Optional[float] = None) -> Path:
    """``RUN/model_<mode>[_pruneS][_raw].tflite``."""
    name = f"model_{mode}"
    if prune:
        name += f"_prune{int(round(float(prune) * 100))}"
    if raw:
        name += "_raw"
    return Path(run_dir) / f"{name}.tflite"


def _is_keras3(model) -> bool:
    import keras

    return isinstance(model, keras.Model)


def _namespace(model):
    if _is_keras3(model):
        import keras
        return keras
    import tf_keras
    return tf_keras


def as_batch1(model):
    """``model`` itself when its input batch is 1, else a wrapper model with a batch-1 input.

    The wrapper calls the model on ``Input(batch_size=1)``: output shapes get a
    static batch, so Reshape needs no SHAPE/PACK ops and the post-process layer
    accepts the outputs.
    """
    shape = tuple(model.inputs[0].shape)
    if shape[0] == 1:
        return model
    if len(model.inputs) != 1:
        raise ExportError(f"model {model.name!r} must have one image input, has {len(model.inputs)}")
    ns = _namespace(model)
    inp = ns.Input(shape[1:], batch_size=1, name="image")
    return ns.Model(inp, model(inp), name=model.name)


def _output_names(out, postprocess: bool) -> dict:
    """Name the model's outputs for the serving signature."""
    from fpn_export.postprocess_op import OUTPUT_NAMES

    if isinstance(out, dict):
        return dict(out)
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    if postprocess and len(out) == 4:
        return dict(zip(OUTPUT_NAMES, out))
    if len(out) == 2:
        a, b = out
        # keras_fpn order [box_deltas, class_logits]; the last dim tells them apart unless C == 4
        if a.shape[-1] != 4 and b.shape[-1] == 4:
            a, b = b, a
        return {"box_deltas": a, "class_logits": b}
    return {f"output_{i}": t for i, t in enumerate(out)}


def _tf_variables(model) -> list:
    """The tf.Variables behind a Keras 3 (``.value``) or tf_keras model's variables."""
    out = []
    for v in model.variables:
        inner = getattr(v, "value", None) if _is_keras3(model) else v
        out.append(inner if inner is not None else v)
    return out


def _save_serving_model(model, directory: str, postprocess: bool) -> None:
    """Write a SavedModel with one batch-1 serving function that calls ``model``."""
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape)
    if any(d is None for d in shape[1:]):
        raise ExportError(f"model {model.name!r} needs a static input shape, got {list(shape)}")
    module = tf.Module()
    module.model_variables = _tf_variables(model)   # tracked -> saved -> frozen by the converter

    @tf.function(input_signature=[tf.TensorSpec((1,) + shape[1:], tf.float32, name="image")])
    def serve(image):
        return _output_names(model(image, training=False), postprocess)

    module.serve = serve
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})


def _representative_fn(representative, height: int, width: int, channels: int = 3) -> Callable:
    """Wrap images (callable -> iterable, or iterable/list) as the converter's dataset factory."""
    if representative is None:
        return None
    cached = None
    if not callable(representative):
        cached = list(representative)

    def gen():
        items = cached if cached is not None else representative()
        n = 0
        for x in items:
            x = np.asarray(x, dtype=np.float32)
            if x.ndim == 3:
                x = x[None]
            if x.shape != (1, height, width, channels):
                raise ExportError(f"representative image has shape {list(x.shape)}, expected "
                                  f"[1, {height}, {width}, {channels}] (normalized like the training input)")
            n += 1
            yield [x]
        if n == 0:
            raise ExportError("the representative dataset yielded no images")

    return gen


def _tf_dtype(name: str):
    import tensorflow as tf

    return {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[name]


def _configure(converter, mode: str, *, representative, int8_io: str, quantize_outputs: bool,
               qat: bool) -> None:
    import tensorflow as tf

    converter.allow_custom_ops = True   # TFLite_Detection_PostProcess
    if mode == "fp32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        pass
    elif mode in ("int8", "edgetpu", "qat-int8"):
        if representative is not None:
            converter.representative_dataset = representative
        elif not qat:
            raise ExportError(f"mode {mode!r} needs a representative dataset (calibration images)")
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = _tf_dtype(int8_io)
        if quantize_outputs:
            converter.inference_output_type = _tf_dtype(int8_io)
    elif mode == "int16x8":
        if representative is None:
            raise ExportError("mode 'int16x8' needs a representative dataset (calibration images)")
        converter.representative_dataset = representative
        ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if not quantize_outputs:
            # The post-process custom op has no 16x8 kernel: let it (and the sigmoid before
            # it) fall back to float; the network itself stays 16x8.
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        converter.target_spec.supported_ops = ops
    else:
        raise ExportError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


_QUOTED = re.compile(r'"([^"]+)"')
_OP = re.compile(r"'(tfl?\.[A-Za-z0-9_]+)'")


def _conversion_error(exc: BaseException, mode: str, model, layer_names: Iterable[str]) -> ExportError:
    """An ExportError naming the failing TF/TFLite op and the Keras layer when the message has them."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln] or lines[-3:] or [type(exc).__name__]
    first = errors[0]
    op = next(iter(_OP.findall(first)), None) or next(iter(_OP.findall(text)), None)
    # MLIR locations: loc(fused["Op:", callsite("model/layer/Op@__inference_..."(...))]) error: ...
    locs = [q for q in _QUOTED.findall(first.split("error:")[0]) if "/" in q] or \
        [q for q in _QUOTED.findall(text) if "/" in q]
    layer = None
    names = sorted(set(layer_names), key=len, reverse=True)
    for loc in locs:
        layer = _find_layer(re.split(r"[/@;]", loc), names)
        if layer:
            break
    msg = re.sub(r"^.*?error:\s*", "", first)
    where = []
    if op:
        where.append(f"op {op}")
    if layer:
        where.append(f"layer {layer!r}")
    elif locs:
        where.append(f"node {locs[0]!r}")
    at = f" at {', '.join(where)}" if where else ""
    return ExportError(f"{mode} conversion of model {model.name!r} failed{at}: {msg[:500]}")


def _find_layer(parts, names):
    """The Keras layer named by one of the graph-name ``parts`` (Keras 3 adds ``_1`` when re-called)."""
    for n in names:
        if n in parts:
            return n
    stripped = {re.sub(r"_\d+$", "", p) for p in parts}
    return next((n for n in names if n in stripped), None)


def _layer_names(model) -> list:
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if hasattr(layer, "layers"):
            names.extend(_layer_names(layer))
        inner = getattr(layer, "layer", None)   # tfmot wrappers
        if inner is not None:
            names.append(inner.name)
    return names


@contextlib.contextmanager
def _saved_model_dir(model, postprocess: bool):
    tmp = tempfile.mkdtemp(prefix="fpn_export_")
    try:
        _save_serving_model(model, tmp, postprocess)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_converter(saved_model_dir: str, mode: str, *, representative=None, int8_io: str = "uint8",
                   quantize_outputs: bool = True, qat: bool = False):
    """A configured ``tf.lite.TFLiteConverter`` for ``mode`` (used by ``convert_keras`` and ``fpn_export.debug``)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    _configure(converter, mode, representative=representative, int8_io=int8_io,
               quantize_outputs=quantize_outputs, qat=qat)
    return converter


def convert_keras(model, mode: str, *, representative=None, int8_io: str = "uint8",
                  postprocess: Optional[bool] = None, qat: bool = False,
                  debug_dir: Optional[str] = None, keep_float: int = 0) -> tuple:
    """Convert a Keras 3 or tf_keras model with one image input to TFLite bytes.

    Args:
        model: functional model, input ``[1 or None, H, W, 3]`` normalized image.
        mode: one of ``MODES`` (``qat-int8`` expects a tfmot QAT model).
        representative: calibration images (callable returning an iterable of
            ``[1, H, W, 3]`` float32, or an iterable); required for
            ``CALIBRATED_MODES``.
        int8_io: input dtype of integer models (``uint8`` | ``int8`` | ``float32``);
            raw models' outputs too. Post-process outputs stay float32.
        postprocess: the model ends in the post-process layer (default: guessed
            from its 4 outputs).
        qat: the model is a tfmot QAT model (no calibration needed).
        debug_dir: with a calibrated mode, run the QuantizationDebugger and
            write its per-layer statistics there (``fpn_export.debug``).
        keep_float: with ``debug_dir``, keep this many worst layers in float.

    Returns:
        ``(tflite bytes, info dict)``; info holds ``convert_s`` and, with
        ``debug_dir``, the debugger's results.
    """
    if mode not in MODES:
        raise ExportError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if int8_io not in INT8_IO:
        raise ExportError(f"int8_io must be one of {INT8_IO}, got {int8_io!r}")
    model = as_batch1(model)
    _, height, width, channels = (int(d) if d is not None else None for d in model.inputs[0].shape)
    if postprocess is None:
        postprocess = len(model.outputs) == 4
    rep = _representative_fn(representative, height, width, channels)
    info = {}
    t0 = time.perf_counter()
    try:
        with _saved_model_dir(model, postprocess) as sm:
            converter = make_converter(sm, mode, representative=rep, int8_io=int8_io,
                                       quantize_outputs=not postprocess, qat=qat)
            if debug_dir is not None:
                if mode not in ("int8", "edgetpu", "int16x8"):
                    raise ExportError(f"--debug needs a calibrated integer mode (int8, edgetpu), not {mode!r}")
                from fpn_export.debug import debug_quantization

                data, info["debug"] = debug_quantization(converter, rep, debug_dir, keep_float=keep_float)
            else:
                data = converter.convert()
    except ExportError:
        raise
    except Exception as exc:  # the converter raises ConverterError/RuntimeError/ValueError
        raise _conversion_error(exc, mode, model, _layer_names(model)) from exc
    info["convert_s"] = time.perf_counter() - t0
    if mode != "fp32":
        data, info["shared_biases_fixed"] = fix_shared_biases(bytes(data))
    if mode in ("int8", "edgetpu", "qat-int8") and not keep_float:
        _check_full_integer(bytes(data), mode, model, _layer_names(model))
    return bytes(data), info


def fix_shared_biases(data: bytes) -> tuple:
    """Give each call of a shared conv its own correctly scaled bias (int16x8 converter bug).

    A quantized conv's bias must have scale ``input_scale * weight_scale``. The
    detection heads are shared across pyramid levels, so one Keras layer becomes
    five CONV_2D ops with different input scales. TF 2.21's int16x8 quantizer
    quantizes the (int64) bias once, with the first op's input scale, and gives
    the same tensor to all five: every other level's bias comes out scaled by
    ``input_scale_k / input_scale_1`` (class logits saturated at the range
    limit; measured relative RMSE 4.0 on the class logits). int8 conversion
    makes one bias per op and is not affected.

    Returns:
        ``(bytes, number of ops given a new bias)``; the input unchanged when no
        op needs it.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    m = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    conv_codes = {i for i, c in enumerate(m.operatorCodes)
                  if max(c.builtinCode, c.deprecatedBuiltinCode) in (
                      schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
                      schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.TRANSPOSE_CONV)}
    int_types = {schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}
    fixed = 0
    for sg in m.subgraphs:
        users = {}
        for op in sg.operators or []:
            if op.opcodeIndex in conv_codes and op.inputs is not None and len(op.inputs) >= 3 and op.inputs[2] >= 0:
                users.setdefault(int(op.inputs[2]), []).append(op)
        for bidx, ops in users.items():
            bias = sg.tensors[bidx]
            q = bias.quantization
            if len(ops) < 2 or bias.type not in int_types or q is None or q.scale is None:
                continue
            buf = m.buffers[bias.buffer]
            if buf.data is None or len(buf.data) == 0:
                continue
            stored = np.frombuffer(bytes(bytearray(buf.data)), dtype=int_types[bias.type]).astype(np.float64)
            s_stored = np.asarray(q.scale, np.float64)
            for op in ops:
                inp, w = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
                if inp.quantization is None or inp.quantization.scale is None or w.quantization is None:
                    continue
                expected = float(np.asarray(inp.quantization.scale)[0]) * np.asarray(w.quantization.scale, np.float64)
                expected = np.broadcast_to(expected, s_stored.shape) if expected.size == 1 else expected
                if np.allclose(expected, s_stored, rtol=1e-6, atol=0):
                    continue
                values = np.round(stored * np.broadcast_to(s_stored, stored.shape) /
                                  np.broadcast_to(expected, stored.shape)).astype(int_types[bias.type])
                new_buf = schema.BufferT()
                new_buf.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
                m.buffers.append(new_buf)
                t = schema.TensorT()
                t.shape, t.type, t.buffer = list(bias.shape), bias.type, len(m.buffers) - 1
                t.name = (bias.name.decode() if isinstance(bias.name, bytes) else str(bias.name)) + f"/requant_{fixed}"
                nq = schema.QuantizationParametersT()
                nq.scale = [float(v) for v in np.asarray(expected).reshape(-1)]
                nq.zeroPoint = [0] * len(nq.scale)
                nq.quantizedDimension = q.quantizedDimension
                t.quantization = nq
                sg.tensors.append(t)
                op.inputs[2] = len(sg.tensors) - 1
                fixed += 1
    if not fixed:
        return data, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m)), fixed


_FLOAT_OK = ("QUANTIZE", "DEQUANTIZE", "TFLite_Detection_PostProcess")


def _check_full_integer(data: bytes, mode: str, model, layer_names) -> None:
    """Raise when an integer export kept float ops inside the network.

    With ``TFLITE_BUILTINS_INT8`` the TF 2.21 converter does not fail on an op
    without an int8 kernel: it wraps it in DEQUANTIZE/QUANTIZE and leaves it
    float (seen with SIN). The only float ops allowed are the I/O
    QUANTIZE/DEQUANTIZE and the post-process op.
    """
    from fpn_export.edgetpu import read_graph

    names = sorted(set(layer_names), key=len, reverse=True)
    for op in read_graph(data).ops:
        if op.name in _FLOAT_OK:
            continue
        bad = [t for t in op.outputs if t.dtype in ("FLOAT32", "FLOAT16")]
        if not bad:
            continue
        if op.name == "LOGISTIC" and all("detection_postprocess" in t.name for t in bad):
            continue  # the sigmoid of the post-process layer may stay float in front of the op
        t = bad[0]

        def layer_of(name):
            return _find_layer(re.split(r"[/;:]", name), names)

        layer = layer_of(t.name)
        if layer:
            where = f"layer {layer!r}, "
        else:
            prev = next((layer_of(i.name) for i in op.inputs if layer_of(i.name)), None)
            where = f"after layer {prev!r}, " if prev else ""
        raise ExportError(f"{mode} conversion of model {model.name!r} left op {op.name} in float "
                          f"({where}tensor {t.name!r}): no integer kernel for it; replace the layer "
                          f"or export with --mode dynamic/fp16")


# --------------------------------------------------------------------------- shared by every export

def _resolve_mode_io(mode: str, int8_io: str) -> str:
    if mode == "edgetpu":
        return "uint8" if int8_io == "float32" else int8_io
    return int8_io


def check_export_args(mode: str, config, labels, *, via: str, representative) -> None:
    """The argument checks every export (detector or segmenter) makes before any work."""
    if mode not in MODES:
        raise ExportError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if via not in ("tf_keras", "keras"):
        raise ExportError(f"via must be 'tf_keras' or 'keras', got {via!r}")
    if len(labels) != config.model.num_classes:
        raise ExportError(f"{len(labels)} labels but model.num_classes is {config.model.num_classes}")
    if mode in CALIBRATED_MODES and representative is None:
        raise ExportError(f"mode {mode!r} needs representative images (ExportConfig.representative_images)")


def graph_to_convert(model, config, *, via: str = "tf_keras", quantize: bool = False,
                     prune: Optional[float] = None, train_data=None, representative=None,
                     losses=None) -> tuple:
    """The batch-1 graph an export converts: the tf_keras twin, fine-tuned with tfmot for QAT / pruning.

    With ``via="tf_keras"`` a Keras 3 model is replaced by its tf_keras twin
    (``keras_fpn.models.twin.build_twin``: same builder, the trained weights).
    QAT and pruning (``fpn_export.qat.optimize_twin``) need the twin with a
    free batch dimension (``fit``), so it is built unbatched then, and a
    batched tf_keras model is rebuilt unbatched; the representative images
    initialize the QAT activation ranges.

    Args:
        model: the trained Keras 3 model (detector or segmenter) or its tf_keras twin.
        config: the resolved ``Config`` the model was built from.
        via: ``"tf_keras"`` or ``"keras"`` (convert the Keras 3 model as it is;
            no QAT / pruning then).
        quantize: quantization-aware fine-tuning (``qat-int8``).
        prune: target sparsity, or None.
        train_data: ``tf.data.Dataset`` of the task's training batches, or a
            callable returning one (called only when fine-tuning).
        representative: calibration images (as ``convert_keras``), or None.
        losses: ``(losses, loss_weights)`` for the fine-tuning ``compile``
            (default: the detection losses, see ``optimize_twin``).

    Returns:
        ``(model with a batch-1 input, its namespace (keras or tf_keras),
        metadata dict: "via" + the fine-tuning info)``.
    """
    import tf_keras

    training = quantize or prune is not None
    what = " and ".join(n for n, on in (("qat-int8", quantize), ("--prune", prune is not None)) if on)
    if training and via != "tf_keras":
        raise ExportError(f"{what}: only on the tf_keras twin (tfmot rejects Keras 3 models)")
    ns = _namespace(model)
    if (via == "tf_keras" and ns is not tf_keras) or (training and model.inputs[0].shape[0] is not None):
        from keras_fpn.models.twin import build_twin

        model = build_twin(config.model, model, batch_size=None if training else 1)
        ns = tf_keras
    extra = {"via": "tf_keras" if ns is tf_keras else "keras"}
    if training:
        from fpn_export.qat import optimize_twin

        if train_data is None:
            raise ExportError(f"{what} needs training data (data.train in the run's config)")
        data = train_data() if callable(train_data) else train_data
        calib = _representative_fn(representative, *config.model.image_size) if representative is not None else None
        model, train_info = optimize_twin(
            model, data, config=config, quantize=quantize, prune=prune, losses=losses,
            calibration=(lambda: (x[0] for x in calib())) if calib is not None else None)
        extra.update(train_info)
    return as_batch1(model), ns, extra


def check_loads(data: bytes, out) -> None:
    """Fail at export time, before anything is written, when the converted model cannot run
    (called right after ``convert_keras``; the ``edgetpu`` mode's file is still a CPU int8 model
    here, ``edgetpu_compiler`` runs later).

    The converter can emit files the interpreter refuses at ``allocate_tensors`` — seen: an
    int16x8 ``ssd_mobilenetv2_fpnlite`` after 25 training steps, whose CONV_2D scales trip
    ``no_integer_overflow_from_quantization``. Raises ``ExportError`` naming ``out``.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_content=data).allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{out}: the converted model does not load in the TFLite interpreter ({first}); "
                          "nothing was written") from exc


def write_export(data: bytes, meta: dict, out, *, anchors=None, report: bool = False,
                 started: Optional[float] = None) -> Path:
    """Attach the metadata and write ``out`` atomically; the Edge TPU op report beside it when asked.

    ``report`` (always for mode ``edgetpu``) writes ``<stem>_edgetpu_report``;
    ``started`` (a ``time.perf_counter()`` value) only times the log line.
    """
    from fpn_edge.metadata import write_metadata

    out = Path(out)
    mode = meta["export"]["mode"]
    try:
        path = write_metadata(data, meta, anchors, out)
    except Exception as exc:
        raise ExportError(f"{out}: writing the model failed ({exc})") from exc
    if report or mode == "edgetpu":
        from fpn_export.edgetpu import check_edgetpu

        rep = check_edgetpu(path)
        rep.write(out.with_name(out.stem + "_edgetpu_report"))
        logger.info("%s", rep.to_text())
    took = f", {time.perf_counter() - started:.1f} s" if started is not None else ""
    logger.info("exported %s (%s%s, %d bytes)", path, mode, took, path.stat().st_size)
    return path


# --------------------------------------------------------------------------- detector export


def export_detector(model, config, labels, mode: str, *, out, raw: bool = False,
                    representative=None, train_data=None, prune: Optional[float] = None,
                    report: bool = False, debug: bool = False, keep_float: int = 0,
                    via: str = "tf_keras", use_regular_nms: bool = True) -> Path:
    """Export a detector model (no run directory needed): convert, attach metadata, write atomically.

    Args:
        model: the trained Keras 3 detector (``keras_fpn.models.detector.build_detector``;
            any batch size), or its tf_keras twin.
        config: the resolved ``keras_fpn.config.Config`` the model was built from.
        labels: class names (``config.model.num_classes`` of them).
        mode: one of ``MODES``.
        out: output .tflite path.
        raw: export ``box_deltas``/``class_logits`` instead of the post-process op.
        representative: calibration images for ``CALIBRATED_MODES`` (callable
            returning an iterable of ``[1, H, W, 3]`` float32 normalized images,
            or an iterable; ``representative_from_config`` makes one).
        train_data: ``tf.data.Dataset`` of ``(images, targets)`` batches (the
            training pipeline) for ``qat-int8`` and ``prune``; or a callable
            returning one. For ``qat-int8``, ``representative`` (optional)
            initializes the QAT activation ranges.
        prune: target sparsity in (0, 1): prune the twin with tfmot while
            fine-tuning (``fpn_export.qat``), then export in ``mode``.
        report: write the Edge TPU op report beside the model (always for ``edgetpu``).
        debug: run the QuantizationDebugger (integer modes) and write its
            per-layer statistics beside the model.
        keep_float: with ``debug``, keep the N layers with the largest
            quantization error in float (denylisted nodes).
        via: ``"tf_keras"`` (default: convert the tf_keras twin, which lowers
            UpSampling2D to RESIZE_NEAREST_NEIGHBOR) or ``"keras"`` (convert
            the Keras 3 model as is; TILE-based upsampling).
        use_regular_nms: per-class NMS in the post-process op (see ``postprocess_op``).

    Returns:
        The written path.

    Raises:
        ExportError: a clear one-line reason (bad arguments, missing data, the
            failing op/layer of a conversion).
    """
    from fpn_export.postprocess_op import attach_postprocess, patch_postprocess_options

    check_export_args(mode, config, labels, via=via, representative=representative)
    mcfg = config.model
    if prune is not None and not 0.0 < float(prune) < 1.0:
        raise ExportError(f"--prune sparsity must be in (0, 1), got {prune}")
    if keep_float and not debug:
        raise ExportError("keep_float needs debug=True (the debugger picks the layers)")
    if keep_float and mode == "edgetpu":
        raise ExportError("keep_float makes a partly float model; the Edge TPU needs full integer")
    qat_mode = mode == "qat-int8"
    out = Path(out)
    int8_io = _resolve_mode_io(mode, config.export.int8_io)
    anchors = detector_anchors(mcfg)
    t0 = time.perf_counter()

    # 1. The graph to convert: the tf_keras twin (RESIZE_NEAREST_NEIGHBOR upsampling), batch 1.
    model, ns, extra = graph_to_convert(model, config, via=via, quantize=qat_mode, prune=prune,
                                        train_data=train_data, representative=representative)
    if not raw:
        model = attach_postprocess(model, anchors, num_classes=mcfg.num_classes,
                                   scale_factors=mcfg.box_scale_factors,
                                   score_threshold=mcfg.score_threshold,
                                   iou_threshold=mcfg.iou_threshold,
                                   max_detections=mcfg.max_detections,
                                   max_detections_per_class=mcfg.max_detections_per_class,
                                   use_regular_nms=use_regular_nms, ns=ns)

    # 2. Convert (optionally through the quantization debugger).
    debug_dir = None
    if debug:
        debug_dir = out.with_name(out.stem + "_debug")
    if mode in ("fp32", "fp16", "dynamic"):
        io = "float32"
    elif mode == "int16x8":
        io = "float32"
    else:
        io = int8_io
    data, info = convert_keras(model, mode, representative=representative, int8_io=io,
                               postprocess=not raw, qat=qat_mode,
                               debug_dir=None if debug_dir is None else str(debug_dir),
                               keep_float=keep_float)
    check_loads(data, out)
    if not raw:
        # The converter drops detections_per_class (the kernel then caps every class at 100)
        # and writes the stub's threshold as it is: write the op's full option set back.
        data = bytes(patch_postprocess_options(data, model))
    extra.update({"io_dtype": io if mode in ("int8", "edgetpu", "qat-int8") and not keep_float else "float32",
                  "postprocess_output_dtype": None if raw else "float32",
                  "prune": prune, "keep_float": keep_float or 0})
    if info.get("debug"):
        extra["debug"] = {k: v for k, v in info["debug"].items() if k in ("csv", "json", "kept_float")}

    # 3. Metadata + atomic write.
    meta = detector_metadata(config, labels, output="raw" if raw else "postprocess", mode=mode, extra=extra)
    if raw:
        meta["output_tensors"] = _raw_output_tensors(data)
    return write_export(data, meta, out, anchors=anchors if raw else None, report=report, started=t0)


def _raw_output_tensors(data: bytes) -> dict:
    """``{"box_deltas": tensor name, "class_logits": tensor name}`` from the serving signature."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover
        from tensorflow.lite import Interpreter
    interp = Interpreter(model_content=data)
    runner = interp.get_signature_runner("serving_default")
    details = runner.get_output_details()
    names = {d["index"]: d["name"] for d in interp.get_output_details()}
    return {k: names[details[k]["index"]] for k in ("box_deltas", "class_logits") if k in details}


# --------------------------------------------------------------------------- from a run dir

def representative_from_config(config, labels=None, n: Optional[int] = None, seed: int = 0) -> Callable:
    """A factory of ``n`` (default ``export.representative_images``) calibration images from ``data.train``.

    Images go through ``keras_fpn.data.pipeline.representative_images``, the
    evaluation/inference preprocessing of the training pipeline (letterbox +
    the backbone's normalization).
    """
    from keras_fpn.data.pipeline import representative_images
    from keras_fpn.data.splits import load_split

    if not config.data.train:
        raise ExportError("calibration needs training images: the config has no data.train")
    n = int(config.export.representative_images if n is None else n)
    if n < 1:
        raise ExportError(f"--representative must be >= 1, got {n}")
    ds = load_split(config.data.train, config.data.train_include, config.data.strict)
    norm = _normalization(config.model)
    images = list(representative_images(ds, n, tuple(config.model.image_size), norm, seed=seed))
    if not images:
        raise ExportError(f"{config.data.train}: no readable calibration image")
    return lambda: iter(images)


def train_data_from_config(config, labels=None, seed: int = 0):
    """The QAT / pruning fine-tuning ``tf.data`` pipeline of a config: training's own pipeline
    (``keras_fpn.training.train.training_pipeline``: augmentation, matcher, by ``model.task``)
    in batches of ``export.qat_batch_size``, without ``data.cache``: fine-tuning reads a few
    hundred examples once, and a cache would first prepare the whole set to fill the shuffle.
    In order (``deterministic``): the same run gives the same QAT model (unordered, two demo
    runs gave QAT int8 99.7 % and 99.5 % of float AP)."""
    import dataclasses

    from keras_fpn.data.splits import load_split
    from keras_fpn.training.train import training_pipeline

    if not config.data.train:
        raise ExportError("qat-int8 / --prune need training data: the config has no data.train")
    ds = load_split(config.data.train, config.data.train_include, config.data.strict)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, cache=False))
    return training_pipeline(config, ds, training=True, batch_size=config.export.qat_batch_size, seed=seed,
                             deterministic=True)


def export_model(run_or_model, mode: str, *, out=None, raw: bool = False, prune: Optional[float] = None,
                 representative=None, report: bool = False, debug: bool = False, keep_float: int = 0,
                 which: str = "best", config=None, labels=None, train_data=None,
                 via: str = "tf_keras") -> Path:
    """Export a trained detector: the one entry point keyed by ``mode``.

    Args:
        run_or_model: a run directory (path or ``keras_fpn.rundir.Run``), or a
            Keras model (then ``config`` and ``labels`` are required).
        mode: one of ``MODES``.
        out: output path (default ``RUN/model_<mode>[_pruneNN][_raw].tflite``).
        raw: raw outputs instead of the post-process op.
        prune: target sparsity (tfmot magnitude pruning + fine-tuning), combinable with any mode.
        representative: number of calibration images (default
            ``export.representative_images``), or the images themselves (see
            ``export_detector``).
        report: write the Edge TPU op report (always for ``edgetpu``).
        debug: per-layer quantization error statistics (QuantizationDebugger).
        keep_float: with ``debug``, keep the N worst layers float.
        which: checkpoint of the run (``best`` | ``last``).
        config, labels: for a model argument.
        train_data: fine-tuning data override (default: the run's training pipeline).
        via: ``tf_keras`` (default) or ``keras`` (see ``export_detector``).

    Returns:
        The path of the written .tflite.
    """
    from keras_fpn.rundir import Run, open_run

    run_dir = None
    if isinstance(run_or_model, (str, os.PathLike, Run)):
        run = run_or_model if isinstance(run_or_model, Run) else open_run(run_or_model)
        config = config or run.config
        labels = labels or run.labels
        run_dir = run.path
        model = run.build_model(which=which, batch_size=1)
    else:
        model = run_or_model
        if config is None or labels is None:
            raise ExportError("export_model(model, ...) needs config= and labels=")
    if out is None:
        if run_dir is None:
            raise ExportError("export_model(model, ...) needs out=")
        out = default_output_path(run_dir, mode, raw, prune)
    if mode in CALIBRATED_MODES or mode == "qat-int8":
        if representative is None or isinstance(representative, int):
            representative = representative_from_config(config, labels, n=representative)
    elif isinstance(representative, int):
        representative = None   # fp32 / fp16 / dynamic use no calibration images
    if config.model.task == "segmentation":  # segmenters: fpn_export.segmentation (issue 12)
        from fpn_export.segmentation import export_segmenter

        return export_segmenter(model, config, labels, mode, out=out, representative=representative,
                                train_data=train_data, report=report, via=via, raw=raw, prune=prune,
                                debug=debug or bool(keep_float))
    if (mode == "qat-int8" or prune is not None) and train_data is None:
        train_data = lambda: train_data_from_config(config, labels)  # noqa: E731
    return export_detector(model, config, labels, mode, out=out, raw=raw,
                           representative=representative, train_data=train_data, prune=prune,
                           report=report, debug=debug, keep_float=keep_float, via=via)
