"""The task registry: what a model predicts, as a plug-in (``model.task`` in the config).

A *task* (``keras_fpn.tasks.base.Task``) declares everything the shared flows need
to know about one kind of model: how to build it, its tf.data pipeline, its
losses, how training evaluates and checkpoints it, how ``evaluate`` scores it,
how it is exported to TFLite and what ``compare`` reports. Training, the run
directory, the CLI, export and compare call the task of a config through
``get_task(cfg.model.task)`` and never branch on its name.

Adding a task: write its implementation modules (model builder, pipeline,
losses, evaluation, ``fpn_export`` exporter, ``fpn_edge`` runner, compare
report, and its own ``model`` config section if it has keys of its own), one
module here that declares them as a ``Task``, one line in ``_REGISTRY`` below,
and one entry in each of the edge runtime's tables
(``fpn_edge.runner.RUNNERS``, ``fpn_edge.metadata.TASK_SCHEMAS``).
"""
from __future__ import annotations

import importlib

#: ``model.task`` value -> ``module:attribute`` of its ``Task`` (imported on first use)
_REGISTRY = {
    "detection": "keras_fpn.tasks.detection:DETECTION",
    "segmentation": "keras_fpn.tasks.segmentation:SEGMENTATION",
}
#: the valid ``model.task`` values
TASK_NAMES = tuple(_REGISTRY)


def get_task(name: str):
    """The ``Task`` registered as ``name``; ``ValueError`` naming the known tasks otherwise."""
    try:
        module, attr = _REGISTRY[name].split(":")
    except KeyError:
        raise ValueError(f"unknown model.task {name!r} (known: {', '.join(TASK_NAMES)})") from None
    return getattr(importlib.import_module(module), attr)


__all__ = ["TASK_NAMES", "get_task"]
