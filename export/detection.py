"""TFLite export of keras-fpn detectors (``model.task: detection``).

``export_detector`` runs the chain of ``fpn_export.tflite`` on the graph of
``fpn_export.qat.graph_to_convert`` (the tf_keras twin, fine-tuned for
``qat-int8`` / ``--prune``) and adds what is detector-specific:

* unless ``raw=True``, the graph ends in ``TFLite_Detection_PostProcess``
  ops, one per 2 classes, and their merge (``fpn_export.postprocess_op``;
  ``edgetpu`` and ``int16x8``: one op, see ``_classes_per_op``) with float32 outputs boxes ``[1, N, 4]``,
  classes ``[1, N]``, scores ``[1, N]``, num_detections ``[1]`` (float also in
  full-integer modes); its options are written back after the conversion;
* a raw export outputs ``box_deltas [1, A, 4]`` and ``class_logits [1, A, C]``
  (in ``export.int8_io`` for full-integer modes) and carries the anchors and
  the two output tensor names;
* the metadata (``fpn_edge.metadata``) holds the labels, the box coder and the
  NMS settings.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Optional

from fpn_export.errors import ExportError
from fpn_export.modes import get_mode
from fpn_export.qat import graph_to_convert
from fpn_export.tflite import check_export_args, check_loads, convert_keras, export_metadata, write_export

__all__ = ["export_detector", "detector_metadata"]


def detector_metadata(config, labels, *, output: str, mode: str, extra: Optional[dict] = None) -> dict:
    """The ``fpn_meta.json`` dict (schema in ``fpn_edge.metadata``) of a detector export.

    Args:
        config: the resolved ``keras_fpn.config.Config``.
        labels: class names, id order (C entries).
        output: ``"postprocess"`` or ``"raw"``.
        mode: the export mode (recorded under ``export``).
        extra: more keys for the ``export`` section (I/O dtype, pruning, ...).
    """
    m = config.model
    per_op = None if output == "raw" else _classes_per_op(get_mode(mode), config.export)
    return export_metadata(
        config, task="detection", labels=labels, output=output, mode=mode, extra=extra,
        box_coder={"scale_factors": [float(v) for v in m.anchors.box_scale_factors]},
        nms={"score_threshold": float(m.postprocess.score_threshold), "iou_threshold": float(m.postprocess.iou_threshold),
             "max_detections": int(m.postprocess.max_detections), "max_detections_per_class": int(m.postprocess.max_detections_per_class),
             # the same detections at every thread count (fpn_export.postprocess_op); edgetpu, int16x8: one op
             "thread_safe": output == "raw" or int(m.num_classes) <= 2 or (per_op is not None and per_op <= 2)})


def _classes_per_op(mode, export):
    """Classes per post-process op: 2 (right at every thread count, needs TFLite >= 2.13 for its
    BITCAST merge), or one op (None) where the mode needs it (``ExportMode.one_postprocess_op``) or
    ``export.nms_ops`` is ``single``."""
    from fpn_export.postprocess_op import SAFE_CLASSES_PER_OP

    return None if mode.one_postprocess_op or export.nms_ops == "single" else SAFE_CLASSES_PER_OP


def _output_names(out, postprocess: bool) -> dict:
    """Name the detector's outputs for the serving signature."""
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


