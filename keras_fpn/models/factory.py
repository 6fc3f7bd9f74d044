"""``build_model``: the model of a ``ModelConfig``, built by its task (``keras_fpn.tasks``).

``task: detection`` -> ``keras_fpn.models.detector.build_detector`` (outputs
``box_deltas``, ``class_logits``); ``task: segmentation`` ->
``keras_fpn.models.segmentation.build_segmenter`` (output ``seg_logits``).
Every builder takes the same arguments, so training, the run directory, the
tf_keras twin and export call this and stay task-agnostic.
"""
from __future__ import annotations

from types import ModuleType

import keras


def build_model(cfg, *, ns: ModuleType = keras, batch_size: int | None = None,
                backbone_weights: str | None = "config"):
    """Build the model of a ``ModelConfig`` (arguments as ``build_detector``)."""
    from keras_fpn.tasks import get_task

    return get_task(cfg.task).build_model(cfg, ns=ns, batch_size=batch_size, backbone_weights=backbone_weights)
