"""The export modes: one table (``MODES``) that the exporter, the CLIs and compare all read.

A mode is a frozen ``ExportMode``: what it needs (representative images,
fine-tuning), what it makes (full integer or float I/O, Edge TPU report), and
how the TFLite converter is set for it (``fpn_export.tflite.configure_converter``
applies the ``optimizations`` / ``supported_types`` / ``ops_sets`` fields).
Light on purpose (no TensorFlow import): ``keras-fpn compare`` reads it to
build its ``--help``.
"""
from __future__ import annotations

import dataclasses

from fpn_export.errors import ExportError

__all__ = ["ExportMode", "MODES", "get_mode", "calibrated_names", "mode_help", "INT8_IO"]

#: the values of ``ExportConfig.int8_io``: input (and raw outputs) dtype of full-integer exports
INT8_IO = ("uint8", "int8", "float32")


@dataclasses.dataclass(frozen=True)
class ExportMode:
    """One export mode.

    Attributes:
        name: the ``--mode`` value.
        description: one line for ``--help``.
        calibrated: post-training quantization calibrated on representative
            images; the export refuses to run without them.
        full_integer: int8 weights and activations end to end: the input (and
            raw outputs) take ``export.int8_io``, and an op left in float
            inside the network fails the export.
        qat: quantization-aware fine-tuning of the tf_keras twin (tfmot) before
            the conversion; representative images, when given, initialize the
            activation ranges and feed the converter.
        edgetpu: made for the Edge TPU: integer I/O (``uint8`` where
            ``export.int8_io`` is ``float32``), the Edge TPU op report always
            written, no layer kept in float.
        optimizations: ``tf.lite.Optimize`` member names for ``converter.optimizations``.
        supported_types: dtype names for ``converter.target_spec.supported_types``.
        ops_sets: ``tf.lite.OpsSet`` member names for
            ``converter.target_spec.supported_ops`` (empty: the converter's default).
        float_tail_ops_sets: ops sets added when the model's outputs stay float
            (the post-process op and the sigmoid before it have no kernel in
            ``ops_sets``): those ops fall back to float, the network does not.
        budget: the accuracy-budget search of ``fpn_export.budget``: int8 PTQ with the
            most sensitive layers kept float until the AP drop on a calibration-validation
            split of the training data is within ``--max-ap-drop``; each plan it tries is
            an ``int8`` export. Not full integer when a layer stays float.
        one_postprocess_op: keep one ``TFLite_Detection_PostProcess`` op over all classes instead of
            one per 2 classes + the in-graph merge (``fpn_export.postprocess_op``): Coral's
            runtime (tflite_runtime 2.5) cannot load the merge's BITCAST, and the int16x8
            converter asks a calibration range of its int32 SUM / MINIMUM ("Max and min for
            dynamic tensors should be recorded", TF 2.21). Such a model is right only at 1 or
            >= C threads outside fpn-edge.
        cost: relative export cost, larger is slower (distinct values):
            ``keras-fpn compare`` exports the costliest missing mode in a
            second process.
    """
    name: str
    description: str
    calibrated: bool = False
    full_integer: bool = False
    qat: bool = False
    edgetpu: bool = False
    optimizations: tuple = ()
    supported_types: tuple = ()
    ops_sets: tuple = ()
    float_tail_ops_sets: tuple = ()
    budget: bool = False
    one_postprocess_op: bool = False
    cost: int = 1

    @property
    def uses_representative(self) -> bool:
        """Representative images serve this mode (calibration, or QAT range initialization)."""
        return self.calibrated or self.qat

    def io_dtype(self, int8_io: str) -> str:
        """The model input dtype for ``export.int8_io``: float32 unless full integer."""
        if not self.full_integer:
            return "float32"
        if self.edgetpu and int8_io == "float32":
            return "uint8"
        return int8_io


_INT8_OPS = ("TFLITE_BUILTINS_INT8",)

MODES = {m.name: m for m in (
    ExportMode("fp32", "float32 weights and activations", cost=1),
    ExportMode("fp16", "float16 weights (float32 at load), float activations",
               optimizations=("DEFAULT",), supported_types=("float16",), cost=2),
    ExportMode("dynamic", "int8 weights, float activations (dynamic-range quantization)",
               optimizations=("DEFAULT",), cost=3),
    ExportMode("int8", "full integer calibrated on training images, I/O in export.int8_io",
               calibrated=True, full_integer=True, optimizations=("DEFAULT",), ops_sets=_INT8_OPS, cost=4),
    ExportMode("int16x8", "int16 activations and int8 weights calibrated on training images, float32 I/O",
               calibrated=True, optimizations=("DEFAULT",),
               ops_sets=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",),
               float_tail_ops_sets=("TFLITE_BUILTINS",), one_postprocess_op=True, cost=5),
    ExportMode("qat-int8", "quantization-aware fine-tuning (tfmot), then full integer",
               full_integer=True, qat=True, optimizations=("DEFAULT",), ops_sets=_INT8_OPS, cost=7),
    ExportMode("edgetpu", "int8 with integer I/O and the Edge TPU op report",
               calibrated=True, full_integer=True, edgetpu=True, optimizations=("DEFAULT",),
               ops_sets=_INT8_OPS, one_postprocess_op=True, cost=6),
    ExportMode("int8-budget", "int8 with the most sensitive layers kept float until the AP drop on a "
               "calibration-validation split of the training data is within --max-ap-drop (percent)",
               calibrated=True, budget=True, optimizations=("DEFAULT",), ops_sets=_INT8_OPS, cost=8),
)}

#: what ``keras-fpn compare`` and ``keras-fpn demo`` measure unless told otherwise: float, PTQ and QAT int8
COMPARE_DEFAULT = ("fp32", "int8", "qat-int8")


def get_mode(mode) -> ExportMode:
    """The ``ExportMode`` named ``mode`` (or ``mode`` itself); ``ExportError`` for an unknown name."""
    if isinstance(mode, ExportMode):
        return mode
    try:
        return MODES[mode]
    except (KeyError, TypeError):
        raise ExportError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}") from None


def calibrated_names() -> str:
    """``"int8, int16x8, edgetpu"``: the calibrated modes that convert in one go, for messages
    (``int8-budget`` converts several ``int8`` plans and takes no ``--debug``)."""
    return ", ".join(m.name for m in MODES.values() if m.calibrated and not m.budget)


def mode_help() -> str:
    """``--mode`` help: every mode with its description (``name: description; ...``)."""
    return "; ".join(f"{m.name}: {m.description}" for m in MODES.values())
