"""The in-graph ``TFLite_Detection_PostProcess`` op, attached to an export-only Keras model.

``attach_postprocess`` appends one small layer to a detector that outputs
``box_deltas [1, A, 4]`` and ``class_logits [1, A, C]``. The layer applies a
sigmoid to the logits and calls, per group of at most 2 classes (see below), a
``tf.function`` whose ``experimental_implements`` attribute names
``TFLite_Detection_PostProcess``; the TFLite converter replaces each function
with the custom op (its body, which returns zeros of the output shapes, never
runs in TFLite). Convert the result
with ``fpn_export.tflite.convert_keras``: a SavedModel of one batch-1 serving
``tf.function`` converted by ``TFLiteConverter.from_saved_model`` with
``allow_custom_ops = True``, which keeps the stub as one function call and
swaps in the op (every mode, float and integer).

The resulting model has the standard SSD detection signature:

* boxes ``[1, N, 4]`` float32 ``[ymin, xmin, ymax, xmax]`` normalized to the
  model input canvas (NOT clipped, see below),
* classes ``[1, N]`` float32 class ids 0..C-1 (no background column),
* scores ``[1, N]`` float32 sigmoid scores,
* num_detections ``[1]`` float32,

with ``N = max_detections``; rows past ``num_detections`` are zeros. The
interpreter lists the four outputs in an order of its own: map them by their
signature names (``OUTPUT_NAMES``; with 1 or 2 classes the single op's own
output list works too; ``fpn_edge.Detector`` tries both), never by position.

**Call** :func:`patch_postprocess_options` **on the converted bytes**
(``fpn_export.detection.export_detector`` does). The TF 2.21 converter writes
only some of the stub's attributes into the op's custom options: it drops
``detections_per_class``, and the kernel then caps each class at its default of
100 instead of ``max_detections_per_class`` (measured: 14 detections of one
class with a cap of 10). The patch rewrites the options from the attributes
given to :func:`attach_postprocess`.

**One op per two classes: right at every thread count.** The LiteRT / TFLite
kernel (``detection_postprocess.cc``, threaded since TF ~2.8; ai-edge-litert 2.3)
runs regular NMS on ``T`` = the interpreter's ``num_threads`` workers: worker
``i`` runs class ``i``, then each worker takes ``col = ++next_col`` with the
shared counter ``next_col`` starting at ``T``. The pre-increment hands out
``T + 1`` first, so class ``T`` is never run: with ``2 <= T <= C - 1`` the op
returns no detection of class ``T`` (and only it; with ``T >= C`` every class
has its own worker, with ``T = 1`` a plain loop runs them all). Only classes 0
and 1 are safe for every ``T``, so no class layout of one op helps (padding
dummy classes would leave two real classes). The export therefore splits the
classes into ops of at most 2 (``SAFE_CLASSES_PER_OP``, :func:`class_groups`),
each with ``detections_per_class`` and ``min(max_detections, 2 *
detections_per_class)`` rows, and merges their outputs in the graph: class ids
shifted by the group's first class, one ``TOPK_V2`` over the concatenated
scores (equal scores: lower row first = lower class first, the kernel's own
order), ``GATHER`` of boxes and classes, count ``min(sum, max_detections)``,
zero rows past it. The result equals the single op on one thread bit for bit
(values and order), at every thread count. The merge runs on int32 (``BITCAST``
of the float bits; scores are >= 0, so their bits sort as the floats do):
a full-integer converter quantizes float tensors it has ranges for, and would
otherwise turn boxes and scores after the ops into int8. Cost: each op decodes
every anchor again (``ceil(C / 2)`` decodes instead of 1), measured in
``benchmarks/results/nms_threads.md``. ``classes_per_op=None`` builds the old
single op (files exported before the fix have it; ``fpn_edge.Detector`` runs
those with the CPU kernels on one thread). ``BITCAST`` needs TFLite >= 2.13.

What the op computes (TFLite kernel ``detection_postprocess.cc``) and how it
differs from keras_fpn's decode + per-class NMS
(``tf.image.combined_non_max_suppression`` semantics):

* Decoding is the same Faster R-CNN coder: ``yc = ty / sy * ha + ya``,
  ``h = exp(th / sh) * ha`` (computed in double, rounded to float: boxes agree
  to ~1e-7).
* Boxes are **not clipped** to [0, 1], and NMS runs on the unclipped boxes.
  keras_fpn clips before NMS: for two boxes that reach past the canvas the IoU
  differs, so a box can be kept by one and suppressed by the other (measured on
  the demo model, 20 validation images: 1687 of numpy's 1695 detections
  identical, 11 of the op's 1698 not; numpy's NMS on unclipped boxes equals the
  op on every image). fpn_edge clips to the image afterwards, so the boxes it
  reports agree otherwise.
* Score threshold: the kernel keeps ``score >= threshold``; the op is given the
  next float32 above ``t`` (:func:`kernel_score_threshold`), i.e. keras_fpn's
  ``score > t``. keras_fpn tests the logit against ``logit(t)``; the two can
  differ only for a score within one float32 step of ``t``.
* No pre-NMS top-k: every anchor over the threshold enters the per-class NMS
  (O(K^2) per class, so a low threshold costs latency on device).
  ``fpn_edge.postprocess.decode_detections`` keeps the best ``pre_nms_top_k``
  (default 1000) per class first; with more candidates than that the two can
  differ. Set ``nms.pre_nms_top_k: null`` in the metadata for identical rules.
  A top-k in the graph would need one op per class (the op takes one anchor
  set), i.e. a merge after the ops, which the int8 converter quantizes.
* ``use_regular_nms=True``: for each class, greedy NMS (suppress when
  IoU > iou_threshold) over anchors with score over the threshold, at most
  ``detections_per_class`` per class (stable sort: equal scores -> lower
  anchor first); then the best ``max_detections`` over all classes by score
  (equal scores: lower class first). This is per-class NMS like combined NMS.
* ``use_regular_nms=False`` (fast NMS): each anchor keeps only its best class
  (``max_classes_per_detection=1``), one class-agnostic NMS over all anchors;
  a box can then suppress an overlapping box of another class: not what
  keras_fpn computes. Faster for many classes. (Not threaded: no lost class.)
* Only float32 or uint8 inputs are accepted by the kernel; in an int8 model the
  converter puts DEQUANTIZE ops in front of it.
"""
from __future__ import annotations

