"""The tf_keras (Keras 2) twin of a Keras 3 detector or segmenter: what tfmot and the exporter work on.

tfmot's quantize/prune APIs reject Keras 3 models (and tf_keras lowers nearest upsampling to
one RESIZE_NEAREST_NEIGHBOR, which the Edge TPU maps). The same builder functions
build the architecture under ``tf_keras``; ``copy_weights`` transfers the
trained values layer by layer (layers with weights are matched in graph order
and must have identical weight shapes; names are compared where Keras does not
auto-number them, after mapping tf_keras' MobileNetV3 names to Keras 3's:
``expanded_conv_1/expand/BatchNorm`` -> ``expanded_conv_1_expand_bn``).
"""
from __future__ import annotations

import re

import numpy as np

from keras_fpn.models.factory import build_model

_AUTO_NAME = re.compile(r"^(activation|re_lu|multiply|add|rescaling)(_\d+)?$")


def _canonical(name: str) -> str:
    """A layer name as Keras 3 spells it (tf_keras' MobileNetV3 uses ``/`` scopes and capitals)."""
    return name.lower().replace("/batchnorm", "_bn").replace("/", "_")


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def copy_weights(src, dst) -> int:
    """Copy every layer's weights from ``src`` to ``dst`` (same architecture).

    Returns:
      The number of weight arrays copied.
    Raises:
      ValueError: the two models do not line up (names or shapes differ).
    """
    src_layers, dst_layers = _weighted_layers(src), _weighted_layers(dst)
    if len(src_layers) != len(dst_layers):
        raise ValueError(f"models differ: {len(src_layers)} vs {len(dst_layers)} layers with weights")
    copied = 0
    for a, b in zip(src_layers, dst_layers):
        if _canonical(a.name) != _canonical(b.name) and not (_AUTO_NAME.match(a.name) and _AUTO_NAME.match(b.name)):
            raise ValueError(f"layer mismatch: {a.name!r} vs {b.name!r}")
        values = [np.asarray(w) for w in a.get_weights()]
        shapes = [tuple(w.shape) for w in b.get_weights()]
        if [v.shape for v in values] != shapes:
            raise ValueError(f"layer {a.name!r}: weight shapes {[v.shape for v in values]} vs {shapes}")
        b.set_weights(values)
        copied += len(values)
    return copied


def build_twin(cfg, model, *, batch_size: int | None = None):
    """Build the tf_keras twin of ``model`` (built from ``cfg``) and copy its weights."""
    import tf_keras

    twin = build_model(cfg, ns=tf_keras, batch_size=batch_size, backbone_weights=None)
    copy_weights(model, twin)
    return twin
