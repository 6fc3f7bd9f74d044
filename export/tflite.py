"""The task-independent Keras -> .tflite chain: convert, check, attach metadata, write.

``convert_keras`` converts a Keras 3 or tf_keras model with one image input:

* through a SavedModel of one ``tf.function`` (batch-1 input signature) whose
  module tracks the model's variables directly. That is what
  ``TFLiteConverter.from_keras_model`` does too, minus Keras' own SavedModel
  serialization of every layer (5-8x slower on these models); the variables
  are frozen by the converter, and a function with ``experimental_implements``
  (the post-process stub of ``fpn_export.postprocess_op``) survives as one call;
* with the converter set from the mode's row of ``fpn_export.modes.MODES``
  (``configure_converter``);
* turning a converter failure into an ``ExportError`` that names the op and
  the Keras layer (``conversion_error``), and refusing a full-integer model
  that kept an op in float inside the network.

``check_loads`` then proves the bytes load in the TFLite interpreter, and
``write_export`` adds the standard TFLite metadata (``fpn_export.interop``),
appends the keras-fpn metadata (``fpn_edge.metadata``) and
writes the file atomically (temporary file + rename: a failed export leaves
any earlier file in place). The task exporters (``fpn_export.detection``,
``fpn_export.segmentation``) run these steps in that order.
"""
from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from fpn_export.errors import ExportError
from fpn_export.modes import INT8_IO, calibrated_names, get_mode

logger = logging.getLogger("fpn_export")

__all__ = ["input_normalization", "export_metadata", "keras_namespace", "as_batch1", "representative_dataset",
           "configure_converter", "make_converter", "conversion_error", "convert_keras", "check_loads",
           "write_export", "check_export_args"]


def input_normalization(model_cfg) -> dict:
    """The backbone's input normalization (``channel_order``, ``mean``, ``std``) of a ``ModelConfig``."""
    from keras_fpn.models.backbones import NORMALIZATION

    try:
        norm = NORMALIZATION[model_cfg.backbone.name]
    except KeyError:
        raise ExportError(f"unknown backbone {model_cfg.backbone.name!r}: no input normalization known") from None
    return {"channel_order": norm["channel_order"], "mean": [float(v) for v in norm["mean"]],
            "std": [float(v) for v in norm["std"]]}


def export_metadata(config, *, task: str, labels, output: str, mode: str, extra: Optional[dict] = None,
                    **sections) -> dict:
    """The ``fpn_meta.json`` dict (schema in ``fpn_edge.metadata``): the keys every export has, plus
    the task's ``sections`` (``box_coder``, ``nms``, ``segmentation``, ...).

    ``extra`` holds more keys for the ``export`` section (I/O dtype, fine-tuning info, ...).
    """
    from keras_fpn.config import config_to_dict

    h, w = (int(v) for v in config.model.image_size)
    return {"task": task, "labels": [str(s) for s in labels],
            "input": {"height": h, "width": w, "normalization": input_normalization(config.model),
                      "resize": config.model.resize},
            "output": output, **sections, "config": config_to_dict(config),
            "export": {"mode": mode, **(extra or {})}}


def _is_keras3(model) -> bool:
    import keras

    return isinstance(model, keras.Model)


def keras_namespace(model):
    """The module ``model`` was built with: ``keras`` (Keras 3) or ``tf_keras``."""
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
    ns = keras_namespace(model)
    inp = ns.Input(shape[1:], batch_size=1, name="image")
    return ns.Model(inp, model(inp), name=model.name)


def _default_output_names(out) -> dict:
    """A dict of outputs as it is; a list as ``output_0``, ``output_1``, ..."""
    if isinstance(out, dict):
        return dict(out)
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    return {f"output_{i}": t for i, t in enumerate(out)}


def _tf_variables(model) -> list:
    """The tf.Variables behind a Keras 3 (``.value``) or tf_keras model's variables."""
    out = []
    for v in model.variables:
        inner = getattr(v, "value", None) if _is_keras3(model) else v
        out.append(inner if inner is not None else v)
    return out


@contextlib.contextmanager
def _saved_model_dir(model, name_outputs: Callable):
    """A temporary SavedModel with one batch-1 serving function that calls ``model``."""
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape)
    if any(d is None for d in shape[1:]):
        raise ExportError(f"model {model.name!r} needs a static input shape, got {list(shape)}")
    module = tf.Module()
    module.model_variables = _tf_variables(model)   # tracked -> saved -> frozen by the converter

    @tf.function(input_signature=[tf.TensorSpec((1,) + shape[1:], tf.float32, name="image")])
    def serve(image):
        return name_outputs(model(image, training=False))

    module.serve = serve
    tmp = tempfile.mkdtemp(prefix="fpn_export_")
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def representative_dataset(representative, height: int, width: int, channels: int = 3) -> Optional[Callable]:
    """Wrap images (callable -> iterable, or iterable/list) as the converter's dataset factory.

    The factory yields ``[x]`` with ``x`` float32 ``[1, height, width, channels]``
    (normalized like the training input); ``None`` stays ``None``.
    """
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


