"""Semantic segmentation on the Feature Pyramid: a Panoptic-FPN-style head.

The semantic branch of Panoptic FPN (Kirillov et al. 2019) on the pyramid of
``keras_fpn.models.fpn``. Every level ``P{l}`` (``l`` from ``min_level`` to
``min(max_level, 5)``; P6/P7 are not built) is brought to stride 4 by
``max(l - 2, 1)`` stages, the last ``l - 2`` of which end in a nearest x2
upsample::

    x = P_l
    for i in range(max(l - 2, 1)):
        x = ReLU(BN(Conv3x3(x)))                 seg_P{l}_conv{i}, _bn, _relu
        if l > 2: x = NearestUp2(x)              seg_P{l}_up{i}
    sum_l x  (+ ReLU(BN(Conv1x1(C2))) with c2_skip)   seg_sum (seg_C2_skip, _bn, _relu)
    logits_4 = Conv1x1(sum) -> K channels        seg_classifier
    seg_logits = Up4(logits_4)                   seg_logits  ([B, H, W, K], float32)

Conventions (stated once for the segmentation task):

- **Classes**: ``K = num_classes + 1`` output channels; channel 0 is
  *background*, channel ``c + 1`` is the library's contiguous class ``c``
  (``LabelMap`` order). Class maps (ground truth and prediction) use the same
  ids, as uint8, with ``ignore_label`` (255) for pixels that neither the loss
  nor the metrics count.
- **Output**: raw softmax logits ``seg_logits [B, H, W, K]`` at the input
  (canvas) resolution; the prediction is their argmax. The letterbox padding
  of the canvas is cropped off before mapping back to the original image.

Design decisions (measured in benchmarks/results/segmentation.md):

- The x2 stages use **nearest** upsampling (the same layer as the FPN top-down
  path): it copies values, so it adds no quantization error, and the tf_keras
  twin that export converts lowers it to RESIZE_NEAREST_NEIGHBOR.
- The final x4 upsample is **bilinear** by default (``segmentation.final_upsample``):
  on the same weights it scored higher than nearest in float (P2-P5: mIoU
  0.772 vs 0.751, boundary F@1px 0.509 vs 0.480; P3-P5: F@2px 0.670 vs 0.559)
  and in int8 (mIoU 0.779 vs 0.757); it lowers to one RESIZE_BILINEAR under
  both Keras 3 and tf_keras, whereas Keras 3's nearest ``UpSampling2D`` lowers
  to RESHAPE+TILE (TILE is not an Edge TPU op; it matters for ``--via keras``
  exports); RESIZE_BILINEAR is on the Edge TPU list (3-D tensors at batch 1)
  and the static check maps it; and int8 keeps one scale through the resize,
  so the PTQ graph has no requantization there. The layer has no weights, so
  a checkpoint loads into either choice.
- The cheap boundary fix is ``min_level: 2`` (P2 in the pyramid: one lateral
  + one 3x3 output conv at stride 4): boundary F@1px 0.469 -> 0.509 (first
  round 0.432 -> 0.542), for +9 % parameters and +70-80 % invoke time at
  128 px; its mIoU / F@2px differences were within run-to-run noise. The
  alternative ``segmentation.c2_skip`` (a 1x1 conv of the stride-4 tap C2 added to the
  sum) did not help. Both keep the graph to Conv/BN/ReLU/Add/Resize.
"""
from __future__ import annotations

from types import ModuleType

import keras

from keras_fpn.models.fpn import BACKBONE_MAX_LEVEL
from keras_fpn.models.pyramid import build_pyramid, set_bn_momentum

#: stride of the head's sum (the finest backbone tap, C2)
HEAD_STRIDE = 4


def _conv_bn_relu(ns: ModuleType, x, *, width: int, kernel: int, name: str):
    L = ns.layers
    x = L.Conv2D(width, kernel, padding="same", use_bias=False, name=name)(x)
    x = L.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def build_semantic_head(ns: ModuleType, pyramid: dict, *, num_outputs: int, width: int,
                        c2=None, final_upsample: str):
    """Build the semantic head on pyramid levels P2..P5 (those present).

    Args:
      ns: Keras namespace (``keras`` or ``tf_keras``).
      pyramid: ``{"P{l}": tensor}`` with stride ``2**l``; levels above 5 are ignored.
      num_outputs: K, logits channels (foreground classes + 1 background).
      width: channels of every head conv.
      c2: the backbone's stride-4 tap C2 for the skip, or None.
      final_upsample: ``"bilinear"`` or ``"nearest"`` for the x4 to the input size.

    Returns:
      ``seg_logits`` tensor ``[B, 4 * h2, 4 * w2, K]`` float32 (h2, w2: the stride-4 size).
    """
    L = ns.layers
    levels = sorted(int(k[1:]) for k in pyramid if int(k[1:]) <= BACKBONE_MAX_LEVEL)
    if not levels:
        raise ValueError("the semantic head needs at least one of the levels P2..P5")
    branches = []
    for level in levels:
        x = pyramid[f"P{level}"]
        for i in range(max(level - 2, 1)):
            x = _conv_bn_relu(ns, x, width=width, kernel=3, name=f"seg_P{level}_conv{i}")
            if level > 2:
                x = L.UpSampling2D(2, interpolation="nearest", name=f"seg_P{level}_up{i}")(x)
        branches.append(x)
    if c2 is not None:
        branches.append(_conv_bn_relu(ns, c2, width=width, kernel=1, name="seg_C2_skip"))
    x = branches[0] if len(branches) == 1 else L.Add(name="seg_sum")(branches)
    x = L.Conv2D(num_outputs, 1, name="seg_classifier")(x)
    return L.UpSampling2D(HEAD_STRIDE, interpolation=final_upsample, dtype="float32", name="seg_logits")(x)


def build_segmenter(cfg, *, ns: ModuleType = keras, batch_size: int | None = None,
                    backbone_weights: str | None = "config"):
    """Build the FPN semantic segmenter described by a ``ModelConfig`` (``task: segmentation``).

    Args:
      cfg: ``keras_fpn.config.ModelConfig``: ``backbone``, ``neck`` (``min_level`` 2 or 3:
        P2 in the pyramid or not), ``segmentation`` (head width, C2 skip, final
        upsample), ``num_classes`` >= 1.
      ns: Keras namespace (``keras``, or ``tf_keras`` for the tfmot twin).
      batch_size: static batch dimension (1 for TFLite export) or None.
      backbone_weights: ``"config"`` or an override (``build_pyramid``).

    Returns:
      A functional ``ns.Model`` named ``fpn_segmenter`` with the one output
      ``{"seg_logits": [B, H, W, num_classes + 1]}``.
    """
    inputs, features, pyramid = build_pyramid(cfg, ns=ns, batch_size=batch_size,
                                              backbone_weights=backbone_weights, min_level=cfg.neck.min_level,
                                              max_level=min(cfg.neck.max_level, BACKBONE_MAX_LEVEL))
    logits = build_semantic_head(ns, pyramid, num_outputs=cfg.num_classes + 1, width=cfg.segmentation.width,
                                 c2=features["C2"] if cfg.segmentation.c2_skip else None,
                                 final_upsample=cfg.segmentation.final_upsample)
    model = ns.Model(inputs, {"seg_logits": logits}, name="fpn_segmenter")
    set_bn_momentum(model, cfg.bn_momentum, ns)
    return model
