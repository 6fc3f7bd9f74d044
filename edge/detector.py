"""``Detector``: run a keras-fpn .tflite model on an image and return detections in image pixels.

Handles both export signatures, told apart by the metadata's ``output`` key:

``"postprocess"``
    The model ends in ``TFLite_Detection_PostProcess``: outputs boxes
    ``[1, N, 4]`` (normalized yxyx on the model canvas), classes ``[1, N]``,
    scores ``[1, N]``, count ``[1]``. The interpreter lists these outputs in an
    order of its own, so they are mapped through the op's own output list (or,
    failing that, signature names / tensor names), never by position.
    The op's kernel loses class T when it runs on T = 2..C-1 threads (regular
    NMS split over classes, see ``fpn_export.postprocess_op``). Exports since
    the fix hold one op per 2 classes, which no thread count breaks
    (:func:`postprocess_thread_safe`, ``Detector.thread_safe``). With more than
    one thread the CPU kernels are set back to one thread after the interpreter
    is built (:func:`pin_cpu_kernel_threads`; XNNPACK keeps the threads asked
    for): required for older files (one op over 3 or more classes), and faster
    for new ones (each op's thread-pool dispatch costs more than splitting 2
    classes gains: ``benchmarks/results/nms_threads.md``).
``"raw"``
    Outputs ``box_deltas [1, A, 4]`` and ``class_logits [1, A, C]`` (float, or
    int8/uint8 dequantized with the tensors' scale and zero point); decoded and
    NMS'd in numpy by :func:`fpn_edge.postprocess.decode_detections` with the
    anchors, scale factors and NMS settings stored in the metadata.

Detections are reported for the ORIGINAL image (the letterbox is undone):
``box_xyxy`` = ``[x1, y1, x2, y2]`` in pixels (float, x right, y down, clipped
to the image) and ``box_yxyx`` = ``[ymin, xmin, ymax, xmax]`` normalized to the
original image size (the library's box convention). ``class_id`` is the model's
contiguous class id (0..C-1), ``label`` its name from the metadata.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from fpn_edge.errors import EdgeError
from fpn_edge.interpreter import LoadedInterpreter, ops_details
from fpn_edge.runner import ModelRunner, dequantize

__all__ = ["Detector", "Detection", "pin_cpu_kernel_threads", "postprocess_thread_safe", "thread_note"]

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
PP_KEYS = ("boxes", "classes", "scores", "num_detections")
#: post-process output -> its signature name as pycoral's ``detect.get_objects`` looks it up
CORAL_SIGNATURE = {"boxes": "output_3", "classes": "output_2", "scores": "output_1", "num_detections": "output_0"}
RAW_KEYS = ("box_deltas", "class_logits")


@dataclass(frozen=True)
class Detection:
    """One detection in original-image coordinates (see the module docstring)."""

    class_id: int
    label: str
    score: float
    box_xyxy: tuple     # (x1, y1, x2, y2) pixels
    box_yxyx: tuple     # (ymin, xmin, ymax, xmax) normalized to the original image

    def to_dict(self) -> dict:
        """JSON-ready dict with keys class_id, label, score, box_xyxy, box_yxyx."""
        return {"class_id": self.class_id, "label": self.label, "score": round(self.score, 6),
                "box_xyxy": [round(v, 3) for v in self.box_xyxy],
                "box_yxyx": [round(v, 6) for v in self.box_yxyx]}


def _trailing_int(name: str, default: int = 0) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else default


def _signature_outputs(interp) -> list:
    """Signature outputs as ``[(name, tensor index)]`` sorted by name's trailing number, or []."""
    try:
        sigs = interp.get_signature_list()
        if len(sigs) != 1:
            return []
        runner = interp.get_signature_runner(next(iter(sigs)))
        details = runner.get_output_details()
    except Exception:
        return []
    items = [(name, d["index"]) for name, d in details.items()]
    return sorted(items, key=lambda it: (_trailing_int(it[0]), it[0]))


