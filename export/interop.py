"""What other runtimes read in an export: standard TFLite Model Metadata and the SSD output convention.

**Output convention** (post-process detectors): the model outputs are the op's
outputs in the op's order — boxes ``[1, N, 4]``, classes ``[1, N]``, scores
``[1, N]``, count ``[1]`` (what a runtime that reads outputs by position
expects, pycoral's fallback included) — and the serving signature names them
as pycoral's ``detect.get_objects`` looks them up: ``output_0`` count,
``output_1`` scores, ``output_2`` classes, ``output_3`` boxes
(``CORAL_SIGNATURE``). The converter writes them in an order of its own under
descriptive names; ``attach_standard_metadata`` reorders and renames them
(tensor indices, hence the values, do not change). This holds for the graph
of one op per 2 classes and its merge (``fpn_export.postprocess_op``) alike.

**Standard TFLite Model Metadata** (schema ``metadata_schema.fbs`` 1.5, identifier ``M001``):

The metadata MediaPipe Tasks (``ObjectDetector``, ``ImageSegmenter``), the
TFLite Task Library and Android Studio read, written with the ``flatbuffers``
package from the published schema (DESIGN.md says why not with MediaPipe's or
tflite-support's writer). ``standard_metadata`` builds the ``ModelMetadata``
flatbuffer of an export from its ``fpn_meta.json`` dict; ``attach_standard_metadata``
stores it in the model's ``metadata`` list under ``TFLITE_METADATA`` (one buffer,
replaced when present). The associated file it names, ``labels.txt``, is the
one of the keras-fpn archive (``fpn_edge.metadata``): one uncompressed ZIP
appended to the flatbuffer carries both.

What is written, per export kind:

* every export: the image input (``ImageProperties`` RGB, ``NormalizationOptions``
  mean / std per channel, ``Stats`` min / max of the normalized values);
* detector with the post-process: the four outputs named ``location``,
  ``category``, ``score``, ``number of detections`` — found by their signature
  names (``fpn_export.postprocess_op.OUTPUT_NAMES``; a graph of one op: its own
  output list), never by their position among the model outputs (the converter
  writes them as count, boxes, classes, scores); boxes ``BOUNDARIES`` in ``RATIO``
  coordinates, index ``[1, 0, 3, 2]`` (the op's ymin, xmin, ymax, xmax);
  ``category`` values are label-file lines (``TENSOR_VALUE_LABELS``); output
  group ``detection_result``;
* raw detector: the two outputs named by their signature names
  (``box_deltas``, ``class_logits`` with the labels as ``TENSOR_AXIS_LABELS``);
  no standard runtime decodes them;
* segmenter: output ``segmentation_masks`` ``[1, H, W, K]`` with the K labels
  (background first) as ``TENSOR_AXIS_LABELS``, and MediaPipe's
  ``SEGMENTER_METADATA`` custom metadata (activation ``SOFTMAX``: the
  outputs are logits; the category mask is their argmax either way).

The standard schema has no channel order: a BGR model (``resnet50``) gets its
normalization in BGR order and says so in the input's description; standard
runtimes feed RGB to it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from fpn_edge.detector import CORAL_SIGNATURE as _EDGE_CORAL, PP_KEYS
from fpn_export.errors import ExportError

__all__ = ["standard_metadata", "attach_standard_metadata", "METADATA_NAME", "LABELS_FILE",
           "DETECTION_OUTPUT_NAMES", "CORAL_SIGNATURE", "MIN_PARSER_VERSION"]

METADATA_NAME = "TFLITE_METADATA"           # Model.metadata entry the readers look up
LABELS_FILE = "labels.txt"                  # the associated file (the keras-fpn archive's labels.txt)
#: op output position -> the standard output name (MediaPipe / Task Library find them by these names)
DETECTION_OUTPUT_NAMES = ("location", "category", "score", "number of detections")
#: op output position (boxes, classes, scores, count) -> signature output name, as pycoral's
#: ``detect.get_objects`` (2.x) and TF Object Detection API TFLite exports name them
CORAL_SIGNATURE = {k: _EDGE_CORAL[key] for k, key in enumerate(PP_KEYS)}   # 0 boxes -> output_3, ..., 3 count -> output_0
#: 1.2.0: output_tensor_groups; 1.5.0: custom_metadata (segmenter)
MIN_PARSER_VERSION = {"detection": "1.2.0", "segmentation": "1.5.0"}

# enums of metadata_schema.fbs
_VALUE_LABELS, _AXIS_LABELS = 3, 2                      # AssociatedFileType
_RGB, _GRAYSCALE = 1, 2                                  # ColorSpaceType
_FEATURE, _IMAGE, _BBOX = 1, 2, 3                        # ContentProperties union
_NORMALIZATION = 1                                       # ProcessUnitOptions union
_BOUNDARIES, _RATIO = 1, 0                               # BoundingBoxType, CoordinateType
_SOFTMAX = 2                                             # mediapipe.tasks Activation


class _Writer:
    """Tables of a flatbuffer, children first: each ``table`` call gets offsets made before it."""

    def __init__(self):
        import flatbuffers

        self.b = flatbuffers.Builder(1024)
        self.b.ForceDefaults(True)        # write every scalar given, defaults included

    def string(self, s: Optional[str]):
        return None if s is None else self.b.CreateString(s)

    def offsets(self, items):
        items = [i for i in items if i is not None]
        self.b.StartVector(4, len(items), 4)
        for off in reversed(items):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def numbers(self, values, dtype):
        return self.b.CreateNumpyVector(np.asarray(values, dtype=dtype))

    def bytes16(self, data: bytes):
        """A ``[ubyte] (force_align: 16)`` vector."""
        self.b.StartVector(1, len(data), 16)
        for v in reversed(data):
            self.b.PrependUint8(v)
        return self.b.EndVector()

    def table(self, *fields):
        """``fields``: ``(slot, kind, value)``; kind ``"off"`` (an offset), ``"i8"``, ``"u8"``, ``"i32"``, ``"u32"``."""
        prepend = {"off": self.b.PrependUOffsetTRelativeSlot, "i8": self.b.PrependInt8Slot,
                   "u8": self.b.PrependUint8Slot, "i32": self.b.PrependInt32Slot, "u32": self.b.PrependUint32Slot}
        self.b.StartObject(1 + max(slot for slot, _, _ in fields) if fields else 0)
        for slot, kind, value in fields:
            if value is not None:
                prepend[kind](slot, value, 0)
        return self.b.EndObject()

    def finish(self, root, identifier: bytes) -> bytes:
        self.b.Finish(root, file_identifier=identifier)
        return bytes(self.b.Output())


def _file(w: _Writer, name: str, kind: int, description: str):
    # AssociatedFile: name 0, description 1, type 2
    return w.table((0, "off", w.string(name)), (1, "off", w.string(description)), (2, "i8", kind))


def _content(w: _Writer, kind: int, props, value_range: Optional[int] = None):
    # Content: content_properties_type 0, content_properties 1, range 2 (ValueRange: min 0, max 1)
    rng = None if value_range is None else w.table((0, "i32", value_range), (1, "i32", value_range))
    return w.table((0, "u8", kind), (1, "off", props), (2, "off", rng))


def _tensor(w: _Writer, name: str, description: str, content=None, units=None, stats=None, files=None):
    # TensorMetadata: name 0, description 1, dimension_names 2, content 3, process_units 4, stats 5, files 6
    return w.table((0, "off", w.string(name)), (1, "off", w.string(description)), (3, "off", content),
                   (4, "off", units), (5, "off", stats), (6, "off", files))


def _image_input(w: _Writer, norm: dict, height: int, width: int):
    mean = np.asarray(norm["mean"], np.float32)
    std = np.asarray(norm["std"], np.float32)
    size = w.table((0, "u32", int(width)), (1, "u32", int(height)))             # ImageSize
    props = w.table((0, "i8", _RGB), (1, "off", size))                           # ImageProperties
    content = _content(w, _IMAGE, props)
    options = w.table((0, "off", w.numbers(mean, np.float32)), (1, "off", w.numbers(std, np.float32)))
    unit = w.table((0, "u8", _NORMALIZATION), (1, "off", options))               # ProcessUnit
    stats = w.table((0, "off", w.numbers((255.0 - mean) / std, np.float32)),    # Stats: max 0, min 1
                    (1, "off", w.numbers((0.0 - mean) / std, np.float32)))
    order = norm["channel_order"]
    text = (f"{height}x{width} {order} image, 0..255 pixels normalized as (x - mean) / std "
            f"(float models; uint8 models take the raw pixels), stretched to the input size")
    if order != "RGB":
        text += f"; NOTE: the model expects {order} channel order, standard runtimes feed RGB"
    return _tensor(w, "image", text, content, w.offsets([unit]), stats)


def _detection_outputs(w: _Writer, op_positions: list, labels_file):
    """Tensor metadata of the post-process outputs, in model output order (``op_positions[i]``: op output of
    model output i)."""
    made = {}
    for k in sorted(set(op_positions)):
        name = DETECTION_OUTPUT_NAMES[k]
        if k == 0:
            index = w.numbers([1, 0, 3, 2], np.uint32)
            props = w.table((0, "off", index), (1, "i8", _BOUNDARIES), (2, "i8", _RATIO))
            made[k] = _tensor(w, name, "boxes [1, N, 4]: ymin, xmin, ymax, xmax in 0..1 of the input",
                              _content(w, _BBOX, props, 2))
        elif k == 1:
            made[k] = _tensor(w, name, "class ids [1, N] (float): line of labels.txt",
                              _content(w, _FEATURE, w.table(), 2), files=w.offsets([labels_file()]))
        elif k == 2:
            made[k] = _tensor(w, name, "scores [1, N] in 0..1", _content(w, _FEATURE, w.table(), 2))
        else:
            made[k] = _tensor(w, name, "number of valid detections [1] (float)")
    return [made[k] for k in op_positions]


def standard_metadata(meta: dict, *, output_names: list, version: str = "",
                      op_positions: Optional[list] = None) -> bytes:
    """The ``ModelMetadata`` flatbuffer of an export.

    Args:
        meta: the export's ``fpn_meta.json`` dict (``fpn_edge.metadata`` schema).
        output_names: the model's output tensor names in subgraph output order (raw exports: their
            signature names; used as the standard names there).
        version: the keras-fpn version that wrote it.
        op_positions: post-process exports: for each model output, its position in the op's output
            list (0 boxes, 1 classes, 2 scores, 3 count).
    """
    task, kind = meta["task"], meta["output"]
    labels = meta["labels"]
    w = _Writer()

    def labels_file(axis: bool = False):
        what = "channel k" if axis else "class id i"
        return _file(w, LABELS_FILE, _AXIS_LABELS if axis else _VALUE_LABELS, f"{len(labels)} labels, {what} = line")

    image = _image_input(w, meta["input"]["normalization"], meta["input"]["height"], meta["input"]["width"])
    groups = custom = None
    if task == "detection" and kind == "postprocess":
        if sorted(op_positions or []) != [0, 1, 2, 3]:
            raise ExportError(f"post-process outputs not found: op positions {op_positions}")
        outputs = _detection_outputs(w, op_positions, labels_file)
        names = w.offsets([w.string(DETECTION_OUTPUT_NAMES[k]) for k in range(3)])
        groups = w.offsets([w.table((0, "off", w.string("detection_result")), (1, "off", names))])
    elif task == "detection":
        outputs = [_tensor(w, n, "raw head output (keras-fpn anchors and box coder in fpn_meta.json)",
                           files=w.offsets([labels_file(axis=True)]) if "logits" in n else None)
                   for n in output_names]
    elif task == "segmentation":
        outputs = [_tensor(w, "segmentation_masks", f"logits [1, H, W, {len(labels)}]; argmax = class",
                           _content(w, _IMAGE, w.table((0, "i8", _GRAYSCALE))), files=w.offsets([labels_file(axis=True)]))]
        opts = _Writer()
        opts_bytes = opts.finish(opts.table((0, "i8", _SOFTMAX)), b"V001")   # ImageSegmenterOptions
        custom = w.offsets([w.table((0, "off", w.string("SEGMENTER_METADATA")),
                                    (1, "off", w.bytes16(opts_bytes)))])
    else:
        raise ExportError(f"no standard metadata for task {task!r}")
    ins, outs = w.offsets([image]), w.offsets(outputs)
    sub = w.table((2, "off", ins), (3, "off", outs), (8, "off", groups), (9, "off", custom))
    name = meta.get("config", {}).get("name") or f"keras-fpn {task}"
    root = w.table((0, "off", w.string(str(name))),
                   (1, "off", w.string(f"keras-fpn {task} export ({meta['export']['mode']}); "
                                       f"keras-fpn settings in fpn_meta.json")),
                   (2, "off", w.string(version or "unknown")), (3, "off", w.offsets([sub])),
                   (4, "off", w.string("keras-fpn")),
                   (6, "off", w.offsets([labels_file(axis=task == "segmentation")])),
                   (7, "off", w.string(MIN_PARSER_VERSION[task])))
    return w.finish(root, b"M001")


def _postprocess_tensors(model, data: bytes) -> list:
    """Tensor indices of boxes, classes, scores, count: the signature's names (descriptive, or pycoral's after
    an earlier pass), else the one op's own output list when its outputs are the model outputs (a graph
    of one op); never the model output order."""
    from fpn_export.flatbuffer import read_graph, signature_outputs
    from fpn_export.postprocess_op import OP_NAME, OUTPUT_NAMES

    sig = signature_outputs(model)
    for names in (OUTPUT_NAMES, tuple(CORAL_SIGNATURE[k] for k in range(4))):
        if all(n in sig for n in names):
            return [sig[n] for n in names]
    g = read_graph(data)
    ops = [o for o in g.ops if o.name == OP_NAME]
    if len(ops) == 1 and {t.index for t in ops[0].outputs} == {t.index for t in g.outputs}:
        return [t.index for t in ops[0].outputs]
    raise ExportError(f"cannot find the post-process outputs: {len(ops)} {OP_NAME} op(s), "
                      f"signature outputs {sorted(sig)}")


def attach_standard_metadata(data: bytes, meta: dict, *, version: str = "") -> bytes:
    """``data`` (a .tflite flatbuffer) with the standard metadata of ``meta`` in ``TFLITE_METADATA``
    (replaced if present); a post-process detector's outputs also get the SSD convention
    (``CORAL_SIGNATURE``, module docstring)."""
    from fpn_export.flatbuffer import read_graph, read_model, set_metadata, set_outputs, write_model

    model = read_model(data)
    positions = None
    if meta["output"] == "postprocess":
        tensors = _postprocess_tensors(model, data)
        set_outputs(model, tensors, {t: CORAL_SIGNATURE[k] for k, t in enumerate(tensors)})
        positions = [0, 1, 2, 3]
        names = list(DETECTION_OUTPUT_NAMES)
    else:
        names = [t.name for t in read_graph(data).outputs]
        by_tensor = {v: k for k, v in (meta.get("output_tensors") or {}).items()}
        names = [by_tensor.get(n, n) for n in names]
    blob = standard_metadata(meta, output_names=names, version=version, op_positions=positions)
    set_metadata(model, METADATA_NAME, blob)
    return write_model(model)
