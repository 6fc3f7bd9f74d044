"""Detection heads shared across pyramid levels.

Both heads return per-level raw maps ``{"P{l}": (box [B, h, w, A*4], cls [B, h, w, A*C])}``;
``detector.py`` flattens them into the model outputs. Conv weights are shared
across levels (the same layer object is called on every level). Layer names:
``head_{cls,box}_tower_{i}`` (RetinaNet) or ``head_tower_{i}`` (SSD-FPNLite,
whose tower is shared by the box and class predictors), ``head_cls_logits``,
``head_box_deltas``.

Class logits start at the focal-loss prior: bias ``-log((1 - pi) / pi)`` on the
*class* predictor only (the box predictor's bias starts at zero).

Initialization (issue 32, measured in DESIGN.md "Recipes"): the predictors' 1x1 / 3x3 kernels
are N(0, 0.01) (logits start near the prior), but the layers *before* them preserve the
signal: tower convs He-normal, depthwise kernels N(0, 1/3) (variance-preserving over a
filter's 9 taps; Keras' fan-in would count the channels too). With N(0, 0.01) everywhere
the class predictor saw features of std 0.04, its gradient was ~25x smaller, and a head
with many classes sat on the focal-loss plateau (class loss ~1.13) for ~100 steps.
"""
from __future__ import annotations

import math
from types import ModuleType


def _prior_bias(ns: ModuleType, prior_probability: float):
    return ns.initializers.Constant(-math.log((1.0 - prior_probability) / prior_probability))


def build_retinanet_head(ns: ModuleType, pyramid: dict, *, num_classes: int, num_anchors: int,
                         width: int, depth: int, activation: str, prior_probability: float) -> dict:
    """RetinaNet head: separate class and box towers of ``depth`` 3x3 convs + ReLU.

    Args:
      ns: Keras namespace (``keras`` or ``tf_keras``).
      pyramid: ``{"P{l}": tensor}`` from ``build_fpn``.
      num_classes: foreground classes C (no background column).
      num_anchors: anchors per location A.
      width: tower channels; depth: tower conv layers.
      activation: ``"relu"`` or ``"relu6"``.
      prior_probability: initial foreground probability pi of every class logit.

    Returns:
      ``{"P{l}": (box_map, cls_map)}``.
    """
    L = ns.layers
    init = lambda: ns.initializers.RandomNormal(stddev=0.01)  # noqa: E731  (one per layer: towers differ)
    max_value = 6.0 if activation == "relu6" else None
    towers = {}
    for kind in ("cls", "box"):
        towers[kind] = [(L.Conv2D(width, 3, padding="same", kernel_initializer=_tower_init(ns),
                                  name=f"head_{kind}_tower_{i}"),
                         L.ReLU(max_value, name=f"head_{kind}_tower_{i}_relu")) for i in range(depth)]
    cls_out = L.Conv2D(num_anchors * num_classes, 3, padding="same", kernel_initializer=init(),
                       bias_initializer=_prior_bias(ns, prior_probability), name="head_cls_logits")
    box_out = L.Conv2D(num_anchors * 4, 3, padding="same", kernel_initializer=init(),
                       bias_initializer="zeros", name="head_box_deltas")

    outputs = {}
    for level, feature in pyramid.items():
        maps = {}
        for kind in ("cls", "box"):
            x = feature
            for conv, act in towers[kind]:
                x = act(conv(x))
            maps[kind] = x
        outputs[level] = (box_out(maps["box"]), cls_out(maps["cls"]))
    return outputs


def _tower_init(ns: ModuleType):
    return ns.initializers.HeNormal()


def _depthwise_init(ns: ModuleType):
    # variance-preserving over the 9 taps of one depthwise filter (Keras' fan-in counts the channels too)
    return ns.initializers.RandomNormal(stddev=1.0 / 3.0)


def _separable(ns: ModuleType, filters: int, *, name: str, use_bias: bool, init, bias_init="zeros"):
    L = ns.layers
    return (L.DepthwiseConv2D(3, padding="same", use_bias=False, depthwise_initializer=_depthwise_init(ns),
                              name=f"{name}_depthwise"),
            L.Conv2D(filters, 1, use_bias=use_bias, kernel_initializer=init(),
                     bias_initializer=bias_init, name=name))


def build_ssd_fpnlite_head(ns: ModuleType, pyramid: dict, *, num_classes: int, num_anchors: int,
                           width: int, depth: int, activation: str, prior_probability: float) -> dict:
    """SSD-FPNLite weight-shared box predictor (TF OD API ``WeightSharedConvolutionalBoxPredictor``
    with ``use_depthwise`` and ``share_prediction_tower``).

    One tower of ``depth`` depthwise-separable 3x3 convs (weights shared across
    levels, BatchNorm per level, ReLU6) feeds two depthwise-separable
    predictors. Args and returns as ``build_retinanet_head``.
    """
    L = ns.layers
    init = lambda: ns.initializers.RandomNormal(stddev=0.01)  # noqa: E731
    max_value = 6.0 if activation == "relu6" else None
    tower = [_separable(ns, width, name=f"head_tower_{i}", use_bias=False, init=lambda: _tower_init(ns))
             for i in range(depth)]
    cls_dw, cls_pw = _separable(ns, num_anchors * num_classes, name="head_cls_logits", use_bias=True,
                                init=init, bias_init=_prior_bias(ns, prior_probability))
    box_dw, box_pw = _separable(ns, num_anchors * 4, name="head_box_deltas", use_bias=True, init=init)

    outputs = {}
    for level, feature in pyramid.items():
        x = feature
        for i, (dw, pw) in enumerate(tower):
            x = pw(dw(x))
            x = L.BatchNormalization(epsilon=1e-3, name=f"head_tower_{i}_bn_{level}")(x)
            x = L.ReLU(max_value, name=f"head_tower_{i}_relu_{level}")(x)
        outputs[level] = (box_pw(box_dw(x)), cls_pw(cls_dw(x)))
    return outputs


HEADS = {"retinanet": build_retinanet_head, "ssd_fpnlite": build_ssd_fpnlite_head}