def pin_cpu_kernel_threads(interp, *, warn: bool = True) -> bool:
    """Run the builtin/custom CPU kernels of an allocated interpreter on one thread.

    ``TFLite_Detection_PostProcess`` (regular NMS) hands classes to a thread
    pool of the interpreter's ``num_threads`` workers and never processes class
    ``num_threads`` when that is between 2 and C-1 (ai-edge-litert 2.3 and the
    TF kernels since ~2.8): the class is missing from the output. The pool size
    comes from the interpreter's thread count, which also sizes XNNPACK's pool;
    XNNPACK's delegate is created by ``allocate_tensors`` and keeps its pool, so
    lowering the count afterwards (``Interpreter::SetNumThreads``) only affects
    the kernels XNNPACK did not take, the post-process op among them.

    Returns:
        True when the count was set, False when the interpreter has no way to
        (then, with ``warn``, a warning says what to do).
    """
    set_threads = getattr(getattr(interp, "_interpreter", None), "SetNumThreads", None)
    if set_threads is None and not warn:
        return False
    if set_threads is None:
        import warnings

        warnings.warn("cannot set the CPU kernels of this interpreter to one thread: with 2..C-1 "
                      "threads TFLite_Detection_PostProcess drops one class; use threads=1 or "
                      ">= the number of classes, or a --raw export", RuntimeWarning, stacklevel=3)
        return False
    set_threads(1)
    return True


def postprocess_thread_safe(interp) -> bool:
    """True when no ``TFLite_Detection_PostProcess`` op of an allocated interpreter holds over 2 classes.

    The kernel skips class T on T threads only for 2 <= T <= C-1: an op of 1 or
    2 classes (its class-score input ``[1, A, C]``; a background column only
    makes this conservative) is right at every thread count. False when the
    ops cannot be listed.
    """
    ops = ops_details(interp)
    if ops is None:
        return False
    try:
        classes = [int(interp._get_tensor_details(int(op["inputs"][1]), 0)["shape"][-1])
                   for op in ops if op.get("op_name") == POSTPROCESS_OP]
    except Exception:
        return False
    return all(c <= 2 for c in classes)


def thread_note(meta: dict) -> str:
    """The ``fpn-edge info`` line on thread counts for a post-process model's metadata."""
    if meta.get("output") != "postprocess" or meta["nms"].get("thread_safe"):
        return "threads  any count gives the same detections"
    c = len(meta["labels"])
    if c <= 2:
        return "threads  any count gives the same detections (1 op of <= 2 classes)"
    return (f"threads  NOT thread-safe (exported before the fix): other runtimes must set 1 thread or "
            f">= {c} (T = 2..{c - 1} threads lose class T); fpn-edge runs the op on 1 thread; re-export to fix")


def _map_postprocess_outputs(interp, outputs: list, where) -> dict:
    """Map boxes/classes/scores/num_detections to output tensor indices."""
    out_idx = {d["index"] for d in outputs}
    # 1. The op's own output list is in its documented order (boxes, classes, scores, count).
    for op in ops_details(interp) or []:
        if op.get("op_name") == POSTPROCESS_OP:
            idx = [int(i) for i in op["outputs"]]
            if len(idx) == 4 and set(idx) <= out_idx:
                return dict(zip(PP_KEYS, idx))
    by_name = {d["name"]: d["index"] for d in outputs}
    # 2. Descriptive names (TF OD API exports): detection_boxes, detection_classes, ...
    found = {}
    for name, idx in list(by_name.items()) + _signature_outputs(interp):
        low = name.lower()
        for key, words in (("boxes", ("box",)), ("classes", ("class",)),
                           ("scores", ("score",)), ("num_detections", ("num", "count"))):
            if any(w in low for w in words):
                found.setdefault(key, idx)
    if len(found) == 4 and len(set(found.values())) == 4:
        return found
    # 3. Signature names as pycoral reads them (keras-fpn exports since the SSD convention, TF OD API):
    #    output_0 count ... output_3 boxes, told from generic names in op order (step 5) by the shapes.
    sig = dict(_signature_outputs(interp))
    shapes = {d["index"]: [int(v) for v in d["shape"]] for d in outputs}
    if all(name in sig for name in CORAL_SIGNATURE.values()):
        coral = {key: sig[CORAL_SIGNATURE[key]] for key in PP_KEYS}
        if shapes.get(coral["boxes"], [])[-1:] == [4] and shapes.get(coral["num_detections"]) == [1]:
            return coral
    # 4. Tensor names "X", "X:1", "X:2", "X:3" (the op's outputs in order).
    stems = {}
    for name, idx in by_name.items():
        stem, _, k = name.rpartition(":")
        stem, k = (stem, int(k)) if k.isdigit() else (name, 0)
        stems.setdefault(stem, {})[k] = idx
    for stem, ks in stems.items():
        if sorted(ks) == [0, 1, 2, 3]:
            return {key: ks[k] for k, key in enumerate(PP_KEYS)}
    # 5. Generic signature names output_0..output_3 in the op's order (boxes, classes, scores, count).
    order = _signature_outputs(interp)
    if len(order) == 4:
        return {key: idx for key, (_, idx) in zip(PP_KEYS, order)}
    raise EdgeError(f"{where}: cannot tell the post-process outputs apart "
                    f"(outputs: {sorted(by_name)})")


