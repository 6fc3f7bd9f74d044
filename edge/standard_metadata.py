"""Read the standard TFLite Model Metadata of a .tflite (``TFLITE_METADATA``), without TensorFlow.

The metadata MediaPipe and the TFLite Task Library read (``fpn_export.interop``
writes it) is a flatbuffer (schema ``metadata_schema.fbs``, identifier ``M001``) in one
of the model's buffers, named by an entry of ``Model.metadata``. This module walks the
two flatbuffers with ``struct`` (no generated code, no ``flatbuffers`` package: the edge
runtime stays numpy + Pillow + the interpreter) and returns the few fields ``fpn-edge
info`` shows; its associated files are looked up in the appended archive
(``fpn_edge.metadata``).
"""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Optional

from fpn_edge.errors import EdgeError

__all__ = ["read_standard_metadata", "describe_standard_metadata", "METADATA_NAME"]

METADATA_NAME = "TFLITE_METADATA"
_FILE_TYPES = {0: "UNKNOWN", 1: "DESCRIPTIONS", 2: "TENSOR_AXIS_LABELS", 3: "TENSOR_VALUE_LABELS",
               4: "TENSOR_AXIS_SCORE_CALIBRATION", 5: "VOCABULARY", 6: "SCANN_INDEX_FILE"}
_CONTENT = {1: "feature", 2: "image", 3: "bounding box", 4: "audio"}


