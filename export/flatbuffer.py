"""The one .tflite flatbuffer reader and writer of ``fpn_export``.

Two views of a model:

* ``read_model`` / ``write_model``: the schema's mutable object tree
  (``ModelT``), for the passes that change a converted model and write it back
  (``fpn_export.shared_bias``, ``fpn_export.postprocess_op``); ``op_name``
  names an operator of it;
* ``read_graph``: a read-only ``Graph`` of the main subgraph (ops in execution
  order with their tensors and the few options the checks need), for the
  full-integer check (``fpn_export.tflite``) and the Edge TPU report
  (``fpn_export.edgetpu``);
* ``set_outputs`` / ``set_metadata``: the edits ``fpn_export.interop`` makes
  on a ``ModelT`` (output order and signature names, a named metadata buffer).

Trailing bytes after the flatbuffer (the keras-fpn metadata archive) are ignored.
"""
from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["schema", "read_model", "write_model", "op_name", "signature_outputs", "set_outputs", "set_metadata", "TensorInfo", "OpInfo", "Graph",
           "read_graph", "op_names", "op_counts"]


def schema():
    """The TFLite flatbuffer schema module (``BuiltinOperator``, ``TensorT``, ``BufferT``, ...)."""
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _load_bytes(model) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return path.read_bytes()


def read_model(model):
    """The ``ModelT`` object tree of a .tflite (path or bytes)."""
    from tensorflow.lite.tools import flatbuffer_utils

    data = _load_bytes(model)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no 'TFL3' identifier)")
    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def write_model(model) -> bytes:
    """The flatbuffer bytes of a ``ModelT`` (from ``read_model``, changed)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def signature_outputs(model) -> dict:
    """``{signature output name: tensor index}`` of the model's one signature (``{}`` when it has none)."""
    sigs = [s for s in (model.signatureDefs or []) if int(s.subgraphIndex or 0) == 0]
    if len(sigs) != 1:
        return {}
    return {_text(t.name): int(t.tensorIndex) for t in (sigs[0].outputs or [])}


def set_outputs(model, tensors: list, names: dict) -> None:
    """Make ``tensors`` (tensor indices, the same set as today's) the main subgraph's outputs in that order, and
    rename the signature outputs (``names``: tensor index -> new name), listed in the new order."""
    sg = model.subgraphs[0]
    if sorted(int(i) for i in sg.outputs) != sorted(tensors):
        raise ValueError(f"set_outputs: {tensors} are not the model outputs {list(sg.outputs)}")
    sg.outputs = np.asarray(tensors, dtype=np.int32)
    for sig in model.signatureDefs or []:
        if int(sig.subgraphIndex or 0) == 0 and sig.outputs:
            for t in sig.outputs:
                t.name = names.get(int(t.tensorIndex), _text(t.name))
            sig.outputs = sorted(sig.outputs, key=lambda t: tensors.index(int(t.tensorIndex)))


def set_metadata(model, name: str, blob: bytes) -> None:
    """Store ``blob`` in a new buffer named ``name`` in ``Model.metadata`` (an entry of that name is replaced)."""
    s = schema()
    buf = s.BufferT()
    buf.data = np.frombuffer(blob, dtype=np.uint8)
    model.buffers.append(buf)
    entry = s.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != name] + [entry]


@functools.lru_cache(maxsize=None)
def _enum_names(cls) -> dict:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _code_name(code) -> tuple:
    """``(name, custom?)`` of an operator code."""
    s = schema()
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    if builtin == s.BuiltinOperator.CUSTOM:
        return _text(code.customCode), True
    return _enum_names(s.BuiltinOperator).get(builtin, f"BUILTIN_{builtin}"), False


