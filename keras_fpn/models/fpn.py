"""The Feature Pyramid: lateral 1x1 convs, top-down nearest x2 pathway, 3x3 outputs.

Levels are keyed ``P{l}`` with stride ``2**l`` (the backbone's ``C{l}`` has the
same stride). For each level ``l`` in ``[min_level, min(max_level, 5)]``::

    lateral_l = Conv1x1(C_l)                                   fpn_lateral_P{l}
    merged_l  = lateral_l + NearestUp2(merged_{l+1})           fpn_upsample_P{l}, fpn_merge_P{l}
    P_l       = Conv3x3(merged_l)                              fpn_output_P{l}

With ``finer_input`` the finest level also adds a stride-2 3x3 conv of the
backbone tap one level finer (``C{min-1}``, e.g. C2 for P3; ``fpn_finer_P{min}``)
into its merge: stride-4 detail for small objects at the cost of one conv at the
finest level's resolution, instead of a whole extra level for the head.

Levels above 5 (P6, P7) come from stride-2 3x3 convs: P6 from an explicitly
chosen source (``"C5"`` as in RetinaNet, or ``"P5"``), P7 from ReLU(P6)
(``fpn_extra_P6``, ``fpn_extra_P7_relu``, ``fpn_extra_P7``).

The *lite* variant (SSD FPNLite) replaces every 3x3 conv with an explicit
DepthwiseConv2D + 1x1 Conv2D pair followed by BatchNorm and ReLU6 (a shared
SeparableConv2D breaks tfmot QAT). ``min_level == max_level`` gives a
single-scale neck (one lateral + one output conv, no top-down pathway), which
the FPN ablation configs use.
"""
from __future__ import annotations

from types import ModuleType

BACKBONE_MAX_LEVEL = 5


def _conv3x3(ns: ModuleType, x, *, width: int, strides: int, name: str, lite: bool, batch_norm: bool):
    """A 3x3 conv (or its depthwise-separable lite form), optionally BN (+ReLU6 in lite)."""
    L = ns.layers
    use_bn = batch_norm or lite
    if lite:
        x = L.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                              name=f"{name}_depthwise")(x)
        x = L.Conv2D(width, 1, use_bias=not use_bn, name=name)(x)
    else:
        x = L.Conv2D(width, 3, strides=strides, padding="same", use_bias=not use_bn, name=name)(x)
    if use_bn:
        x = L.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(x)
    if lite:
        x = L.ReLU(6.0, name=f"{name}_relu6")(x)
    return x


def build_fpn(ns: ModuleType, features: dict, *, min_level: int, max_level: int, width: int,
              lite: bool, batch_norm: bool, extra_levels_from: str, finer_input: bool = False) -> dict:
    """Build the pyramid on backbone taps.

    Args:
      ns: Keras namespace to build with (``keras`` or ``tf_keras``).
      features: ``{"C{l}": tensor}`` with stride ``2**l``; must hold every
        ``C{l}`` for ``l`` in ``[min_level, min(max_level, 5)]``.
      min_level, max_level: pyramid levels to produce (2 <= min <= 5, min <= max <= 7).
      width: channels of every pyramid level.
      lite: depthwise-separable convs + BN + ReLU6 (SSD FPNLite).
      batch_norm: BatchNorm after the 3x3 convs in the standard variant.
      extra_levels_from: ``"C5"`` or ``"P5"``: the source of P6.
      finer_input: add a stride-2 3x3 conv of ``C{min_level - 1}`` into ``P{min_level}``'s merge.

    Returns:
      ``{"P{l}": tensor [B, H / 2**l, W / 2**l, width]}`` for every level.
    """
    if not (2 <= min_level <= BACKBONE_MAX_LEVEL and min_level <= max_level <= 7):
        raise ValueError(f"need 2 <= min_level <= 5 and min_level <= max_level <= 7, "
                         f"got P{min_level}..P{max_level}")
    if extra_levels_from not in ("C5", "P5"):
        raise ValueError(f"extra_levels_from must be 'C5' or 'P5', got {extra_levels_from!r}")
    L = ns.layers
    top = min(max_level, BACKBONE_MAX_LEVEL)
    missing = [f"C{l}" for l in range(min_level, top + 1) if f"C{l}" not in features]
    if missing:
        raise ValueError(f"backbone features {missing} are needed for levels P{min_level}..P{top}")

    finer = f"C{min_level - 1}"
    if finer_input and finer not in features:
        raise ValueError(f"finer_input needs the backbone's {finer} (stride {2 ** (min_level - 1)}) "
                         f"for P{min_level}; the backbones tap C2..C5")

    merged = {}
    for level in range(top, min_level - 1, -1):
        inputs = [L.Conv2D(width, 1, name=f"fpn_lateral_P{level}")(features[f"C{level}"])]
        if level < top:
            inputs.append(L.UpSampling2D(2, interpolation="nearest", name=f"fpn_upsample_P{level}")(merged[level + 1]))
        if finer_input and level == min_level:
            inputs.append(L.Conv2D(width, 3, strides=2, padding="same", name=f"fpn_finer_P{level}")(features[finer]))
        merged[level] = inputs[0] if len(inputs) == 1 else L.Add(name=f"fpn_merge_P{level}")(inputs)

    pyramid = {f"P{l}": _conv3x3(ns, merged[l], width=width, strides=1, name=f"fpn_output_P{l}",
                                 lite=lite, batch_norm=batch_norm)
               for l in range(min_level, top + 1)}

    if max_level > BACKBONE_MAX_LEVEL:
        if extra_levels_from == "C5" and "C5" not in features:
            raise ValueError("extra_levels_from='C5' needs the backbone's C5 feature")
        x = features["C5"] if extra_levels_from == "C5" else pyramid["P5"]
        for level in range(BACKBONE_MAX_LEVEL + 1, max_level + 1):
            if level > BACKBONE_MAX_LEVEL + 1 and not lite:
                x = L.ReLU(name=f"fpn_extra_P{level}_relu")(x)  # lite convs end in ReLU6 already
            x = _conv3x3(ns, x, width=width, strides=2, name=f"fpn_extra_P{level}",
                         lite=lite, batch_norm=batch_norm)
            pyramid[f"P{level}"] = x
    return dict(sorted(pyramid.items(), key=lambda kv: int(kv[0][1:])))
