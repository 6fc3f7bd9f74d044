"""The one export entry point: ``export_model(run or model, mode)``, for every task.

``export_model`` opens the run (config, labels, checkpoint), finds the
calibration images the mode uses (``fpn_export.calibration``) and hands the
model to the exporter of its ``model.task`` through the task registry
(``keras_fpn.tasks.get_task(...).export``; detectors:
``fpn_export.detection.export_detector``, segmenters:
``fpn_export.segmentation.export_segmenter``, one signature). The modes are
the rows of ``fpn_export.modes.MODES``; the conversion chain common to every
task is ``fpn_export.tflite``.

Every export has a static batch of 1 (``[1, H, W, 3]`` input), is converted
through the tf_keras twin unless ``via="keras"`` (``fpn_export.qat.graph_to_convert``),
carries the keras-fpn metadata (``fpn_edge.metadata``) and is written
atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from fpn_export.errors import ExportError
from fpn_export.modes import get_mode

__all__ = ["export_model", "default_output_path"]


def default_output_path(run_dir, mode: str, raw: bool = False, prune: Optional[float] = None) -> Path:
    """``RUN/model_<mode>[_pruneS][_raw].tflite``."""
    name = f"model_{mode}"
    if prune:
        name += f"_prune{int(round(float(prune) * 100))}"
    if raw:
        name += "_raw"
    return Path(run_dir) / f"{name}.tflite"


def export_model(run_or_model, mode: str, *, out=None, raw: bool = False, prune: Optional[float] = None,
                 representative=None, report: bool = False, debug: bool = False, keep_float: int = 0,
                 which: str = "best", config=None, labels=None, train_data=None,
                 via: str = "tf_keras", max_ap_drop: Optional[float] = None,
                 max_float: Optional[int] = None) -> Path:
    """Export a trained model (any task): the one entry point keyed by ``mode``.

    Args:
        run_or_model: a run directory (path or ``keras_fpn.rundir.Run``), or a
            Keras model (then ``config`` and ``labels`` are required).
        mode: a name of ``fpn_export.modes.MODES``.
        out: output path (default ``RUN/model_<mode>[_pruneNN][_raw].tflite``).
        raw: raw outputs instead of the post-process op (detectors).
        prune: target sparsity (tfmot magnitude pruning + fine-tuning), combinable with any mode.
        representative: number of calibration images (default
            ``export.representative_images``), or the images themselves (see
            ``fpn_export.detection.export_detector``).
        report: write the Edge TPU op report (always for ``edgetpu``).
        debug: per-layer quantization error statistics (QuantizationDebugger).
        keep_float: with ``debug``, keep the N worst layers float.
        which: checkpoint of the run (``best`` | ``last``).
        config, labels: for a model argument.
        train_data: fine-tuning data override (default: the run's training pipeline).
        via: ``tf_keras`` (default) or ``keras`` (see ``export_detector``).
        max_ap_drop, max_float: the ``int8-budget`` search (``fpn_export.budget.export_budget``;
            defaults there): the allowed AP drop in percent, the most layers kept float.

    Returns:
        The path of the written .tflite.
    """
    from fpn_export.calibration import representative_from_config
    from keras_fpn.rundir import Run, open_run
    from keras_fpn.tasks import get_task

    m = get_mode(mode)
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
    if m.budget:
        from fpn_export import budget

        if debug or keep_float or prune:
            raise ExportError(f"mode {m.name!r} picks the float layers itself: no --debug, --keep-float, --prune")
        return budget.export_budget(
            model, config, labels, out=out, raw=raw, via=via, representative=representative,
            max_ap_drop=budget.DEFAULT_MAX_AP_DROP if max_ap_drop is None else max_ap_drop,
            max_float=budget.DEFAULT_MAX_FLOAT if max_float is None else max_float)
    if max_ap_drop is not None or max_float is not None:
        raise ExportError(f"--max-ap-drop / --max-float need --mode int8 (or int8-budget), not {m.name!r}")
    if representative is None or isinstance(representative, int):
        # a count (or None: the config's) of calibration images; modes that use none get None
        representative = representative_from_config(config, n=representative) if m.uses_representative else None
    return get_task(config.model.task).export(
        model, config, labels, mode, out=out, representative=representative, train_data=train_data, raw=raw,
        prune=prune, report=report, debug=debug, keep_float=keep_float, via=via)