def _map_raw_outputs(interp, outputs: list, meta: dict, num_classes: int, where) -> dict:
    """Map box_deltas/class_logits to output tensor indices."""
    by_name = {d["name"]: d for d in outputs}
    named = meta.get("output_tensors") or {}
    if all(k in named and named[k] in by_name for k in RAW_KEYS):
        return {k: by_name[named[k]]["index"] for k in RAW_KEYS}
    if num_classes != 4:
        box = [d for d in outputs if len(d["shape"]) == 3 and d["shape"][-1] == 4]
        cls = [d for d in outputs if len(d["shape"]) == 3 and d["shape"][-1] == num_classes]
        if len(box) == 1 and len(cls) == 1:
            return {"box_deltas": box[0]["index"], "class_logits": cls[0]["index"]}
    sig = _signature_outputs(interp)
    if len(sig) == 2:  # keras_fpn models output [box_deltas, class_logits] in this order
        return {"box_deltas": sig[0][1], "class_logits": sig[1][1]}
    ordered = sorted(outputs, key=lambda d: (_trailing_int(d["name"]), d["name"]))
    if len(ordered) == 2:
        return {"box_deltas": ordered[0]["index"], "class_logits": ordered[1]["index"]}
    raise EdgeError(f"{where}: a raw model must have 2 outputs (box_deltas, class_logits), "
                    f"found {len(outputs)}")