def op_name(model, op) -> str:
    """An operator's name: builtin (``CONV_2D``) or custom code (``TFLite_Detection_PostProcess``)."""
    return _code_name(model.operatorCodes[op.opcodeIndex])[0]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the graph."""
    index: int
    name: str
    dtype: str                       # TFLite TensorType name: FLOAT32, INT8, UINT8, INT32, ...
    shape: tuple
    shape_signature: tuple           # -1 marks a dynamic dimension
    constant: bool                   # has data in the flatbuffer (weights, biases, shapes)
    scales: tuple = ()               # quantization scales (per-channel: several)

    @property
    def dynamic(self) -> bool:
        return any(int(d) < 0 for d in self.shape_signature)


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One operator, in execution order."""
    index: int
    name: str                        # builtin name (CONV_2D) or custom code (TFLite_Detection_PostProcess)
    version: int
    custom: bool
    inputs: tuple                    # TensorInfo (optional inputs, index -1, left out)
    outputs: tuple
    options: dict                    # the few builtin options the checks need

    def describe(self) -> str:
        outs = ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in self.outputs)
        return f"#{self.index} {self.name} -> {outs}"


@dataclasses.dataclass(frozen=True)
class Graph:
    """The main subgraph of a .tflite model."""
    ops: tuple
    inputs: tuple                    # TensorInfo
    outputs: tuple
    tensors: tuple


_OPTIONS = (("fusedActivationFunction", "fused_activation"),
            ("dilationHFactor", "dilation_h"), ("dilationWFactor", "dilation_w"),
            ("halfPixelCenters", "half_pixel_centers"), ("alignCorners", "align_corners"),
            ("strideH", "stride_h"), ("strideW", "stride_w"))


def read_graph(model) -> Graph:
    """Parse a .tflite flatbuffer (path or bytes) into ``Graph``."""
    s = schema()
    m = read_model(model)
    if not m.subgraphs:
        raise ValueError("the model has no subgraph")
    sg = m.subgraphs[0]
    type_names = _enum_names(s.TensorType)
    act_names = _enum_names(s.ActivationFunctionType)

    def has_data(buffer_index: int) -> bool:
        if buffer_index <= 0 or buffer_index >= len(m.buffers):
            return False
        buf = m.buffers[buffer_index]
        return buf.data is not None and len(buf.data) > 0   # read_model resolved offset buffers

    tensors = []
    for i, t in enumerate(sg.tensors):
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        sig = tuple(int(d) for d in (t.shapeSignature if t.shapeSignature is not None else shape))
        scales = ()
        if t.quantization is not None and t.quantization.scale is not None:
            scales = tuple(float(v) for v in np.asarray(t.quantization.scale).reshape(-1))
        tensors.append(TensorInfo(i, _text(t.name), type_names.get(t.type, str(t.type)), shape, sig,
                                  has_data(t.buffer), scales))

    ops = []
    for k, op in enumerate(sg.operators or []):
        code = m.operatorCodes[op.opcodeIndex]
        name, custom = _code_name(code)
        options = {}
        opt = op.builtinOptions
        for attr, key in _OPTIONS:
            if opt is not None and hasattr(opt, attr):
                options[key] = getattr(opt, attr)
        if "fused_activation" in options:
            options["fused_activation"] = act_names.get(options["fused_activation"], "?")
        ins = tuple(tensors[i] for i in (op.inputs if op.inputs is not None else ()) if i >= 0)
        outs = tuple(tensors[i] for i in (op.outputs if op.outputs is not None else ()) if i >= 0)
        ops.append(OpInfo(k, name, int(code.version), custom, ins, outs, options))
    g_in = tuple(tensors[i] for i in (sg.inputs if sg.inputs is not None else ()))
    g_out = tuple(tensors[i] for i in (sg.outputs if sg.outputs is not None else ()))
    return Graph(tuple(ops), g_in, g_out, tuple(tensors))


def op_names(model) -> list:
    """Op names of the main subgraph in execution order (builtin names, custom codes)."""
    return [op.name for op in read_graph(model).ops]


def op_counts(model) -> dict:
    """``{op name: count}`` in first-appearance order."""
    return dict(Counter(op_names(model)))