def configure_converter(converter, mode, *, representative=None, int8_io: str = "uint8",
                        float_outputs: bool = False) -> None:
    """Set a ``tf.lite.TFLiteConverter`` for ``mode`` (a name or ``ExportMode``) from the mode table.

    ``representative``: the dataset factory (``representative_dataset``);
    ``int8_io``: input dtype of a full-integer model, its outputs too unless
    ``float_outputs`` (the model ends in float-only ops, e.g. the post-process).
    """
    import tensorflow as tf

    m = get_mode(mode)
    converter.allow_custom_ops = True   # TFLite_Detection_PostProcess
    if m.calibrated and representative is None:
        raise ExportError(f"mode {m.name!r} needs a representative dataset (calibration images)")
    if m.optimizations:
        converter.optimizations = [getattr(tf.lite.Optimize, o) for o in m.optimizations]
    if m.supported_types:
        converter.target_spec.supported_types = [tf.as_dtype(t) for t in m.supported_types]
    if representative is not None and m.uses_representative:
        converter.representative_dataset = representative
    ops = list(m.ops_sets) + (list(m.float_tail_ops_sets) if float_outputs else [])
    if ops:
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, o) for o in ops]
    if m.full_integer:
        dtype = tf.as_dtype(int8_io)
        converter.inference_input_type = dtype
        if not float_outputs:
            converter.inference_output_type = dtype


