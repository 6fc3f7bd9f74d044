"""Assemble backbone + pyramid + head into the detector Keras model.

The model maps a normalized image ``[B, H, W, 3]`` (see
``backbones.NORMALIZATION``) to two raw outputs (decoding stays on the host or in the export's post-process op, so one
trained model serves the Keras evaluation, raw and post-processed TFLite exports):

- ``box_deltas [B, A, 4]``: (ty, tx, th, tw) against the anchors of
  ``keras_fpn.ops.anchors.model_anchors`` (same order: level -> y -> x -> anchor);
- ``class_logits [B, A, C]``: sigmoid logits, no background column.

Decoding and NMS stay outside the model.

``model.neck`` picks the levels the head predicts on (``ModelConfig.head_levels``):
``fpn`` builds the pyramid P{min}..P{max}; the single-level ablation necks build the
same lateral 1x1 + output 3x3 on one backbone tap with no top-down pathway
(``build_fpn`` with ``min_level == max_level``): ``c5_only`` on C5, and
``finest_no_topdown`` on C{min_level}. A single-level head predicts the anchors of
all levels min..max at each of its cells (``model_anchors_per_location``).
Backbone layers after the tap that is used are not part of the model (Keras keeps
only the layers between inputs and outputs): the ``finest_no_topdown`` detector
stops at C{min_level}.
"""
from __future__ import annotations

from types import ModuleType

import keras

from keras_fpn.models.heads import HEADS
from keras_fpn.models.pyramid import build_pyramid, set_bn_momentum
from keras_fpn.ops.anchors import model_anchors_per_location


def build_detector(cfg, *, ns: ModuleType = keras, batch_size: int | None = None,
                   backbone_weights: str | None = "config"):
    """Build the detector described by a ``ModelConfig``.

    Args:
      cfg: ``keras_fpn.config.ModelConfig`` (``num_classes`` >= 1).
      ns: Keras namespace (``keras``, or ``tf_keras`` for the tfmot twin).
      batch_size: static batch dimension (1 for TFLite export, so Reshape
        layers get fully static shapes) or None.
      backbone_weights: ``"config"`` or an override (``build_pyramid``).

    Returns:
      A functional ``ns.Model`` named ``fpn_detector`` with outputs
      ``box_deltas`` and ``class_logits``.
    """
    L = ns.layers
    levels = cfg.head_levels
    inputs, _, pyramid = build_pyramid(cfg, ns=ns, batch_size=batch_size, backbone_weights=backbone_weights,
                                       min_level=levels[0], max_level=levels[-1])
    num_anchors = model_anchors_per_location(cfg)  # x levels min..max for a single-level neck
    maps = HEADS[cfg.head.kind](ns, pyramid, num_classes=cfg.num_classes, num_anchors=num_anchors,
                           width=cfg.head.width, depth=cfg.head.depth, activation=cfg.activation,
                           prior_probability=cfg.head.prior_probability)

    flat = {"box_deltas": [], "class_logits": []}
    for level, (box_map, cls_map) in maps.items():
        cells = box_map.shape[1] * box_map.shape[2] * num_anchors
        # (B, h, w, A*4) -> (B, h*w*A, 4); static target shape keeps SHAPE/PACK out of TFLite.
        flat["box_deltas"].append(L.Reshape((cells, 4), name=f"head_box_reshape_{level}")(box_map))
        flat["class_logits"].append(L.Reshape((cells, cfg.num_classes), name=f"head_cls_reshape_{level}")(cls_map))
    outputs = {}
    for name, parts in flat.items():
        if len(parts) == 1:  # single-level neck: name the only reshape's output
            outputs[name] = L.Activation("linear", dtype="float32", name=name)(parts[0])
        else:
            outputs[name] = L.Concatenate(axis=1, dtype="float32", name=name)(parts)
    model = ns.Model(inputs, outputs, name="fpn_detector")
    set_bn_momentum(model, cfg.bn_momentum, ns)
    return model