import functools

import numpy as np

from fpn_export.flatbuffer import op_name, read_model, write_model

OP_NAME = "TFLite_Detection_PostProcess"
OUTPUT_NAMES = ("boxes", "classes", "scores", "num_detections")
LAYER_NAME = "detection_postprocess"
_ATTR_ARGS = ("num_classes", "scale_factors", "score_threshold", "iou_threshold", "max_detections",
              "max_detections_per_class", "use_regular_nms")

__all__ = ["attach_postprocess", "patch_postprocess_options", "postprocess_options",
           "anchors_to_center_size", "implements_signature", "op_attributes", "kernel_score_threshold",
           "OP_NAME", "OUTPUT_NAMES"]


def anchors_to_center_size(anchors_yxyx: np.ndarray) -> np.ndarray:
    """``[A, 4]`` normalized yxyx anchors -> ``[A, 4]`` float32 (ycenter, xcenter, h, w), the op's anchor input."""
    a = np.asarray(anchors_yxyx, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"anchors must have shape [A, 4], got {list(a.shape)}")
    h = a[:, 2] - a[:, 0]
    w = a[:, 3] - a[:, 1]
    if np.any(h <= 0) or np.any(w <= 0):
        raise ValueError("anchors must have positive height and width ([ymin, xmin, ymax, xmax])")
    return np.stack([a[:, 0] + 0.5 * h, a[:, 1] + 0.5 * w, h, w], axis=1).astype(np.float32)


def kernel_score_threshold(score_threshold: float) -> float:
    """The kernel's ``nms_score_threshold`` for keras_fpn's strict rule ``score > t``.

    The kernel keeps ``score >= threshold`` on float32 scores; the next float32
    above ``t`` makes that ``score > float32(t)``.
    """
    return float(np.nextafter(np.float32(score_threshold), np.float32(np.inf)))


def op_attributes(*, num_classes: int, scale_factors, score_threshold: float, iou_threshold: float,
                  max_detections: int, max_detections_per_class: int, use_regular_nms: bool) -> dict:
    """The op's attributes (custom option names of the TFLite kernel) as a dict of int/float/bool.

    ``score_threshold`` is keras_fpn's (keep ``score > t``); the kernel gets
    :func:`kernel_score_threshold` of it.
    """
    sy, sx, sh, sw = (float(v) for v in scale_factors)
    return {"max_detections": int(max_detections), "max_classes_per_detection": 1,
            "detections_per_class": int(max_detections_per_class),
            "use_regular_nms": bool(use_regular_nms),
            "nms_score_threshold": kernel_score_threshold(score_threshold),
            "nms_iou_threshold": float(iou_threshold),
            "num_classes": int(num_classes),
            "y_scale": sy, "x_scale": sx, "h_scale": sh, "w_scale": sw}


