"""The public Python API: train a config into a run directory, then use the run.

Re-exported from ``keras_fpn`` (with ``Config``): ``train(config, run_dir)`` and
``Run(run_dir)`` with ``.model``, ``.evaluate()``, ``.predict(images)``,
``.export(mode)`` and ``.compare(modes)``. Each is the function the matching
``keras-fpn`` subcommand calls (``train``, ``evaluate``, ``predict``, ``export``,
``compare``), without the printing and the files the CLI writes around it.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np

from keras_fpn import rundir
from keras_fpn.config import Config

__all__ = ["Run", "train"]

#: an image for ``Run.predict``: a file path or a uint8 RGB array ``[h, w, 3]``
Image = Union[str, os.PathLike, np.ndarray]
#: the modes ``Run.compare`` measures by default (as ``keras-fpn compare``)
DEFAULT_COMPARE_MODES = ("fp32", "int8", "qat-int8")


class Run(rundir.Run):
    """A run directory written by :func:`train` / ``keras-fpn train`` (see ``keras_fpn.rundir``).

    Attributes:
        path: the run directory.
        config: its resolved ``Config`` (``model.num_classes`` filled in).
        labels: class names, in contiguous class-id order (no background).
    """

    @functools.cached_property
    def model(self):
        """The Keras model (detector or segmenter) with the best checkpoint's weights, built once."""
        return self.build_model(which="best")

    def _checkpoint_model(self, which: str):
        return self.model if which == "best" else self.build_model(which=which)

    def evaluate(self, data: str | os.PathLike | None = None, *, include: str | os.PathLike | None = None,
                 which: str = "best", progress: bool = False, boundary_tolerance: int | None = None) -> dict:
        """The task's metrics of the ``which`` checkpoint (``best`` | ``last``) on ``data``.

        Args:
            data: a dataset (COCO JSON, VOC / YOLO folder, TFRecord); default the config's ``data.val``.
            include: only these images of ``data`` (a txt list or a CSV with a ``filename`` column);
                default ``data.val_include`` when ``data`` is the config's. Images that cannot be
                decoded are left out with their boxes (``keras_fpn.data.splits.load_eval_split``).
            boundary_tolerance: segmentation, boundary F-score tolerance in pixels (default 2).

        Returns:
            ``images`` (the number evaluated) and the task's metrics. Detection: COCO ``AP``, ``AP50``,
            ``AP75``, ``AP_small`` ... ``AR_large`` and ``per_class`` AP, in [0, 1] (-1 where the data
            has no such object). Segmentation: ``mIoU``, ``pixel_accuracy``, ``boundary_F``, per class.
        """
        from keras_fpn.data.splits import load_eval_split
        from keras_fpn.tasks import get_task

        cfg = self.config
        dataset = load_eval_split(cfg, data, include, labels=self.labels, where=str(self.path))
        metrics = get_task(cfg.model.task).evaluate(self._checkpoint_model(which), dataset, cfg, progress=progress,
                                                    boundary_tolerance=boundary_tolerance)
        return {"images": len(dataset), **metrics}

    def predict(self, images: Image | Sequence[Image], *, threshold: float = 0.3, max_detections: int = 100,
                which: str = "best") -> list[list[dict]]:
        """Detections of a detector run, per image, in that image's own pixels.

        Args:
            images: an image file path or a uint8 RGB array ``[h, w, 3]``, or a list of them.
            threshold: minimum score (``score > threshold``).

        Returns:
            For each image, its detections, best first: ``{"label", "class_id", "score", "box_xyxy"}``
            with ``box_xyxy = [x1, y1, x2, y2]`` in pixels of the original image.
        """
        from keras_fpn.data.images import load_image
        from keras_fpn.tasks import get_task
        from keras_fpn.training.predict import detect_image

        task = get_task(self.config.model.task)
        if not task.can_predict:
            raise ValueError(f"{self.path}: {task.predict_hint}")
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        model = self._checkpoint_model(which)
        return [detect_image(model, self.config.model, self.labels,
                             image if isinstance(image, np.ndarray) else load_image(image),
                             threshold=threshold, max_detections=max_detections)
                for image in images]

    def export(self, mode: str = "int8", **options) -> Path:
        """Export to TFLite (``fpn_export.convert.export_model``: ``out``, ``raw``, ``prune``, ``which``, ...).

        Returns:
            The path of the .tflite (default ``RUN/model_<mode>.tflite``), for ``fpn_edge.Detector`` /
            ``fpn_edge.Segmenter`` (the export's metadata says which) and ``fpn-edge``.
        """
        from fpn_export.convert import export_model

        return export_model(self, mode, **options)

    def compare(self, modes: Iterable[str] = DEFAULT_COMPARE_MODES, **options) -> dict:
        """Measure the float model and each export mode (exported first where missing or stale):
        ``keras_fpn.compare.report.compare_run`` (``data``, ``threads``, ``out``, ``bench_runs``, ...).

        Returns:
            The report dict, also written to ``out`` (default ``RUN/compare``) as report.json, report.md
            and plots: ``report["variants"]`` has one row per variant (float first) with its metrics,
            their ratio to float, latency and size.
        """
        from keras_fpn.compare.report import compare_run

        return compare_run(self.path, modes=tuple(modes), **options)


def train(config: Config | str | os.PathLike, run_dir: str | os.PathLike, *,
          overrides: Sequence[str] | Mapping[str, object] | None = None, verbose: int | str = "auto",
          force: bool = False) -> Run:
    """Train ``config`` into ``run_dir`` with ``Model.fit``; rerunning after an interruption resumes.

    Args:
        config: a ``Config``, a YAML file or a shipped config's name (``Config.from_yaml``).
        overrides: applied to a file or name (``["train.epochs=5"]`` or ``{"train.epochs": 5}``).
        verbose: Keras' ``fit`` verbosity (``"auto"``, 0, 1 progress bar, 2 one line per epoch).
        force: ``run_dir`` was trained with another config or dataset: discard that training and
            start anew (without it, that is a ``RunDirError`` naming the differences).

    Returns:
        The trained ``Run`` (its best checkpoint's evaluation is in ``RUN/eval.json``).
    """
    from keras_fpn.training.train import train as fit

    if isinstance(config, Config):
        if overrides:
            raise ValueError("train(config, ...): overrides apply to a file or a name, not to a Config")
    else:
        config = Config.from_yaml(config, overrides)
    fit(config, run_dir, verbose=verbose, force=force)
    return Run(run_dir)
