"""keras-fpn metadata inside a .tflite file: a ZIP archive appended to the flatbuffer.

TFLite interpreters ignore bytes after the flatbuffer, and :mod:`zipfile` reads an
archive that has other data in front of it, so one file carries the model and
everything ``fpn-edge`` needs to run it. The archive is also where the standard
TFLite Model Metadata inside the flatbuffer (``fpn_edge.standard_metadata``)
finds its associated file ``labels.txt``: MediaPipe and the Task Library read
only an *uncompressed* (stored) archive, so it is written stored; older exports
with a compressed archive still read here.

Archive members:

``fpn_meta.json``
    The metadata dict (schema below).
``anchors.npy``
    ``[A, 4]`` float32 anchors, normalized ``[ymin, xmin, ymax, xmax]`` in model
    input canvas coordinates (keras_fpn's ``generate_anchors`` order). Present for
    raw models (the numpy decoder needs them); optional otherwise.
``labels.txt``
    One label per line, class id = line number (0-based). A copy of
    ``meta["labels"]`` for people and other tools; the reader uses the JSON.

``fpn_meta.json`` schema (``schema_version`` 1)::

    {
      "schema_version": 1,
      "task": "detection",
      "labels": ["raccoon", ...],            # class id i -> labels[i]; C entries
      "input": {
        "height": 320, "width": 320,         # model input canvas (H, W)
        "normalization": {                   # applied to 0..255 pixels:
          "channel_order": "RGB",            #   "RGB" | "BGR"
          "mean": [127.5, 127.5, 127.5],     #   (x - mean) / std, per channel
          "std": [127.5, 127.5, 127.5]       #   (in channel_order order)
        },
        "resize": "letterbox"                # "letterbox" | "stretch" (fpn_edge.preprocess);
      },                                     # absent (files before it): letterbox
      "output": "postprocess",               # "postprocess": boxes/classes/scores/count
                                             # "raw": box_deltas [1,A,4], class_logits [1,A,C]
      "box_coder": {"scale_factors": [10.0, 10.0, 5.0, 5.0]},   # (sy, sx, sh, sw)
      "nms": {"score_threshold": 0.05, "iou_threshold": 0.5,
              "max_detections": 100, "max_detections_per_class": 100},
      "config": {...}                        # the model's resolved keras_fpn config (free form)
    }

Optional keys:

* ``nms.pre_nms_top_k``: raw models, per-class candidate cap before NMS
  (null = none; default: that of ``fpn_edge.postprocess``).
* ``nms.thread_safe``: true when the post-process ops give the same detections
  at every interpreter thread count (exports since the fix; absent in older files,
  whose single ``TFLite_Detection_PostProcess`` op loses class T on T = 2..C-1 threads).
* ``output_tensors``: ``{"box_deltas": NAME, "class_logits": NAME}`` for raw
  models whose two outputs cannot be told apart by shape (C == 4).
* ``num_anchors``: written automatically when anchors are given.
* ``quantization``: how an ``int8-budget`` export (``keras-fpn export --max-ap-drop``) was
  quantized: ``{"full_integer": bool, "kept_float": [tensor names left float32],
  "kept_float_layers": [their Keras layers], "note": str,
  "budget": {"max_ap_drop", "met", "verdict", "reference", "chosen", "plans", ...}}``. A model
  with ``full_integer`` false runs float layers between QUANTIZE / DEQUANTIZE ops: not for the
  Edge TPU. ``quantization_summary`` gives the line ``fpn-edge info`` prints.

Segmentation models (``"task": "segmentation"``) have no ``box_coder``/``nms``;
instead::

      "labels": ["background", "circle", ...],   # K entries: channel k -> labels[k]
      "output": "logits",                    # one output seg_logits [1, H, W, K]
                                             # (float, or int8/uint8 with scale/zero point)
      "segmentation": {"background_id": 0,   # the channel that means "no object"
                       "ignore_label": 255}  # class-map value of unlabelled pixels (training)

The prediction is the argmax over K of the logits, cropped to the image's
content (``input.resize``) and mapped back to the original image (``fpn_edge.segmenter``).
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fpn_edge.atomic import write_bytes_atomic
from fpn_edge.errors import EdgeError
from fpn_edge.interpreter import check_tflite_bytes
from fpn_edge.preprocess import RESIZE_MODES

SCHEMA_VERSION = 1
META_NAME = "fpn_meta.json"
ANCHORS_NAME = "anchors.npy"
LABELS_NAME = "labels.txt"

__all__ = ["write_metadata", "read_metadata", "strip_metadata", "validate_meta", "quantization_summary", "TaskSchema",
           "TASK_SCHEMAS", "SCHEMA_VERSION", "META_NAME", "ANCHORS_NAME", "LABELS_NAME"]


def _fail(where, what: str):
    raise EdgeError(f"{where}: {what}")


def _check_detection(meta: dict, where) -> None:
    sf = meta["box_coder"].get("scale_factors") if isinstance(meta["box_coder"], dict) else None
    if sf is None or len(sf) != 4:
        _fail(where, "metadata 'box_coder.scale_factors' must hold 4 numbers (sy, sx, sh, sw)")
    nms = meta["nms"]
    for key in ("score_threshold", "iou_threshold", "max_detections", "max_detections_per_class"):
        if not isinstance(nms, dict) or key not in nms:
            _fail(where, f"metadata 'nms' lacks {key!r}")


def _check_segmentation(meta: dict, where) -> None:
    seg = meta["segmentation"]
    bg = seg.get("background_id") if isinstance(seg, dict) else None
    if not isinstance(bg, int) or not 0 <= bg < len(meta["labels"]):
        _fail(where, f"metadata 'segmentation.background_id' must be a label index, got {bg!r}")


@dataclass(frozen=True)
class TaskSchema:
    """What the metadata of one ``task`` holds besides the common keys (module docstring)."""

    #: top-level keys the task requires
    keys: tuple
    #: the ``output`` kinds its models may have
    outputs: tuple
    #: ``check(meta, where)``: raises EdgeError for malformed task keys (run after the common checks)
    check: Callable[[dict, str], None]


#: ``task`` -> its :class:`TaskSchema`; each task also has a runner in ``fpn_edge.runner.RUNNERS``
TASK_SCHEMAS = {
    "detection": TaskSchema(("box_coder", "nms"), ("postprocess", "raw"), _check_detection),
    "segmentation": TaskSchema(("segmentation",), ("logits",), _check_segmentation),
}


def validate_meta(meta: dict, where: str = "metadata") -> dict:
    """Check that ``meta`` follows the schema above.

    Args:
        meta: the metadata dict.
        where: the file name (or other context) the error message names.

    Returns:
        ``meta`` unchanged.

    Raises:
        EdgeError: naming the first missing or malformed key.
    """
    if not isinstance(meta, dict):
        _fail(where, f"keras-fpn metadata must be a JSON object, got {type(meta).__name__}")
    for key in ("task", "labels", "input", "output"):
        if key not in meta:
            _fail(where, f"keras-fpn metadata lacks the key {key!r}")
    schema = TASK_SCHEMAS.get(meta["task"])
    if schema is None:
        _fail(where, f"unsupported task {meta['task']!r} (expected one of {', '.join(TASK_SCHEMAS)})")
    for key in schema.keys:
        if key not in meta:
            _fail(where, f"keras-fpn metadata lacks the key {key!r}")
    if meta["output"] not in schema.outputs:
        _fail(where, f"metadata 'output' must be one of {schema.outputs}, got {meta['output']!r}")
    labels = meta["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(s, str) for s in labels):
        _fail(where, "metadata 'labels' must be a non-empty list of strings")
    if any("\n" in s or "\r" in s for s in labels):
        _fail(where, "a label contains a line break")
    inp = meta["input"]
    try:
        h, w = int(inp["height"]), int(inp["width"])
        norm = inp["normalization"]
        order = norm["channel_order"]
        mean = [float(v) for v in norm["mean"]]
        std = [float(v) for v in norm["std"]]
    except (KeyError, TypeError, ValueError) as e:
        _fail(where, f"metadata 'input' must hold height, width and normalization "
                     f"{{channel_order, mean[3], std[3]}} ({type(e).__name__}: {e})")
    if h <= 0 or w <= 0:
        _fail(where, f"metadata input size must be positive, got {h}x{w}")
    if order not in ("RGB", "BGR") or len(mean) != 3 or len(std) != 3 or min(std) == 0:
        _fail(where, "metadata normalization must have channel_order RGB|BGR, 3 means, 3 non-zero stds")
    if inp.get("resize", RESIZE_MODES[0]) not in RESIZE_MODES:
        _fail(where, f"metadata 'input.resize' must be one of {', '.join(RESIZE_MODES)}, got {inp['resize']!r}")
    schema.check(meta, where)
    _check_quantization(meta.get("quantization"), where)
    return meta


def _check_quantization(q, where) -> None:
    if q is None:
        return
    if not isinstance(q, dict) or not isinstance(q.get("full_integer"), bool):
        _fail(where, "metadata 'quantization' must be an object with a boolean 'full_integer'")
    kept = q.get("kept_float", [])
    if not isinstance(kept, list) or not all(isinstance(s, str) for s in kept):
        _fail(where, "metadata 'quantization.kept_float' must be a list of tensor names")


def quantization_summary(meta: dict) -> str | None:
    """One line on the ``quantization`` entry (None when the metadata has none): full integer or
    which layers stayed float, and the accuracy budget's verdict."""
    q = meta.get("quantization")
    if not q:
        return None
    kept = q.get("kept_float_layers") or q.get("kept_float", [])
    line = ("full integer" if q["full_integer"] else
            f"NOT full integer: {len(kept)} layers kept float (not for the Edge TPU): {', '.join(kept)}")
    budget = q.get("budget")
    if budget:
        chosen = budget.get("chosen", {})
        line += (f"; budget {budget.get('max_ap_drop')} % of fp32 AP, "
                 f"{'met' if budget.get('met') else 'NOT met'}: AP {chosen.get('AP', float('nan')):.4f} "
                 f"vs {budget.get('reference', {}).get('AP', float('nan')):.4f} on "
                 f"{budget.get('split', {}).get('images', '?')} training images held out")
    return line