def make_converter(saved_model_dir: str, mode, *, representative=None, int8_io: str = "uint8",
                   float_outputs: bool = False):
    """A ``tf.lite.TFLiteConverter`` of a SavedModel, configured for ``mode`` (``configure_converter``)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    configure_converter(converter, mode, representative=representative, int8_io=int8_io,
                        float_outputs=float_outputs)
    return converter


_QUOTED = re.compile(r'"([^"]+)"')
_OP = re.compile(r"'(tfl?\.[A-Za-z0-9_]+)'")


def _find_layer(parts, names):
    """The Keras layer named by one of the graph-name ``parts`` (Keras 3 adds ``_1`` when re-called)."""
    for n in names:
        if n in parts:
            return n
    stripped = {re.sub(r"_\d+$", "", p) for p in parts}
    return next((n for n in names if n in stripped), None)


def _layer_names(model) -> list:
    """Every layer name of ``model``, longest first (nested models and tfmot wrappers included)."""
    def walk(m):
        for layer in m.layers:
            yield layer.name
            if hasattr(layer, "layers"):
                yield from walk(layer)
            inner = getattr(layer, "layer", None)   # tfmot wrappers
            if inner is not None:
                yield inner.name
    return sorted(set(walk(model)), key=len, reverse=True)


def conversion_error(exc: BaseException, mode: str, model, layer_names: Iterable[str]) -> ExportError:
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


def _check_full_integer(data: bytes, mode: str, model, names) -> None:
    """Raise when a full-integer export kept float ops inside the network.

    With ``TFLITE_BUILTINS_INT8`` the TF 2.21 converter does not fail on an op
    without an int8 kernel: it wraps it in DEQUANTIZE/QUANTIZE and leaves it
    float (seen with SIN). The only float ops allowed are the I/O
    QUANTIZE/DEQUANTIZE, the post-process ops (``fpn_export.postprocess_op``)
    with the sigmoid in front of them, and the merge's float model outputs.
    """
    from fpn_export.flatbuffer import read_graph
    from fpn_export.postprocess_op import LAYER_NAME, OP_NAME

    graph = read_graph(data)
    after_postprocess = False
    outputs = {t.index for t in graph.outputs}
    for op in graph.ops:
        after_postprocess = after_postprocess or op.name == OP_NAME
        if op.name in ("QUANTIZE", "DEQUANTIZE", OP_NAME):
            continue
        bad = [t for t in op.outputs if t.dtype in ("FLOAT32", "FLOAT16")]
        if after_postprocess and all(t.index in outputs for t in bad):
            continue   # the float outputs of the post-process ops' merge (fpn_export.postprocess_op)
        if not bad:
            continue
        if op.name == "LOGISTIC" and all(LAYER_NAME in t.name for t in bad):
            continue
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


def convert_keras(model, mode: str, *, representative=None, int8_io: str = "uint8",
                  float_outputs: bool = False, name_outputs: Optional[Callable] = None,
                  debug_dir: Optional[str] = None, keep_float: int = 0) -> tuple:
    """Convert a Keras 3 or tf_keras model with one image input to TFLite bytes.

    Args:
        model: functional model, input ``[1 or None, H, W, 3]`` normalized image.
        mode: a name of ``fpn_export.modes.MODES`` (``qat-int8`` expects a tfmot QAT model).
        representative: calibration images (callable returning an iterable of
            ``[1, H, W, 3]`` float32, or an iterable); required for calibrated modes.
        int8_io: input dtype of full-integer models (``uint8`` | ``int8`` | ``float32``);
            their outputs too unless ``float_outputs``.
        float_outputs: the model ends in ops that stay float (the post-process op).
        name_outputs: ``outputs -> {signature name: tensor}`` for the serving
            signature (default: a dict as it is, a list as ``output_<i>``).
        debug_dir: with a calibrated mode, run the QuantizationDebugger and
            write its per-layer statistics there (``fpn_export.debug``).
        keep_float: with ``debug_dir``, keep this many worst layers in float.

    Returns:
        ``(tflite bytes, info dict)``; info holds ``convert_s`` and, with
        ``debug_dir``, the debugger's results.
    """
    from fpn_export.shared_bias import fix_shared_biases

    m = get_mode(mode)
    if int8_io not in INT8_IO:
        raise ExportError(f"int8_io must be one of {INT8_IO}, got {int8_io!r}")
    if debug_dir is not None and not m.calibrated:
        raise ExportError(f"--debug needs a calibrated mode ({calibrated_names()}), not {m.name!r}")
    model = as_batch1(model)
    _, height, width, channels = (int(d) if d is not None else None for d in model.inputs[0].shape)
    rep = representative_dataset(representative, height, width, channels)
    info = {}
    t0 = time.perf_counter()
    try:
        with _saved_model_dir(model, name_outputs or _default_output_names) as sm:
            converter = make_converter(sm, m, representative=rep, int8_io=int8_io, float_outputs=float_outputs)
            if debug_dir is not None:
                from fpn_export.debug import debug_quantization

                data, info["debug"] = debug_quantization(converter, rep, debug_dir, keep_float=keep_float)
            else:
                data = converter.convert()
    except ExportError:
        raise
    except Exception as exc:  # the converter raises ConverterError/RuntimeError/ValueError
        raise conversion_error(exc, m.name, model, _layer_names(model)) from exc
    info["convert_s"] = time.perf_counter() - t0
    if m.optimizations:
        data, info["shared_biases_fixed"] = fix_shared_biases(bytes(data))
    if m.full_integer and not keep_float:
        _check_full_integer(bytes(data), m.name, model, _layer_names(model))
    return bytes(data), info


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

    Two kinds of metadata: the standard TFLite Model Metadata inside the flatbuffer
    (``fpn_export.interop``, for MediaPipe / the Task Library) and the keras-fpn
    archive appended to it (``fpn_edge.metadata``), whose ``labels.txt`` is the standard one's
    associated file.

    ``report`` (always for an Edge TPU mode) writes ``<stem>_edgetpu_report``;
    ``started`` (a ``time.perf_counter()`` value) only times the log line.
    """
    from fpn_edge.metadata import write_metadata
    from fpn_export.interop import attach_standard_metadata
    from keras_fpn import __version__

    out = Path(out)
    mode = meta["export"]["mode"]
    data = attach_standard_metadata(data, meta, version=__version__)
    try:
        path = write_metadata(data, meta, anchors, out)
    except Exception as exc:
        raise ExportError(f"{out}: writing the model failed ({exc})") from exc
    if report or get_mode(mode).edgetpu:
        from fpn_export.edgetpu import check_edgetpu

        rep = check_edgetpu(path)
        rep.write(out.with_name(out.stem + "_edgetpu_report"))
        logger.info("%s", rep.to_text())
    took = f", {time.perf_counter() - started:.1f} s" if started is not None else ""
    logger.info("exported %s (%s%s, %d bytes)", path, mode, took, path.stat().st_size)
    return path


def check_export_args(mode: str, config, labels, *, via: str, representative) -> None:
    """The argument checks every export (detector or segmenter) makes before any work."""
    m = get_mode(mode)
    if via not in ("tf_keras", "keras"):
        raise ExportError(f"via must be 'tf_keras' or 'keras', got {via!r}")
    if len(labels) != config.model.num_classes:
        raise ExportError(f"{len(labels)} labels but model.num_classes is {config.model.num_classes}")
    if m.calibrated and representative is None:
        raise ExportError(f"mode {m.name!r} needs representative images (ExportConfig.representative_images)")
