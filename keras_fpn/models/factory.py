"""``build_model``: the one place that picks the model builder for ``ModelConfig.task``.

``task: detection`` -> ``keras_fpn.models.detector.build_detector`` (outputs
``box_deltas``, ``class_logits``); ``task: segmentation`` ->
``keras_fpn.models.segmentation.build_segmenter`` (output ``seg_logits``).
Both take the same arguments, so training, the run directory, the tf_keras
twin and export call this and stay task-agnostic.
"""
from __future__ import annotations

from types import ModuleType

import keras


def build_model(cfg, *, ns: ModuleType = keras, batch_size: int | None = None,
                backbone_weights: str | None = "config"):
    """Build the model of a ``ModelConfig`` (arguments as ``build_detector``)."""
    if cfg.task == "segmentation":
        from keras_fpn.models.segmentation import build_segmenter

        return build_segmenter(cfg, ns=ns, batch_size=batch_size, backbone_weights=backbone_weights)
    from keras_fpn.models.detector import build_detector

    return build_detector(cfg, ns=ns, batch_size=batch_size, backbone_weights=backbone_weights)
