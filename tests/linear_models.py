"""A 5-class "linear" detector whose outputs are its input pixels, for the thread-count tests.

Not a test module. Each 2x2x3 patch of the 16x16 input (one per anchor, 8x8
anchors) gives one anchor's 4 box deltas (x 1) and 5 class logits (x 6), so a
chosen normalized canvas sets every output; random canvases give every class
more than ``max_detections_per_class`` candidates over the threshold, with
overlapping boxes for NMS to suppress. Five classes exercise the kernel's
lost class at 2, 3 and 4 threads (``fpn_export.postprocess_op``).

``export(out_dir, mode, classes_per_op)`` runs the project's conversion chain
(``fpn_export.tflite.convert_keras``; ``qat-int8`` through tfmot's
``quantize_model``) and writes the model with its keras-fpn metadata.
"""
from __future__ import annotations

import os

import numpy as np

LABELS = ["circle", "square", "triangle", "ring", "cross"]
C = len(LABELS)
G = 8                      # 8 x 8 cells, one anchor each: A = 64
HW = 2 * G                 # 16 x 16 px input, one 2x2x3 patch per cell
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
NMS = {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 50, "max_detections_per_class": 10}
NORMALIZATION = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}


def anchors() -> np.ndarray:
    """Anchors 0.2 wide, centres 0.075 apart in [0.2, 0.8]: neighbours overlap (IoU 0.45), all inside."""
    c = 0.2 + 0.6 * (np.arange(G) + 0.5) / G
    yc, xc = np.meshgrid(c, c, indexing="ij")
    yc, xc = yc.reshape(-1), xc.reshape(-1)
    return np.stack([yc - 0.1, xc - 0.1, yc + 0.1, xc + 0.1], 1).astype(np.float32)


def detector(ns=None):
    """The raw linear detector under Keras namespace ``ns`` (default Keras 3)."""
    if ns is None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras as ns
    ns.utils.set_random_seed(0)
    x = ns.Input((HW, HW, 3), batch_size=1, name="image")
    box = ns.layers.Conv2D(4, 2, strides=2, use_bias=False, name="box_head")
    cls = ns.layers.Conv2D(C, 2, strides=2, use_bias=False, name="cls_head")
    b = ns.layers.Reshape((G * G, 4), name="box_deltas")(box(x))
    c = ns.layers.Reshape((G * G, C), name="class_logits")(cls(x))
    eye = np.eye(12, dtype=np.float32).reshape(2, 2, 3, 12)    # patch element j -> channel j
    box.set_weights([eye[..., :4]])
    cls.set_weights([6.0 * eye[..., 4:4 + C]])
    return ns.Model(x, [b, c], name="linear_detector")


def canvas(seed: int) -> np.ndarray:
    """A normalized ``[1, HW, HW, 3]`` float32 input in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (1, HW, HW, 3)).astype(np.float32)


def meta(kind: str, *, thread_safe=None) -> dict:
    nms = dict(NMS) if thread_safe is None else dict(NMS, thread_safe=thread_safe)
    return {"task": "detection", "labels": list(LABELS),
            "input": {"height": HW, "width": HW, "normalization": dict(NORMALIZATION)},
            "output": kind, "box_coder": {"scale_factors": list(SCALE_FACTORS)},
            "nms": nms, "config": {"name": "linear_test_detector"}}


def _qat_twin():
    import tensorflow_model_optimization as tfmot
    import tf_keras

    return tfmot.quantization.keras.quantize_model(detector(tf_keras)), tf_keras


def export(out_dir, mode: str = "fp32", *, classes_per_op="default", raw: bool = False, nms=None):
    """Convert the linear detector (post-process unless ``raw``) in ``mode``; returns the written path.

    ``classes_per_op``: "default" (the export's, 2), None (one op: the layout of
    files exported before the fix) or an int.
    """
    from fpn_edge.metadata import write_metadata
    from fpn_export.postprocess_op import SAFE_CLASSES_PER_OP, attach_postprocess, patch_postprocess_options
    from fpn_export.tflite import convert_keras

    nms = dict(NMS, **(nms or {}))
    per_op = SAFE_CLASSES_PER_OP if classes_per_op == "default" else classes_per_op
    model, ns = _qat_twin() if mode == "qat-int8" else (detector(), None)
    if not raw:
        model = attach_postprocess(model, anchors(), num_classes=C, scale_factors=SCALE_FACTORS,
                                   score_threshold=nms["score_threshold"], iou_threshold=nms["iou_threshold"],
                                   max_detections=nms["max_detections"],
                                   max_detections_per_class=nms["max_detections_per_class"],
                                   classes_per_op=per_op, ns=ns)
    rep = [canvas(100 + i) for i in range(8)]
    data, _ = convert_keras(model, mode, representative=rep, int8_io="uint8", float_outputs=not raw)
    if not raw:
        data = patch_postprocess_options(data, model)
    kind = "raw" if raw else "postprocess"
    safe = None if raw else (per_op is not None and per_op <= 2)
    name = f"{kind}_{mode}_{per_op}_{nms['max_detections']}.tflite"
    m = meta(kind, thread_safe=safe)
    m["nms"].update(nms)
    return write_metadata(data, m, anchors() if raw else None, os.path.join(str(out_dir), name))