def _raw_output_tensors(data: bytes) -> dict:
    """``{"box_deltas": tensor name, "class_logits": tensor name}`` from the serving signature."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    runner = interp.get_signature_runner("serving_default")
    details = runner.get_output_details()
    names = {d["index"]: d["name"] for d in interp.get_output_details()}
    return {k: names[details[k]["index"]] for k in ("box_deltas", "class_logits") if k in details}


def export_detector(model, config, labels, mode: str, *, out, representative=None, train_data=None,
                    raw: bool = False, prune: Optional[float] = None, report: bool = False, debug: bool = False,
                    keep_float: int = 0, via: str = "tf_keras") -> Path:
    """Export a detector model (no run directory needed): convert, attach metadata, write atomically.

    Args:
        model: the trained Keras 3 detector (``keras_fpn.models.detector.build_detector``;
            any batch size), or its tf_keras twin.
        config: the resolved ``keras_fpn.config.Config`` the model was built from.
        labels: class names (``config.model.num_classes`` of them).
        mode: a name of ``fpn_export.modes.MODES``.
        out: output .tflite path.
        representative: calibration images for calibrated modes (callable
            returning an iterable of ``[1, H, W, 3]`` float32 normalized images,
            or an iterable; ``fpn_export.calibration.representative_from_config``
            makes one). For ``qat-int8`` (optional) they initialize the QAT
            activation ranges.
        train_data: ``tf.data.Dataset`` of ``(images, targets)`` batches (the
            training pipeline) for ``qat-int8`` and ``prune``, or a callable
            returning one (default: ``fpn_export.calibration.train_data_from_config``).
        raw: export ``box_deltas``/``class_logits`` instead of the post-process op.
        prune: target sparsity in (0, 1): prune the twin with tfmot while
            fine-tuning (``fpn_export.qat``), then export in ``mode``.
        report: write the Edge TPU op report beside the model (always for ``edgetpu``).
        debug: run the QuantizationDebugger (calibrated modes) and write its
            per-layer statistics beside the model.
        keep_float: with ``debug``, keep the N layers with the largest
            quantization error in float (denylisted nodes).
        via: ``"tf_keras"`` (default: convert the tf_keras twin, which lowers
            UpSampling2D to RESIZE_NEAREST_NEIGHBOR) or ``"keras"`` (convert
            the Keras 3 model as is; TILE-based upsampling).

    Returns:
        The written path.

    Raises:
        ExportError: a clear one-line reason (bad arguments, missing data, the
            failing op/layer of a conversion).
    """
    from fpn_export.postprocess_op import attach_postprocess, patch_postprocess_options
    from keras_fpn.ops.anchors import model_anchors

    check_export_args(mode, config, labels, via=via, representative=representative)
    m = get_mode(mode)
    mcfg = config.model
    if prune is not None and not 0.0 < float(prune) < 1.0:
        raise ExportError(f"--prune sparsity must be in (0, 1), got {prune}")
    if keep_float and not debug:
        raise ExportError("keep_float needs debug=True (the debugger picks the layers)")
    if keep_float and m.edgetpu:
        raise ExportError("keep_float makes a partly float model; the Edge TPU needs full integer")
    out = Path(out)
    anchors = model_anchors(mcfg)
    t0 = time.perf_counter()

    # 1. The graph to convert: the tf_keras twin (RESIZE_NEAREST_NEIGHBOR upsampling), batch 1.
    model, ns, extra = graph_to_convert(model, config, via=via, quantize=m.qat, prune=prune,
                                        train_data=train_data, representative=representative)
    if not raw:
        model = attach_postprocess(model, anchors, num_classes=mcfg.num_classes,
                                   scale_factors=mcfg.anchors.box_scale_factors,
                                   score_threshold=mcfg.postprocess.score_threshold,
                                   iou_threshold=mcfg.postprocess.iou_threshold,
                                   max_detections=mcfg.postprocess.max_detections,
                                   max_detections_per_class=mcfg.postprocess.max_detections_per_class,
                                   use_regular_nms=True, ns=ns, classes_per_op=_classes_per_op(m, config.export))

    # 2. Convert (optionally through the quantization debugger).
    debug_dir = out.with_name(out.stem + "_debug") if debug else None
    io = m.io_dtype(config.export.int8_io)
    data, info = convert_keras(model, mode, representative=representative, int8_io=io,
                               float_outputs=not raw, name_outputs=functools.partial(_output_names, postprocess=not raw),
                               debug_dir=None if debug_dir is None else str(debug_dir), keep_float=keep_float)
    check_loads(data, out)
    if not raw:
        # The converter drops detections_per_class (the kernel then caps every class at 100)
        # and writes the stub's threshold as it is: write the op's full option set back.
        data = bytes(patch_postprocess_options(data, model))
    extra.update({"io_dtype": io if not keep_float else "float32",
                  "postprocess_output_dtype": None if raw else "float32",
                  "prune": prune, "keep_float": keep_float or 0})
    if info.get("debug"):
        extra["debug"] = {k: v for k, v in info["debug"].items() if k in ("csv", "json", "kept_float")}

    # 3. Metadata + atomic write.
    meta = detector_metadata(config, labels, output="raw" if raw else "postprocess", mode=mode, extra=extra)
    if raw:
        meta["output_tensors"] = _raw_output_tensors(data)
    return write_export(data, meta, out, anchors=anchors if raw else None, report=report, started=t0)