def implements_signature(**kwargs) -> str:
    """The ``experimental_implements`` string: op name plus attributes (NameAttrList text format).

    Takes the keyword arguments of :func:`op_attributes`.
    """
    def fmt(v):
        if isinstance(v, bool):
            return f"b: {'true' if v else 'false'}"
        if isinstance(v, int):
            return f"i: {v}"
        return f"f: {float(v)!r}"

    parts = [f'name: "{OP_NAME}"'] + [
        f'attr {{ key: "{k}" value {{ {fmt(v)} }} }}' for k, v in op_attributes(**kwargs).items()]
    return " ".join(parts)


#: the most classes one op may hold and stay right at every thread count (see the module docstring)
SAFE_CLASSES_PER_OP = 2


def class_groups(num_classes: int, classes_per_op=SAFE_CLASSES_PER_OP) -> list:
    """``[(first class, count)]``: the classes split over ops of at most ``classes_per_op`` (None: one op)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    step = num_classes if classes_per_op is None else int(classes_per_op)
    if step < 1:
        raise ValueError(f"classes_per_op must be >= 1 or None, got {classes_per_op}")
    return [(start, min(step, num_classes - start)) for start in range(0, num_classes, step)]


def _group_rows(size: int, attributes: dict) -> int:
    """Output rows of one op of ``size`` classes: no more than its classes can fill."""
    n = int(attributes["max_detections"])
    return n if size == attributes["num_classes"] else min(n, size * int(attributes["max_detections_per_class"]))


def _op_stub(tf, attributes: dict, rows: int):
    """A ``tf.function`` the converter replaces by one op with ``attributes`` and ``rows`` output rows."""
    signature = implements_signature(**{**attributes, "max_detections": rows})

    @tf.function(experimental_implements=signature)
    def _postprocess(box_encodings, class_predictions, anchors):
        # Placeholder body with the op's output shapes; the converter swaps in the op.
        del box_encodings, class_predictions, anchors
        return (tf.zeros([1, rows, 4], tf.float32), tf.zeros([1, rows], tf.float32),
                tf.zeros([1, rows], tf.float32), tf.zeros([1], tf.float32))

    return _postprocess


_LAYER_CLASSES = {}


def _layer_class(ns):
    """The post-process layer class for a Keras namespace (``keras`` or ``tf_keras``)."""
    key = ns.__name__
    if key in _LAYER_CLASSES:
        return _LAYER_CLASSES[key]
    import tensorflow as tf

    class DetectionPostProcess(ns.layers.Layer):
        """sigmoid(class_logits) + TFLite_Detection_PostProcess (export-only; needs the TFLite converter)."""

        def __init__(self, anchors_cs, attributes: dict, **kwargs):
            super().__init__(**kwargs)
            self.anchors_cs = np.asarray(anchors_cs, dtype=np.float32)
            self.attributes = dict(attributes)
            self.max_detections = int(attributes["max_detections"])
            # fast NMS is class-agnostic (and not threaded): it stays one op over every class
            per_op = attributes.get("classes_per_op", SAFE_CLASSES_PER_OP) if attributes["use_regular_nms"] else None
            self.groups = class_groups(int(attributes["num_classes"]), per_op)
            self._ops = [_op_stub(tf, {**{k: attributes[k] for k in _ATTR_ARGS}, "num_classes": size},
                                  _group_rows(size, attributes))
                         for _, size in self.groups]

        def call(self, inputs):
            box_deltas, class_logits = inputs
            scores = tf.sigmoid(class_logits)
            anchors = tf.constant(self.anchors_cs)
            if len(self.groups) == 1:
                return list(self._ops[0](box_deltas, scores, anchors))
            # The merge runs on int32 (float bits): a full-integer converter quantizes float
            # tensors, not int32 ones. Scores are >= 0, so their bits sort as the floats do.
            bits = functools.partial(tf.bitcast, type=tf.int32)
            parts = []
            for (start, size), op in zip(self.groups, self._ops):
                boxes, classes, part_scores, count = op(box_deltas, scores[:, :, start:start + size], anchors)
                parts.append((bits(boxes), tf.cast(classes, tf.int32) + start, bits(part_scores),
                              tf.cast(count, tf.int32)))   # the op's class ids are 0..size-1
            boxes, classes, all_scores, counts = (tf.concat(list(t), axis=-1 if i else 1)
                                                  for i, t in enumerate(zip(*parts)))
            short = self.max_detections - int(all_scores.shape[1])
            if short > 0:   # the ops' rows (<= detections_per_class each) cannot fill N: zero rows
                boxes = tf.pad(boxes, [[0, 0], [0, short], [0, 0]])
                classes, all_scores = (tf.pad(t, [[0, 0], [0, short]]) for t in (classes, all_scores))
            # top_k: decreasing score, equal scores -> lower row = lower class (the kernel's order)
            top, rows = tf.math.top_k(all_scores, k=self.max_detections, sorted=True)
            total = tf.minimum(tf.reduce_sum(counts, keepdims=True), self.max_detections)
            filled = tf.cast(tf.range(self.max_detections) < total, tf.int32)
            as_float = functools.partial(tf.bitcast, type=tf.float32)
            return [as_float(tf.gather(boxes, rows, batch_dims=1)),
                    tf.cast(tf.gather(classes, rows, batch_dims=1) * filled, tf.float32),
                    as_float(top), tf.cast(total, tf.float32)]

        def compute_output_shape(self, input_shape):
            n = self.max_detections
            return [(1, n, 4), (1, n), (1, n), (1,)]

        def get_config(self):
            cfg = super().get_config()
            cfg.update(anchors_cs=self.anchors_cs.tolist(), attributes=dict(self.attributes))
            return cfg

    _LAYER_CLASSES[key] = DetectionPostProcess
    return DetectionPostProcess


def _split_outputs(model):
    """-> (box_deltas tensor, class_logits tensor) of a 2-output detector, by name then by shape."""
    outs = model.outputs
    if len(outs) != 2:
        raise ValueError(f"model {model.name!r} must have 2 outputs (box_deltas, class_logits), has {len(outs)}")
    names = list(getattr(model, "output_names", []) or [])
    if len(names) == 2 and "box_deltas" in names and "class_logits" in names:
        return outs[names.index("box_deltas")], outs[names.index("class_logits")]
    last = [t.shape[-1] for t in outs]
    if last[0] == 4 and last[1] != 4:
        return outs[0], outs[1]
    if last[1] == 4 and last[0] != 4:
        return outs[1], outs[0]
    return outs[0], outs[1]  # keras_fpn order: [box_deltas, class_logits]


def attach_postprocess(model, anchors, *, num_classes: int, scale_factors, score_threshold: float,
                       iou_threshold: float, max_detections: int, max_detections_per_class: int,
                       use_regular_nms: bool = True, classes_per_op=SAFE_CLASSES_PER_OP, ns=None):
    """Return a new model: ``model``'s inputs -> boxes, classes, scores, num_detections.

    Args:
        model: a functional detector (Keras 3 or tf_keras, matching ``ns``) with
            static batch 1 and outputs ``box_deltas [1, A, 4]``,
            ``class_logits [1, A, C]`` (by output name, else by shape, else in
            that order).
        anchors: ``[A, 4]`` normalized ``[ymin, xmin, ymax, xmax]`` anchors
            (keras_fpn ``generate_anchors``); baked into the op as
            (ycenter, xcenter, h, w).
        num_classes: C (foreground classes, no background column).
        scale_factors: box coder ``(sy, sx, sh, sw)``, e.g. (10, 10, 5, 5).
        score_threshold: keep scores > this (the kernel gets the next float32 up,
            see :func:`kernel_score_threshold`).
        iou_threshold: suppress when IoU > this; in (0, 1].
        max_detections: N, the output length.
        max_detections_per_class: per-class NMS cap (``detections_per_class``).
        use_regular_nms: True = per-class NMS (matches keras_fpn); False = fast
            class-agnostic NMS (see the module docstring).
        classes_per_op: the most classes one op holds (default 2: right at every
            thread count); None = all classes in one op, the layout of exports
            before the fix (loses class T on T = 2..C-1 threads).
        ns: the Keras namespace the model was built with (``keras`` default, or
            ``tf_keras`` for QAT models).

    Returns:
        A model of the same namespace, for TFLite export only (the op's
        placeholder body returns zeros when run in TF). After converting it,
        pass the bytes and this model to :func:`patch_postprocess_options`.
    """
    if ns is None:
        import keras as ns
    anchors_cs = anchors_to_center_size(anchors)
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if max_detections < 1 or max_detections_per_class < 1:
        raise ValueError("max_detections and max_detections_per_class must be >= 1")
    if len(tuple(scale_factors)) != 4:
        raise ValueError(f"scale_factors must be (sy, sx, sh, sw), got {scale_factors}")
    box_deltas, class_logits = _split_outputs(model)
    bshape, cshape = tuple(box_deltas.shape), tuple(class_logits.shape)
    if bshape[0] != 1 or cshape[0] != 1:
        raise ValueError(f"export needs a static batch of 1, got box_deltas {bshape}, class_logits {cshape}")
    if len(bshape) != 3 or bshape[2] != 4 or len(cshape) != 3 or cshape[2] != num_classes:
        raise ValueError(f"expected box_deltas [1, A, 4] and class_logits [1, A, {num_classes}], "
                         f"got {bshape} and {cshape}")
    if bshape[1] != anchors_cs.shape[0] or cshape[1] != anchors_cs.shape[0]:
        raise ValueError(f"{anchors_cs.shape[0]} anchors but the model outputs {bshape[1]} boxes")
    attributes = dict(num_classes=int(num_classes), scale_factors=[float(v) for v in scale_factors],
                      score_threshold=float(score_threshold), iou_threshold=float(iou_threshold),
                      max_detections=int(max_detections),
                      max_detections_per_class=int(max_detections_per_class),
                      use_regular_nms=bool(use_regular_nms),
                      classes_per_op=None if classes_per_op is None else int(classes_per_op))
    class_groups(int(num_classes), classes_per_op)   # validates classes_per_op
    layer = _layer_class(ns)(anchors_cs, attributes, name=LAYER_NAME)
    outputs = layer([box_deltas, class_logits])
    return ns.Model(model.inputs, outputs, name=f"{model.name}_postprocess")


def _flexbuffer_map(values: dict) -> bytes:
    """Encode a flat {str: bool | int | float} dict as a flexbuffer map (the custom-options format)."""
    from flatbuffers import flexbuffers

    fbb = flexbuffers.Builder()
    with fbb.Map():
        for key in sorted(values):
            v = values[key]
            if isinstance(v, (bool, np.bool_)):
                fbb.Bool(key, bool(v))
            elif isinstance(v, (int, np.integer)):
                fbb.Int(key, int(v))
            else:
                fbb.Float(key, float(v))
    return bytes(fbb.Finish())


def postprocess_options(tflite_model: bytes) -> list:
    """The custom options of every ``TFLite_Detection_PostProcess`` op in a .tflite, as dicts."""
    from flatbuffers import flexbuffers

    model = read_model(tflite_model)
    return [flexbuffers.Loads(bytes(bytearray(op.customOptions)))
            for sg in model.subgraphs for op in sg.operators if op_name(model, op) == OP_NAME]


def patch_postprocess_options(tflite_model: bytes, model=None, **options) -> bytes:
    """Rewrite the custom options of the post-process op(s) in converted .tflite bytes.

    The TF 2.21 converter drops ``detections_per_class`` (and may drop other
    attributes) from the stub's attribute list; this writes the full set back.

    Args:
        tflite_model: the converted flatbuffer (no keras-fpn metadata appended yet).
        model: the model returned by :func:`attach_postprocess`: its attributes
            are written.
        **options: kernel option names (``detections_per_class``, ...) to set,
            applied after ``model``'s.

    Returns:
        The new flatbuffer bytes.

    Raises:
        ValueError: the model holds no ``TFLite_Detection_PostProcess`` op.
    """
    from flatbuffers import flexbuffers

    wanted = {}
    if model is not None:
        layer = model.get_layer(LAYER_NAME)
        wanted.update(op_attributes(**{k: layer.attributes[k] for k in _ATTR_ARGS}))
    wanted.update(options)
    fb = read_model(tflite_model)
    patched = 0
    for sg in fb.subgraphs:
        for op in sg.operators:
            if op_name(fb, op) == OP_NAME:
                current = flexbuffers.Loads(bytes(bytearray(op.customOptions)))
                current.update(wanted)
                # one op per class group: its class count and rows are its tensors' shapes
                current["num_classes"] = int(sg.tensors[op.inputs[1]].shape[-1])
                current["max_detections"] = int(sg.tensors[op.outputs[0]].shape[1])
                op.customOptions = np.frombuffer(_flexbuffer_map(current), dtype=np.uint8)
                patched += 1
    if not patched:
        raise ValueError(f"the model has no {OP_NAME} op to patch")
    return write_model(fb)
