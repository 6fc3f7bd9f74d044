"""Tiny detector-like .tflite models for the fpn_edge / post-process op tests (built with TF).

Not a test module: ``test_edge_*.py`` and ``test_postprocess_op.py`` call
``get_models(tmp_path_factory)``, which builds the models once per pytest
process and caches them.

The model: 64x96 RGB input -> two strided convs -> one stride-8 level (8 x 12
cells, 2 anchors per cell, A = 192) -> box head / class head -> Reshape to
``box_deltas [1, 192, 4]`` and ``class_logits [1, 192, 3]``, static batch 1.
Anchors are small and centred inside the canvas, and the box head's weights are
scaled down, so decoded boxes stay inside [0, 1] (the op does not clip, keras_fpn
does: keeping boxes inside makes the two comparable to float precision).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

H, W = 64, 96
STRIDE = 8
LABELS = ["raccoon", "cat", "dog"]
C = len(LABELS)
ANCHOR_SIZES = (4.0, 6.0)          # px, square, 2 per location
A = (H // STRIDE) * (W // STRIDE) * len(ANCHOR_SIZES)
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
NMS = {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 20,
       "max_detections_per_class": 10}
NORMALIZATION = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}

_CACHE: dict = {}


def tiny_anchors() -> np.ndarray:
    """[A, 4] normalized yxyx anchors in the keras_fpn order (row -> col -> anchor)."""
    out = []
    for i in range(H // STRIDE):
        for j in range(W // STRIDE):
            yc, xc = (i + 0.5) * STRIDE, (j + 0.5) * STRIDE
            for s in ANCHOR_SIZES:
                out.append([(yc - s / 2) / H, (xc - s / 2) / W, (yc + s / 2) / H, (xc + s / 2) / W])
    return np.asarray(out, np.float32)


def build_keras(ns, seed: int = 0):
    """The tiny raw detector under Keras namespace ``ns`` (keras or tf_keras)."""
    ns.utils.set_random_seed(seed)
    L = ns.layers
    x = ns.Input((H, W, 3), batch_size=1, name="image")
    y = L.Conv2D(8, 3, strides=4, padding="same", activation="relu", name="conv1")(x)
    y = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(y)
    b = L.Conv2D(4 * len(ANCHOR_SIZES), 3, padding="same", name="box_head")(y)
    c = L.Conv2D(C * len(ANCHOR_SIZES), 3, padding="same", name="cls_head")(y)
    b = L.Reshape((A, 4), name="box_deltas")(b)      # (1, 8, 12, 2*4) -> (1, A, 4)
    c = L.Reshape((A, C), name="class_logits")(c)    # (1, 8, 12, 2*C) -> (1, A, C)
    model = ns.Model(x, [b, c], name="tiny_detector")
    box = model.get_layer("box_head")
    kernel, bias = box.get_weights()
    box.set_weights([kernel * 0.3, bias * 0.0])
    return model


def meta_for(output: str) -> dict:
    return {"task": "detection", "labels": list(LABELS),
            "input": {"height": H, "width": W, "normalization": dict(NORMALIZATION)},
            "output": output, "box_coder": {"scale_factors": list(SCALE_FACTORS)},
            "nms": dict(NMS), "config": {"name": "tiny_test_detector", "input_size": [H, W]}}


def representative_images(n: int = 8, seed: int = 1):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        img = rng.integers(0, 256, (1, H, W, 3)).astype(np.float32)
        yield [(img - 127.5) / 127.5]


def convert(model, *, int8: bool, int8_output: bool = False) -> bytes:
    """fp32, or full int8 with uint8 input (and int8 outputs when ``int8_output``)."""
    import warnings

    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.allow_custom_ops = True
    if int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_images
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        if int8_output:
            conv.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the representative dataset supplies them
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return conv.convert()


def get_models(tmp_path_factory) -> dict:
    """Build (once per process) and return {name: path} plus 'anchors' and 'keras' entries.

    Names: raw_fp32, pp_fp32, raw_int8, pp_int8 (metadata attached), and
    raw_fp32_nometa (no metadata).
    """
    if "models" in _CACHE:
        return _CACHE["models"]
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from fpn_edge.metadata import write_metadata
    from fpn_export.postprocess_op import attach_postprocess, patch_postprocess_options

    out = Path(tmp_path_factory.mktemp("edge_models"))
    anchors = tiny_anchors()
    model = build_keras(keras)
    pp = attach_postprocess(model, anchors, num_classes=C, scale_factors=SCALE_FACTORS,
                            score_threshold=NMS["score_threshold"], iou_threshold=NMS["iou_threshold"],
                            max_detections=NMS["max_detections"],
                            max_detections_per_class=NMS["max_detections_per_class"], ns=keras)
    paths = {}
    for name, m, int8, kind in (("raw_fp32", model, False, "raw"), ("pp_fp32", pp, False, "postprocess"),
                                ("raw_int8", model, True, "raw"), ("pp_int8", pp, True, "postprocess")):
        data = convert(m, int8=int8, int8_output=int8 and kind == "raw")
        if kind == "postprocess":
            data = patch_postprocess_options(data, pp)
        paths[name] = write_metadata(data, meta_for(kind), anchors if kind == "raw" else None,
                                     out / f"{name}.tflite")
        if name == "raw_fp32":
            (out / "raw_fp32_nometa.tflite").write_bytes(data)
            paths["raw_fp32_nometa"] = out / "raw_fp32_nometa.tflite"
    res = {**paths, "anchors": anchors, "keras": model, "dir": out}
    _CACHE["models"] = res
    return res