class Detector(ModelRunner):
    """A loaded keras-fpn TFLite detector. Not thread-safe: use one per thread.

    Build with :meth:`from_file`. The interpreter, its tensors and the
    preprocessing buffers are allocated once and reused for every call
    (:class:`fpn_edge.runner.ModelRunner`).
    """

    task = "detection"
    command = "detect"

    def __init__(self, loaded: LoadedInterpreter, meta: dict, anchors: np.ndarray | None):
        super().__init__(loaded, meta)
        self.anchors = anchors
        where = str(self.path)
        outputs = self._outputs
        self.thread_safe = True   # raw models: numpy NMS
        if self.output_kind == "postprocess":
            self._out_map = _map_postprocess_outputs(self._interp, outputs, where)
            self.thread_safe = postprocess_thread_safe(self._interp)
            if loaded.threads is not None and loaded.threads > 1:
                # old single-op files: else class T is lost; new files: faster (see the module docstring)
                pin_cpu_kernel_threads(self._interp, warn=not self.thread_safe)
        else:
            if anchors is None:
                raise EdgeError(f"{where}: a raw model needs anchors in its metadata")
            self._out_map = _map_raw_outputs(self._interp, outputs, meta, len(self.labels), where)
            a = self._out_details[self._out_map["box_deltas"]]["shape"]
            c = self._out_details[self._out_map["class_logits"]]["shape"]
            if (len(a) != 3 or a[-1] != 4 or len(c) != 3 or c[-1] != len(self.labels)
                    or a[1] != c[1] or a[1] != anchors.shape[0]):
                raise EdgeError(f"{where}: raw outputs {list(a)} / {list(c)} do not match "
                                f"{anchors.shape[0]} anchors and {len(self.labels)} labels")
            from fpn_edge.postprocess import decode_detections  # numpy only
            self._decode = decode_detections
        box_coder = meta["box_coder"]
        self.scale_factors = tuple(float(v) for v in box_coder["scale_factors"])
        self.nms = dict(meta["nms"])

    @classmethod
    def _create(cls, loaded, meta, anchors):
        return cls(loaded, meta, anchors)

    @staticmethod
    def describe_meta(meta: dict) -> list:
        """``fpn-edge info`` lines: the box coder's scale factors and the NMS settings."""
        return [f"box coder scale factors {meta['box_coder']['scale_factors']}",
                f"nms      {json.dumps(meta['nms'])}", thread_note(meta)]

    def _read_outputs(self) -> dict:
        return {k: dequantize(self._interp.get_tensor(i), self._out_details[i])
                for k, i in self._out_map.items()}

    def raw_outputs(self, model_input: np.ndarray | None = None) -> dict:
        """Run the model and return its outputs by name, dequantized to float32.

        Args:
            model_input: a normalized float canvas (``[H, W, 3]`` or ``[1, H, W, 3]``),
                or None to run on whatever :meth:`preprocess` left in the buffer.

        Returns:
            ``{"boxes", "classes", "scores", "num_detections"}`` for post-process
            models, ``{"box_deltas", "class_logits"}`` for raw models (batch dim kept).
        """
        self.set_input(self._norm if model_input is None else model_input)
        self._interp.invoke()
        return self._read_outputs()

    # -- the whole thing ----------------------------------------------------
    def detect(self, image, *, score_threshold: float | None = None,
               max_detections: int | None = None) -> list[Detection]:
        """Detect objects in one image.

        Args:
            image: a path, a PIL image, or an ``[h, w, 3]`` uint8 RGB array.
            score_threshold: keep scores above this (default: the metadata's NMS
                score threshold). A post-process model applies its baked-in
                threshold first, so a lower value cannot bring back what it dropped.
            max_detections: keep at most this many (default: the metadata's).

        Returns:
            Detections sorted by decreasing score, in original image coordinates.
        """
        info = self.run(image)
        return self.postprocess(info, score_threshold=score_threshold, max_detections=max_detections)

    def postprocess(self, info, *, score_threshold: float | None = None,
                    max_detections: int | None = None) -> list[Detection]:
        """Turn the outputs of the last :meth:`invoke` into detections for the image ``info`` describes."""
        out = self._read_outputs()
        if self.output_kind == "postprocess":
            n = int(round(float(out["num_detections"].reshape(-1)[0])))
            boxes = out["boxes"].reshape(-1, 4)[:n]
            scores = out["scores"].reshape(-1)[:n]
            classes = out["classes"].reshape(-1)[:n]
            if score_threshold is not None:
                keep = scores > score_threshold  # keras_fpn's rule, as decode_detections
                boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            order = np.argsort(-scores, kind="stable")
            if max_detections is not None:
                order = order[:max_detections]
            boxes, scores, classes = boxes[order], scores[order], classes[order]
        else:
            nms = self.nms
            extra = {}
            if "pre_nms_top_k" in nms:  # optional; else decode_detections' default (= keras_fpn's)
                extra["pre_nms_top_k"] = None if nms["pre_nms_top_k"] is None else int(nms["pre_nms_top_k"])
            res = self._decode(
                out["box_deltas"][0], out["class_logits"][0], self.anchors,
                scale_factors=self.scale_factors,
                score_threshold=float(nms["score_threshold"] if score_threshold is None else score_threshold),
                iou_threshold=float(nms["iou_threshold"]),
                max_detections_per_class=int(nms["max_detections_per_class"]),
                max_detections=int(nms["max_detections"] if max_detections is None else max_detections),
                **extra)
            n = int(np.asarray(res["num_detections"]).reshape(-1)[0])
            boxes = np.asarray(res["boxes"]).reshape(-1, 4)[:n]
            scores = np.asarray(res["scores"]).reshape(-1)[:n]
            classes = np.asarray(res["classes"]).reshape(-1)[:n]
        return self._to_detections(boxes, scores, classes, info)

    def _to_detections(self, boxes, scores, classes, info) -> list[Detection]:
        norm = info.canvas_to_image(boxes)
        h, w = info.orig_h, info.orig_w
        dets = []
        for (y1, x1, y2, x2), s, c in zip(norm.tolist(), np.asarray(scores).tolist(),
                                          np.asarray(classes).tolist()):
            cid = int(round(c))
            label = self.labels[cid] if 0 <= cid < len(self.labels) else f"class_{cid}"
            dets.append(Detection(cid, label, float(s), (x1 * w, y1 * h, x2 * w, y2 * h),
                                  (y1, x1, y2, x2)))
        return dets
