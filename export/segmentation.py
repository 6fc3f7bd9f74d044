"""TFLite export of keras-fpn semantic segmenters (``model.task: segmentation``) and their evaluation.

``export_segmenter`` follows ``fpn_export.convert.export_detector`` and shares
its machinery (``check_export_args``, ``graph_to_convert`` (the tf_keras twin,
``fpn_export.qat``), ``convert_keras``, ``write_export``):

* modes: every mode of ``fpn_export.convert.MODES`` (``fp32``, ``fp16``,
  ``dynamic``, ``int8``, ``int16x8``, ``qat-int8``, ``edgetpu``); pruning and
  the quantization debugger are detection-only for now;
* converted through the tf_keras twin, static batch 1;
* **output: the raw logits** ``seg_logits [1, H, W, K]`` (int8/uint8 in
  integer modes, with ``export.int8_io``), not an argmax. ARG_MAX is not an
  Edge TPU op (it would cut the graph on the CPU after the last resize
  anyway) and returns int32/int64, while the logits keep the whole graph in
  int8; the host takes the argmax (``fpn_edge.Segmenter``), which also lets it
  resize the logits to the original image before deciding, and read
  confidences;
* metadata (``fpn_edge.metadata``): ``task: segmentation``, ``labels``
  = ``["background", *labels]`` (K = C + 1, channel order), ``output:
  logits``, ``segmentation: {background_id: 0, ignore_label, final_upsample}``,
  the resolved config and the export settings;
* QAT fine-tunes on the segmentation pipeline
  (``keras_fpn.data.pipeline.build_segmentation_dataset``) with the training
  loss (``keras_fpn.ops.seg_losses.SegmentationLoss``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from fpn_export.convert import (ExportError, _normalization, _resolve_mode_io,
                                check_export_args, check_loads, convert_keras, graph_to_convert,
                                train_data_from_config, write_export)

__all__ = ["export_segmenter", "segmentation_metadata", "seg_train_data_from_config",
           "tf_keras_seg_losses"]


def segmentation_metadata(config, labels, *, mode: str, extra: Optional[dict] = None) -> dict:
    """The ``fpn_meta.json`` dict of a segmenter export (schema in ``fpn_edge.metadata``).

    Args:
        config: the resolved ``keras_fpn.config.Config``.
        labels: the C foreground class names (the run's labels.txt); the
            metadata lists ``background`` first.
        mode: the export mode (recorded under ``export``).
        extra: more keys for the ``export`` section.
    """
    from keras_fpn.config import config_to_dict
    from keras_fpn.evaluation.segmentation import class_names

    m = config.model
    h, w = (int(v) for v in m.image_size)
    return {"task": "segmentation", "labels": class_names(labels),
            "input": {"height": h, "width": w, "normalization": _normalization(m)},
            "output": "logits",
            "segmentation": {"background_id": 0, "ignore_label": int(m.ignore_label),
                             "final_upsample": m.seg_final_upsample},
            "config": config_to_dict(config),
            "export": {"mode": mode, **(extra or {})}}


def tf_keras_seg_losses(config) -> tuple:
    """``(losses, loss_weights)`` for tf_keras ``compile`` (QAT): the training segmentation loss."""
    import tensorflow as tf

    from keras_fpn.ops.seg_losses import SegmentationLoss

    loss = SegmentationLoss(ignore_label=config.model.ignore_label, dice_weight=config.train.dice_weight)

    @tf.autograph.experimental.do_not_convert
    def seg_loss(y_true, y_pred):
        return loss.call(y_true, y_pred)

    return {"seg_logits": seg_loss}, {"seg_logits": 1.0}


def seg_train_data_from_config(config, seed: int = 0):
    """The QAT fine-tuning ``tf.data`` pipeline of a segmentation config (``train_data_from_config``)."""
    return train_data_from_config(config, seed=seed)


def export_segmenter(model, config, labels, mode: str, *, out, representative=None, train_data=None,
                     report: bool = False, via: str = "tf_keras", raw: bool = False, prune=None,
                     debug: bool = False) -> Path:
    """Export a segmenter: convert, attach metadata, write atomically.

    Args:
        model: the trained Keras 3 segmenter (``keras_fpn.models.segmentation.build_segmenter``)
            or its tf_keras twin.
        config: the resolved ``Config`` (``model.task == "segmentation"``).
        labels: the C foreground class names.
        mode: one of ``fpn_export.convert.MODES``.
        out: output .tflite path.
        representative: calibration images for ``CALIBRATED_MODES`` (as ``export_detector``).
        train_data: ``tf.data.Dataset`` of segmentation batches, or a callable
            returning one, for ``qat-int8`` (default: ``seg_train_data_from_config``).
            The representative images also initialize the QAT ranges.
        report: write the Edge TPU op report beside the model (always for ``edgetpu``).
        via: ``"tf_keras"`` (default) or ``"keras"`` (as ``export_detector``).
        raw, prune, debug: detector export options; segmentation refuses them
            (its output is always the raw logits; no pruning / debugger yet).

    Returns:
        The written path.
    """
    check_export_args(mode, config, labels, via=via, representative=representative)
    unsupported = [name for name, on in (("--raw", raw), ("--prune", prune is not None),
                                         ("--debug/--keep-float", debug)) if on]
    if unsupported:
        raise ExportError(f"{', '.join(unsupported)}: not available for segmentation models "
                          "(they always export raw seg_logits)")
    if config.model.task != "segmentation":
        raise ExportError(f"export_segmenter needs model.task 'segmentation', got {config.model.task!r}")
    qat_mode = mode == "qat-int8"
    t0 = time.perf_counter()

    if train_data is None:
        train_data = lambda: seg_train_data_from_config(config)  # noqa: E731  (only QAT calls it)
    model, _, extra = graph_to_convert(model, config, via=via, quantize=qat_mode, train_data=train_data,
                                       representative=representative,
                                       losses=tf_keras_seg_losses(config) if qat_mode else None)

    integer = mode in ("int8", "edgetpu", "qat-int8")
    io = _resolve_mode_io(mode, config.export.int8_io) if integer else "float32"
    data, info = convert_keras(model, mode, representative=representative, int8_io=io,
                               postprocess=False, qat=qat_mode)
    check_loads(data, out)
    extra.update({"io_dtype": io, "convert_s": round(info["convert_s"], 2)})
    meta = segmentation_metadata(config, labels, mode=mode, extra=extra)
    return write_export(data, meta, out, report=report, started=t0)
