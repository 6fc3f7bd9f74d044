"""Edge TPU compatibility report: every op of a .tflite graph against the published Edge TPU op list.

The Edge TPU compiler (``edgetpu_compiler``) is an x86-64 Debian package that
cannot be installed here, so this module is what keras-fpn has instead: a
static check of the converted flatbuffer against the supported-operation table
and the model requirements published for compiler v16
(https://coral.ai/docs/edgetpu/models-intro/#supported-operations):

* tensors are 8-bit quantized (int8 or uint8; int32 only for constant biases
  and shape operands), no float or int16 activations;
* tensor sizes are constant at compile time (no dynamic dimensions), and a
  tensor has at most 3 dimensions larger than 1 (batch 1);
* model parameters are constant;
* only the operations of ``SUPPORTED_OPS`` (with their listed limitations).

The compiler makes a single Edge TPU subgraph: the first unsupported operation
on a path, and every operation that depends on it, run on the CPU ("More than
one subgraph is not supported" in the compiler log). ``check_edgetpu`` applies
that rule along the data flow and reports where the graph is *cut*: the
unsupported ops whose inputs all come from the Edge TPU part (or the model
input). For a keras-fpn detector the expected cut is the tail
``[DEQUANTIZE] -> TFLite_Detection_PostProcess`` (the custom op always runs on
the CPU, as in the Coral SSD models), or the final DEQUANTIZEs of a raw model
with float outputs.

The compiler may still refuse an op this check accepts (it also decides on
precision and on-chip memory); ops listed with a ``warning`` are the known
cases. Treat a clean report as necessary, not sufficient, and compile on a
machine with the compiler before shipping.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
from fpn_edge.atomic import write_text_atomic
from fpn_export.flatbuffer import OpInfo, read_graph

__all__ = ["OpVerdict", "EdgeTpuReport", "check_edgetpu", "SUPPORTED_OPS", "COMPILER_NOTE", "CPU_TAIL_OPS"]

COMPILER_NOTE = ("Static check against the published Edge TPU op list (compiler v16 docs); "
                 "the Edge TPU compiler itself cannot be installed in this environment, so the "
                 "model was not compiled. Run `edgetpu_compiler -s MODEL.tflite` on a supported "
                 "x86-64 Debian/Ubuntu machine to confirm.")

#: Edge TPU supported operations (TFLite builtin names) -> published limitation ("" = none).
SUPPORTED_OPS = {
    "ADD": "",
    "AVERAGE_POOL_2D": "No fused activation function.",
    "CONCATENATION": ("No fused activation function. If any input is a compile-time constant "
                      "tensor, there must be only 2 inputs, and this constant tensor must be all "
                      "zeroes (effectively, a zero-padding op)."),
    "CONV_2D": "Must use the same dilation in x and y dimensions.",
    "DEPTHWISE_CONV_2D": "Must use the same dilation in x and y dimensions.",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": ("Only the default format is supported for fully-connected weights. "
                        "Output tensor is one-dimensional."),
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "Unidirectional LSTM only.",
    "MAXIMUM": "",
    "MAX_POOL_2D": "No fused activation function.",
    "MEAN": "No reduction in batch dimension. If a z-reduction, the z-dimension must be multiple of 4.",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "No packing in batch dimension.",
    "PAD": "No padding in batch dimension.",
    "PRELU": "Alpha must be 1-dimensional (only the innermost dimension can be >1 size).",
    "QUANTIZE": "",
    "REDUCE_MAX": "Cannot operate on the batch dimension.",
    "REDUCE_MIN": "Cannot operate on the batch dimension.",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "Certain reshapes might not be mapped for large tensor sizes.",
    "RESIZE_BILINEAR": ("Input/output is a 3-dimensional tensor. Depending on input/output size, "
                        "this operation may not be mapped to the Edge TPU to avoid loss in precision."),
    "RESIZE_NEAREST_NEIGHBOR": ("Input/output is a 3-dimensional tensor. Depending on input/output "
                                "size, this operation may not be mapped to the Edge TPU to avoid "
                                "loss in precision."),
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "Supports only 1-D input tensor with a max of 16,000 elements.",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "No splitting in batch dimension.",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "All strides must be equal to 1; ellipsis-axis-mask and new-axis-mask are not supported.",
    "SUB": "",
    "SUM": "No reduction in batch dimension. If a z-reduction, the z-dimension must be multiple of 4.",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

#: Ops that are expected on the CPU at the end of a keras-fpn detector.
CPU_TAIL_OPS = ("TFLite_Detection_PostProcess", "DEQUANTIZE")

_QUANT_TYPES = ("INT8", "UINT8")
_NO_FUSED_ACTIVATION = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION")


# --------------------------------------------------------------------------- the check

@dataclasses.dataclass(frozen=True)
class OpVerdict:
    """Where one op would run and why."""
    index: int
    op: str
    version: int
    placement: str                   # "edgetpu" | "cpu"
    reasons: tuple                   # why it is on the CPU (empty when mapped)
    warnings: tuple                  # mapped, but the compiler may still refuse it
    limitation: str                  # the published limitation text of the op ("" if none)
    outputs: tuple                   # output tensor descriptions "name DTYPE[shape]"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EdgeTpuReport:
    """Result of ``check_edgetpu``."""
    ops: tuple                       # OpVerdict, execution order
    cut: tuple                       # OpVerdict of the ops where the graph leaves the Edge TPU
    input_dtypes: tuple
    output_dtypes: tuple
    note: str = COMPILER_NOTE

    @property
    def num_edgetpu(self) -> int:
        return sum(v.placement == "edgetpu" for v in self.ops)

    @property
    def num_cpu(self) -> int:
        return sum(v.placement == "cpu" for v in self.ops)

    @property
    def cpu_ops(self) -> list:
        return [v for v in self.ops if v.placement == "cpu"]

    @property
    def clean(self) -> bool:
        """True when every op runs on the Edge TPU except the expected CPU tail (DEQUANTIZE, post-process)."""
        return all(v.op in CPU_TAIL_OPS for v in self.cpu_ops) and self.num_edgetpu > 0

    def to_dict(self) -> dict:
        return {"clean": self.clean, "num_ops": len(self.ops), "num_edgetpu": self.num_edgetpu,
                "num_cpu": self.num_cpu, "input_dtypes": list(self.input_dtypes),
                "output_dtypes": list(self.output_dtypes),
                "cut": [v.to_dict() for v in self.cut],
                "op_counts": {f"{op}/{place}": n for (op, place), n in
                              Counter((v.op, v.placement) for v in self.ops).items()},
                "ops": [v.to_dict() for v in self.ops], "note": self.note}

    def to_text(self) -> str:
        """A Markdown report: summary, cut points, op table, per-op details for CPU ops and warnings."""
        lines = ["# Edge TPU compatibility report", "", f"> {self.note}", "",
                 f"- ops: {len(self.ops)}; on the Edge TPU: {self.num_edgetpu}; on the CPU: {self.num_cpu}",
                 f"- input dtype(s): {', '.join(self.input_dtypes)}; output dtype(s): "
                 f"{', '.join(self.output_dtypes)}",
                 f"- verdict: {'CLEAN (only the expected CPU tail: ' + ', '.join(CPU_TAIL_OPS) + ')' if self.clean else 'NOT CLEAN: part of the network would run on the CPU'}",
                 ""]
        if self.cut:
            lines.append("## Where the graph leaves the Edge TPU")
            lines.append("")
            for v in self.cut:
                lines.append(f"- op #{v.index} {v.op} (v{v.version}): {'; '.join(v.reasons)}; "
                             f"outputs {', '.join(v.outputs)}")
            lines.append("")
        lines += ["## Operators", "", "| op | version | count | placement |", "|---|---|---|---|"]
        counts = Counter((v.op, v.version, v.placement) for v in self.ops)
        for (op, ver, place), n in counts.items():
            lines.append(f"| {op} | {ver} | {n} | {place} |")
        flagged = [v for v in self.ops if v.placement == "cpu" or v.warnings]
        if flagged:
            lines += ["", "## Details", ""]
            for v in flagged:
                msg = "; ".join(v.reasons + tuple(f"warning: {w}" for w in v.warnings))
                lines.append(f"- #{v.index} {v.op} (v{v.version}) [{v.placement}]: {msg}")
        return "\n".join(lines) + "\n"

    def write(self, stem) -> tuple:
        """Write ``STEM.json`` and ``STEM.md`` atomically; return the two paths."""
        stem = Path(stem)
        paths = (stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md"))
        write_text_atomic(paths[0], json.dumps(self.to_dict(), indent=2))
        write_text_atomic(paths[1], self.to_text())
        return paths


def _inner_dims_ok(shape: Iterable[int]) -> bool:
    """At most the 3 innermost dimensions may be larger than 1."""
    shape = list(shape)
    return all(int(d) == 1 for d in shape[:-3])


def _op_problems(op: OpInfo) -> tuple:
    """(reasons it cannot be mapped, warnings) for one op, ignoring its neighbours."""
    reasons, warnings = [], []
    if op.custom:
        if op.name == "TFLite_Detection_PostProcess":
            reasons.append("custom op TFLite_Detection_PostProcess runs on the CPU (expected, last)")
        else:
            reasons.append(f"custom op {op.name} is not an Edge TPU operation")
        return tuple(reasons), tuple(warnings)
    if op.name not in SUPPORTED_OPS:
        reasons.append(f"{op.name} is not in the Edge TPU supported-op list")
    for t in op.inputs + op.outputs:
        if t.constant:
            if t.dtype not in _QUANT_TYPES + ("INT32",):
                reasons.append(f"constant tensor {t.name!r} is {t.dtype} (needs int8/uint8, int32 for biases)")
            continue
        if t.dtype not in _QUANT_TYPES:
            if op.name == "QUANTIZE" and t in op.inputs and t.dtype == "FLOAT32":
                reasons.append(f"QUANTIZE from float input {t.name!r} (float model input; use uint8/int8 I/O)")
            else:
                reasons.append(f"tensor {t.name!r} is {t.dtype} (the Edge TPU runs 8-bit quantized tensors only)")
        if t.dynamic:
            reasons.append(f"tensor {t.name!r} has a dynamic shape {list(t.shape_signature)}")
        if not _inner_dims_ok(t.shape):
            reasons.append(f"tensor {t.name!r} {list(t.shape)}: only the 3 innermost dimensions may exceed 1")
    opts = op.options
    if op.name in _NO_FUSED_ACTIVATION and opts.get("fused_activation", "NONE") != "NONE":
        reasons.append(f"fused activation {opts['fused_activation']} not allowed on {op.name}")
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and opts.get("dilation_h", 1) != opts.get("dilation_w", 1):
        reasons.append(f"dilation {opts.get('dilation_h')}x{opts.get('dilation_w')} differs in y and x")
    if op.name == "CONCATENATION":
        consts = [t for t in op.inputs if t.constant]
        if consts and len(op.inputs) != 2:
            reasons.append("constant concatenation input with more than 2 inputs")
    if op.name in ("RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"):
        warnings.append("the compiler may keep resize ops on the CPU depending on input/output size (precision)")
        if opts.get("half_pixel_centers"):
            warnings.append("half_pixel_centers=True (op version 3): some compiler releases answered "
                            "'Operation version not supported' (google-coral/edgetpu#420)")
    if op.name == "RESHAPE":
        big = max((int(np.prod(t.shape)) for t in op.outputs), default=0)
        if big > 1 << 20:
            warnings.append(f"large reshape ({big} elements) may not be mapped")
    return tuple(dict.fromkeys(reasons)), tuple(warnings)


def check_edgetpu(model) -> EdgeTpuReport:
    """Check every op of ``model`` (path or bytes) against the Edge TPU op list.

    Placement rule (the compiler's single Edge TPU subgraph): an op runs on the
    Edge TPU when it is supported and none of its non-constant inputs is
    produced by an op on the CPU; otherwise on the CPU.

    Returns:
        ``EdgeTpuReport`` (``.clean``, ``.cut``, ``.to_text()``, ``.write(stem)``).
    """
    graph = read_graph(model)
    producer_on_cpu = {}
    verdicts = []
    cut = []
    for op in graph.ops:
        reasons, warnings = _op_problems(op)
        upstream = [t for t in op.inputs if not t.constant and producer_on_cpu.get(t.index)]
        own_problem = bool(reasons)
        if upstream and not own_problem:
            reasons = (f"after the cut: input {upstream[0].name!r} comes from an op on the CPU "
                       "(the compiler makes one Edge TPU subgraph)",)
        placement = "cpu" if reasons else "edgetpu"
        v = OpVerdict(op.index, op.name, op.version, placement, tuple(reasons),
                      warnings if placement == "edgetpu" else (),
                      SUPPORTED_OPS.get(op.name, ""),
                      tuple(f"{t.name} {t.dtype}{list(t.shape)}" for t in op.outputs))
        verdicts.append(v)
        if own_problem and not upstream:
            cut.append(v)
        for t in op.outputs:
            producer_on_cpu[t.index] = placement == "cpu"
    return EdgeTpuReport(tuple(verdicts), tuple(cut), tuple(t.dtype for t in graph.inputs),
                         tuple(t.dtype for t in graph.outputs))