def _flatbuffer_end(data: bytes) -> int:
    """Length of ``data`` without a trailing keras-fpn archive (``len(data)`` if none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            if META_NAME not in names:
                return len(data)
            # header_offset counts the bytes in front of the archive, so the
            # smallest one is where the appended archive starts.
            return min(info.header_offset for info in zf.infolist())
    except zipfile.BadZipFile:
        return len(data)


def strip_metadata(data: bytes) -> bytes:
    """Return the .tflite bytes without an appended keras-fpn archive."""
    return data[:_flatbuffer_end(data)]


def write_metadata(tflite_path_or_bytes, meta: dict, anchors: np.ndarray | None, out_path) -> Path:
    """Write ``out_path``: the .tflite flatbuffer with the keras-fpn archive appended.

    An archive already appended to the input is replaced, not stacked. The file is
    written to a temporary file beside ``out_path`` and renamed (atomic), so
    ``out_path`` may be the input path.

    Args:
        tflite_path_or_bytes: the .tflite file path, or its bytes.
        meta: metadata dict following the schema in this module's docstring
            (``schema_version`` is filled in when missing).
        anchors: ``[A, 4]`` normalized yxyx anchors (required when
            ``meta["output"] == "raw"``), or None.
        out_path: where to write.

    Returns:
        ``Path(out_path)``.

    Raises:
        EdgeError: malformed metadata or anchors, or an input that is not a .tflite.
    """
    if isinstance(tflite_path_or_bytes, (bytes, bytearray, memoryview)):
        data, src = bytes(tflite_path_or_bytes), "<bytes>"
    else:
        src = str(tflite_path_or_bytes)
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise EdgeError(f"{src}: cannot read model file ({e.strerror or e})") from None
    check_tflite_bytes(data, src)
    meta = dict(meta)
    meta.setdefault("schema_version", SCHEMA_VERSION)
    validate_meta(meta, where=str(out_path))
    if anchors is not None:
        anchors = np.asarray(anchors, dtype=np.float32)
        if anchors.ndim != 2 or anchors.shape[1] != 4:
            raise EdgeError(f"{out_path}: anchors must have shape [A, 4], got {list(anchors.shape)}")
        meta["num_anchors"] = int(anchors.shape[0])
    elif meta["output"] == "raw":
        raise EdgeError(f"{out_path}: a raw model needs its anchors in the metadata")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(META_NAME, json.dumps(meta, indent=2, sort_keys=True))
        zf.writestr(LABELS_NAME, "".join(f"{s}\n" for s in meta["labels"]))
        if anchors is not None:
            npy = io.BytesIO()
            np.save(npy, anchors, allow_pickle=False)
            zf.writestr(ANCHORS_NAME, npy.getvalue())
    out = Path(out_path)
    write_bytes_atomic(out, strip_metadata(data) + buf.getvalue())
    return out


def _has_archive_start(path: Path) -> bool:
    """True when the file holds the start of a keras-fpn archive (the local header of ``fpn_meta.json``,
    which ``write_metadata`` writes first) but ``zipfile`` found no whole archive: a truncated copy."""
    data = path.read_bytes()
    name = META_NAME.encode()
    at = data.find(b"PK\x03\x04")
    while at != -1:
        if data[at + 30:at + 30 + len(name)] == name:
            return True
        at = data.find(b"PK\x03\x04", at + 1)
    return False


def read_metadata(path) -> tuple[dict, np.ndarray | None]:
    """Read the keras-fpn metadata appended to a .tflite file.

    Args:
        path: the .tflite file.

    Returns:
        ``(meta, anchors)``: the validated metadata dict, and the ``[A, 4]``
        float32 anchors or None when the file holds none.

    Raises:
        EdgeError: missing file, a model without (or with broken or truncated) keras-fpn metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{path}: model file not found")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if META_NAME not in names:
                raise EdgeError(f"{path}: the model has no keras-fpn metadata ({META_NAME}); "
                                "export it with `keras-fpn export`")
            meta = json.loads(zf.read(META_NAME).decode("utf-8"))
            anchors = None
            if ANCHORS_NAME in names:
                anchors = np.load(io.BytesIO(zf.read(ANCHORS_NAME)), allow_pickle=False)
    except zipfile.BadZipFile:
        if _has_archive_start(path):
            raise EdgeError(f"{path}: the file is truncated: its keras-fpn metadata archive is incomplete "
                            f"({path.stat().st_size} bytes); copy or export it again") from None
        raise EdgeError(f"{path}: the model has no keras-fpn metadata; "
                        "export it with `keras-fpn export`") from None
    except (ValueError, KeyError, OSError, EOFError, zipfile.LargeZipFile) as e:
        raise EdgeError(f"{path}: broken keras-fpn metadata ({type(e).__name__}: {e})") from None
    validate_meta(meta, where=str(path))
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise EdgeError(f"{path}: metadata schema_version {meta['schema_version']} is newer than "
                        f"this fpn_edge understands ({SCHEMA_VERSION}); upgrade keras-fpn[edge]")
    if anchors is not None:
        anchors = np.asarray(anchors, dtype=np.float32)
        if anchors.ndim != 2 or anchors.shape[1] != 4:
            raise EdgeError(f"{path}: anchors.npy must have shape [A, 4], got {list(anchors.shape)}")
    if meta["output"] == "raw" and anchors is None:
        raise EdgeError(f"{path}: a raw model's metadata lacks {ANCHORS_NAME}")
    return meta, anchors
