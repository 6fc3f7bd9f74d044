"""Bottom-up backbones from ``keras.applications`` with their feature taps.

A backbone returns ``{"C2": t, "C3": t, "C4": t, "C5": t}``: feature maps at
strides 4, 8, 16 and 32 (``C{l}`` has stride ``2**l``). Each tap is the *last*
layer of the network whose output still has that resolution, i.e. the output
of the expansion (MobileNets) or residual stage (ResNet) just before the next
stride-2 layer. With Keras 3 names:

============  ======================  ======================  ======================  ================
backbone      C2 (stride 4)           C3 (stride 8)           C4 (stride 16)          C5 (stride 32)
============  ======================  ======================  ======================  ================
mobilenetv2   block_3_expand_relu     block_6_expand_relu     block_13_expand_relu    out_relu
resnet50      conv2_block3_out        conv3_block4_out        conv4_block6_out        conv5_block3_out
mobilenetv3*  expand activation of    expand activation of    expand activation of    last activation
              the first stride-8      the first stride-16     the first stride-32     (576 / 960 ch)
              block                   block                   block
============  ======================  ======================  ======================  ================

MobileNetV3's activation layers carry auto-numbered names in Keras, so its taps
are found by the resolution rule above rather than by name (the same rule gives
the names in the table for the other backbones, which a test checks).

Input normalization is part of the model contract (see ``NORMALIZATION``):
pixels in 0..255 are mapped by ``(x - mean) / std`` in the given channel order.
"""
from __future__ import annotations

import os
from types import ModuleType

MOBILENET_NORMALIZATION = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}
CAFFE_NORMALIZATION = {"channel_order": "BGR", "mean": [103.939, 116.779, 123.68], "std": [1.0] * 3}

#: backbone name -> input normalization applied outside the model.
NORMALIZATION = {
    "mobilenetv2": MOBILENET_NORMALIZATION,
    "mobilenetv3large": MOBILENET_NORMALIZATION,
    "mobilenetv3small": MOBILENET_NORMALIZATION,
    "mobilenetv3large_minimalistic": MOBILENET_NORMALIZATION,
    "mobilenetv3small_minimalistic": MOBILENET_NORMALIZATION,
    "resnet50": CAFFE_NORMALIZATION,
}
BACKBONES = tuple(NORMALIZATION)
TAP_LEVELS = (2, 3, 4, 5)


class WeightsError(ValueError):
    """A backbone weights file is missing or does not match the architecture."""


def _application(ns: ModuleType, name: str, alpha: float, input_tensor):
    apps = ns.applications
    common = dict(include_top=False, weights=None, input_tensor=input_tensor)
    if name == "mobilenetv2":
        return apps.MobileNetV2(alpha=alpha, **common)
    if name.startswith("mobilenetv3"):
        ctor = apps.MobileNetV3Large if "large" in name else apps.MobileNetV3Small
        # Preprocessing stays outside the model (NORMALIZATION), like MobileNetV2.
        return ctor(alpha=alpha, minimalistic=name.endswith("_minimalistic"),
                    include_preprocessing=False, **common)
    if name == "resnet50":
        return apps.ResNet50(**common)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def _load_weights(model, name: str, weights: str | None) -> None:
    if weights is None:
        return
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: backbone weights file not found")
    try:
        model.load_weights(path)
    except Exception as exc:  # Keras raises ValueError/OSError with long messages
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError):  # h5py: truncated or not HDF5
            raise WeightsError(f"{path}: cannot read the backbone weights file, it is truncated or not "
                               f"a .weights.h5 file ({first})") from None
        raise WeightsError(f"{path}: does not match backbone {name!r} ({first})") from None


def _imagenet_weights(ns: ModuleType, model, name: str, alpha: float) -> None:
    """Copy Keras' downloadable ImageNet weights into ``model`` (same layer order).

    This is the normal Keras download path for users with network access. Keras warns that
    a non-224 input loads the 224 px weights: only the weights are copied, so the warning
    is silenced. A failed download (offline) or an alpha Keras has no weights for is a
    ``WeightsError`` (one line) instead of Keras' traceback.
    """
    import warnings

    apps = ns.applications
    shape = tuple(model.inputs[0].shape[1:])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if name == "mobilenetv2":
                ref = apps.MobileNetV2(alpha=alpha, include_top=False, weights="imagenet", input_shape=shape)
            elif name.startswith("mobilenetv3"):
                ctor = apps.MobileNetV3Large if "large" in name else apps.MobileNetV3Small
                ref = ctor(alpha=alpha, minimalistic=name.endswith("_minimalistic"), include_top=False,
                           weights="imagenet", include_preprocessing=False, input_shape=shape)
            else:
                ref = apps.ResNet50(include_top=False, weights="imagenet", input_shape=shape)
    except Exception as exc:  # Keras raises a bare Exception for a failed download
        first = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"model.backbone.weights: imagenet: cannot get Keras' ImageNet weights of {name} "
                           f"(alpha {alpha:g}): {first}; without network access set it to a downloaded "
                           ".weights.h5 file or null") from None
    model.set_weights(ref.get_weights())


def _taps_by_resolution(model, height: int, width: int) -> dict:
    taps = {}
    for layer in model.layers:
        shape = layer.output.shape
        if len(shape) != 4:
            continue
        for level in TAP_LEVELS:
            stride = 2 ** level
            if shape[1] == height // stride and shape[2] == width // stride:
                taps[f"C{level}"] = layer.output  # later layers overwrite: keep the last
    missing = [f"C{l}" for l in TAP_LEVELS if f"C{l}" not in taps]
    if missing:
        raise ValueError(f"could not find backbone taps {missing} (input {height}x{width})")
    return taps


def build_backbone(ns: ModuleType, name: str, inputs, *, alpha: float, weights: str | None) -> dict:
    """Build a backbone on ``inputs`` and return its feature taps.

    The backbone's layers join the caller's functional graph directly (not as a
    nested model), which tfmot's QAT and the tf_keras twin need.

    Args:
      ns: the Keras namespace to build with (``keras`` or ``tf_keras``).
      name: one of ``BACKBONES``.
      inputs: the image input tensor ``[B, H, W, 3]``, already normalized as
        ``NORMALIZATION[name]`` says; H and W divisible by 32.
      alpha: width multiplier (MobileNets; ignored for ResNet50).
      weights: ``"imagenet"`` (Keras download), a path to a ``.weights.h5``
        file saved from the same ``keras.applications`` model, or None.

    Returns:
      ``{"C2": …, "C3": …, "C4": …, "C5": …}`` tensors at strides 4, 8, 16, 32.
    """
    if name not in NORMALIZATION:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    model = _application(ns, name, alpha, inputs)
    if weights == "imagenet":
        _imagenet_weights(ns, model, name, alpha)
    else:
        _load_weights(model, name, weights)
    height, width = inputs.shape[1], inputs.shape[2]
    return _taps_by_resolution(model, height, width)