class _Table:
    """One flatbuffer table at ``pos`` of ``buf``."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def _offset(self, slot: int) -> int:
        at = 4 + 2 * slot
        return struct.unpack_from("<H", self.buf, self.vtable + at)[0] if at < self.vtable_len else 0

    def scalar(self, slot: int, fmt: str, default=0):
        off = self._offset(slot)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def _indirect(self, slot: int) -> Optional[int]:
        off = self._offset(slot)
        if not off:
            return None
        at = self.pos + off
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, slot: int) -> Optional["_Table"]:
        at = self._indirect(slot)
        return None if at is None else _Table(self.buf, at)

    def _vector(self, slot: int) -> tuple:
        at = self._indirect(slot)
        return (0, 0) if at is None else (at + 4, struct.unpack_from("<I", self.buf, at)[0])

    def string(self, slot: int) -> Optional[str]:
        start, n = self._vector(slot)
        return None if self._indirect(slot) is None else self.buf[start:start + n].decode("utf-8", "replace")

    def bytes(self, slot: int) -> bytes:
        start, n = self._vector(slot)
        return self.buf[start:start + n]

    def numbers(self, slot: int, fmt: str) -> list:
        start, n = self._vector(slot)
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, start)) if n else []

    def tables(self, slot: int) -> list:
        start, n = self._vector(slot)
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0])
                for i in range(n)]

    def strings(self, slot: int) -> list:
        start, n = self._vector(slot)
        out = []
        for i in range(n):
            at = start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0]
            size = struct.unpack_from("<I", self.buf, at)[0]
            out.append(self.buf[at + 4:at + 4 + size].decode("utf-8", "replace"))
        return out


def _root(buf: bytes) -> _Table:
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def _metadata_blob(data: bytes) -> Optional[bytes]:
    """The ``TFLITE_METADATA`` buffer of a .tflite, or None."""
    model = _root(data)
    for entry in model.tables(6):                          # Model.metadata: [Metadata{name 0, buffer 1}]
        if entry.string(0) == METADATA_NAME:
            buffers = model.tables(4)                      # Model.buffers: [Buffer{data 0, offset 1, size 2}]
            buf = buffers[entry.scalar(1, "I")]
            offset, size = buf.scalar(1, "Q"), buf.scalar(2, "Q")
            return data[offset:offset + size] if offset > 1 else buf.bytes(0)
    return None


def _file(t: _Table) -> dict:
    return {"name": t.string(0), "type": _FILE_TYPES.get(t.scalar(2, "b"), "?")}


def _tensor(t: _Table) -> dict:
    out = {"name": t.string(0), "description": t.string(1),
           "associated_files": [_file(f) for f in t.tables(6)]}
    content = t.table(3)
    if content is not None:
        out["content"] = _CONTENT.get(content.scalar(0, "B"), "?")
    for unit in t.tables(4):                               # ProcessUnit{options_type 0, options 1}
        if unit.scalar(0, "B") == 1:                       # NormalizationOptions{mean 0, std 1}
            opts = unit.table(1)
            out["normalization"] = {"mean": opts.numbers(0, "f"), "std": opts.numbers(1, "f")}
    return out


def read_standard_metadata(path) -> Optional[dict]:
    """The standard TFLite metadata of a .tflite (``None`` when it has none).

    Returns:
        ``{"name", "description", "version", "author", "min_parser_version", "inputs": [tensor],
        "outputs": [tensor] (model output order), "output_groups": {name: [tensor names]},
        "custom_metadata": [names], "associated_files": [{"name", "type", "in_archive"}]}``;
        a tensor is ``{"name", "description", "content", "normalization"?, "associated_files"}``.

    Raises:
        EdgeError: the file cannot be read, or its metadata flatbuffer is malformed.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        blob = _metadata_blob(data)
        if blob is None:
            return None
        if blob[4:8] != b"M001":
            raise EdgeError(f"{path}: {METADATA_NAME} is not a metadata flatbuffer (identifier {blob[4:8]!r})")
        root = _root(blob)
        sub = (root.tables(3) or [None])[0]
        meta = {"name": root.string(0), "description": root.string(1), "version": root.string(2),
                "author": root.string(4), "min_parser_version": root.string(7),
                "inputs": [], "outputs": [], "output_groups": {}, "custom_metadata": []}
        files = [_file(f) for f in root.tables(6)]
        if sub is not None:
            meta["inputs"] = [_tensor(t) for t in sub.tables(2)]
            meta["outputs"] = [_tensor(t) for t in sub.tables(3)]
            meta["output_groups"] = {g.string(0): g.strings(1) for g in sub.tables(8)}
            meta["custom_metadata"] = [c.string(0) for c in sub.tables(9)]
            for t in meta["inputs"] + meta["outputs"]:
                files += t["associated_files"]
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise EdgeError(f"{path}: malformed {METADATA_NAME} ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise EdgeError(f"{path}: cannot read model file ({e.strerror or e})") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            stored = {i.filename: i.compress_type == zipfile.ZIP_STORED for i in zf.infolist()}
    except zipfile.BadZipFile:
        stored = {}
    unique = {f["name"]: f for f in files}
    meta["associated_files"] = [dict(f, in_archive="stored" if stored.get(n) else
                                     "compressed" if n in stored else "missing") for n, f in unique.items()]
    return meta


def describe_standard_metadata(meta: Optional[dict]) -> list:
    """The lines ``fpn-edge info`` prints for ``read_standard_metadata``'s result."""
    if meta is None:
        return ["standard metadata: none (MediaPipe / the Task Library cannot run this file)"]
    out = [f"standard metadata ({METADATA_NAME}, min parser {meta['min_parser_version']}): "
           f"{meta['name']} {meta['version']} by {meta['author']}"]
    for t in meta["inputs"]:
        norm = t.get("normalization")
        out.append(f"  input   {t['name']} ({t.get('content', '-')})"
                   + (f", mean {norm['mean']}, std {norm['std']}" if norm else ""))
    out.append("  outputs " + ", ".join(repr(t["name"]) for t in meta["outputs"]) + " (model output order)")
    for name, tensors in meta["output_groups"].items():
        out.append(f"  group   {name}: {', '.join(tensors)}")
    if meta["custom_metadata"]:
        out.append(f"  custom  {', '.join(meta['custom_metadata'])}")
    for f in meta["associated_files"]:
        out.append(f"  file    {f['name']} ({f['type']}; in the archive: {f['in_archive']})")
    return out
