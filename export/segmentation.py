"""TFLite export of keras-fpn semantic segmenters (``model.task: segmentation``).

``export_segmenter`` has ``fpn_export.detection.export_detector``'s signature
and steps (``fpn_export.qat.graph_to_convert``, then the chain of
``fpn_export.tflite``):

* modes: every mode of ``fpn_export.modes.MODES``; ``raw`` (the output is
  always raw), pruning and the quantization debugger are refused for now;
* **output: the raw logits** ``seg_logits [1, H, W, K]`` (int8/uint8 in
  full-integer modes, with ``export.int8_io``), not an argmax. ARG_MAX is not
  an Edge TPU op (it would cut the graph on the CPU after the last resize
  anyway) and returns int32/int64, while the logits keep the whole graph in
  int8; the host takes the argmax (``fpn_edge.Segmenter``), which also lets it
  resize the logits to the original image before deciding, and read
  confidences;
* metadata (``fpn_edge.metadata``): ``task: segmentation``, ``labels``
  = ``["background", *labels]`` (K = C + 1, channel order), ``output:
  logits``, ``segmentation: {background_id: 0, ignore_label, final_upsample}``,
  the resolved config and the export settings;
* QAT fine-tunes on the task's training pipeline with its training loss
  (``fpn_export.qat``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from fpn_export.errors import ExportError
from fpn_export.modes import get_mode
from fpn_export.qat import graph_to_convert
from fpn_export.tflite import check_export_args, check_loads, convert_keras, export_metadata, write_export

__all__ = ["export_segmenter", "segmentation_metadata"]


def segmentation_metadata(config, labels, *, mode: str, extra: Optional[dict] = None) -> dict:
    """The ``fpn_meta.json`` dict of a segmenter export (schema in ``fpn_edge.metadata``).

    Args:
        config: the resolved ``keras_fpn.config.Config``.
        labels: the C foreground class names (the run's labels.txt); the
            metadata lists ``background`` first.
        mode: the export mode (recorded under ``export``).
        extra: more keys for the ``export`` section.
    """
    from keras_fpn.evaluation.segmentation import class_names

    m = config.model
    return export_metadata(
        config, task="segmentation", labels=class_names(labels), output="logits", mode=mode, extra=extra,
        segmentation={"background_id": 0, "ignore_label": int(m.segmentation.ignore_label),
                      "final_upsample": m.segmentation.final_upsample})


def export_segmenter(model, config, labels, mode: str, *, out, representative=None, train_data=None,
                     raw: bool = False, prune: Optional[float] = None, report: bool = False, debug: bool = False,
                     keep_float: int = 0, via: str = "tf_keras") -> Path:
    """Export a segmenter: convert, attach metadata, write atomically.

    Args:
        model: the trained Keras 3 segmenter (``keras_fpn.models.segmentation.build_segmenter``)
            or its tf_keras twin.
        config: the resolved ``Config`` the model was built from.
        labels: the C foreground class names.
        mode: a name of ``fpn_export.modes.MODES``.
        out: output .tflite path.
        representative: calibration images for calibrated modes (as
            ``fpn_export.detection.export_detector``); they also initialize the
            QAT ranges.
        train_data: ``tf.data.Dataset`` of segmentation batches, or a callable
            returning one, for ``qat-int8`` (default:
            ``fpn_export.calibration.train_data_from_config``).
        raw, prune, debug, keep_float: detector export options; segmentation
            refuses them (its output is always the raw logits; no pruning /
            debugger yet).
        report: write the Edge TPU op report beside the model (always for ``edgetpu``).
        via: ``"tf_keras"`` (default) or ``"keras"`` (as ``export_detector``).

    Returns:
        The written path.
    """
    check_export_args(mode, config, labels, via=via, representative=representative)
    unsupported = [name for name, on in (("--raw", raw), ("--prune", prune is not None),
                                         ("--debug/--keep-float", debug or bool(keep_float))) if on]
    if unsupported:
        raise ExportError(f"{', '.join(unsupported)}: not available for segmentation models "
                          "(they always export raw seg_logits)")
    m = get_mode(mode)
    t0 = time.perf_counter()
    model, _, extra = graph_to_convert(model, config, via=via, quantize=m.qat, train_data=train_data,
                                       representative=representative)
    io = m.io_dtype(config.export.int8_io)
    data, info = convert_keras(model, mode, representative=representative, int8_io=io)
    check_loads(data, out)
    extra.update({"io_dtype": io, "convert_s": round(info["convert_s"], 2)})
    meta = segmentation_metadata(config, labels, mode=mode, extra=extra)
    return write_export(data, meta, out, report=report, started=t0)
