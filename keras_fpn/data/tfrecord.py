"""TF Object Detection API TFRecord reader and writer.

Features (``tf.train.Example``): ``image/encoded``, ``image/format``,
``image/height``, ``image/width``, ``image/filename``, ``image/source_id``,
``image/object/bbox/{xmin,xmax,ymin,ymax}`` (normalized), ``image/object/class/
label`` (1-based in the OD API; kept as the label map's ``source_ids``),
``image/object/class/text``, optional ``image/object/is_crowd`` and
``image/object/difficult``.

Reading extracts every encoded image to a cache folder (the pipeline and the
tools decode files by path, like every other format); records point there.
Writing stores a file's original bytes when a plain decoder sees what
``load_image`` sees (JPEG or PNG content, RGB or L, no EXIF rotation); anything
else (RGBA, palette, CMYK, EXIF-rotated) is re-encoded as lossless PNG of the
``load_image`` pixels, so ``tf.io.decode_image`` in any OD API consumer gets
the same image. ``image/format`` always names the real content.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import re
import tempfile
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from fpn_edge.atomic import atomic_path, write_bytes_atomic
from keras_fpn.data.dataset import DetectionDataset, DetectionRecord, LabelMap
from keras_fpn.data.images import DataError, PathLike, load_image, read_image_info, sniff_format
from keras_fpn.data.issues import IssueLog, clean_boxes, resolve_size


def _expand(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        matches = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p]
        if not matches:
            raise DataError(f"{p}: no TFRecord files match")
        out.extend(matches)
    for p in out:
        if not os.path.isfile(p):
            raise DataError(f"{p}: TFRecord file not found")
    return out


def _default_cache_dir(files: list) -> str:
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return os.path.join(tempfile.gettempdir(), "keras_fpn_tfrecord", h.hexdigest()[:16])


def _feature(ex, key):
    feat = ex.features.feature.get(key)
    if feat is None:
        return []
    kind = feat.WhichOneof("kind")
    return list(getattr(feat, kind).value) if kind else []


def read_tfrecord(paths: Union[PathLike, Sequence[PathLike]], *, extract_dir: Optional[PathLike] = None,
                  class_names: Optional[Sequence[str]] = None,
                  strict: bool = False) -> DetectionDataset:
    """Read TF OD API TFRecord files, extracting the images to a folder.

    Args:
        paths: One file, a glob pattern, or a list of them (shards).
        extract_dir: Where images are written as ``<n>_<filename>``. Default: a
            folder under the system temp dir keyed by the files' path, size and
            mtime (reused by later calls; files already there are kept).
        class_names: Names for labels 1..C, used when ``class/text`` is absent
            (and to fix the label map to all C classes).
        strict: Raise DataError at the first bad item instead of skipping it.

    Returns:
        The DetectionDataset (``image_id`` = numeric ``source_id``, else the
        example's position 1, 2, ...; duplicates are skipped).
    """
    import tensorflow as tf

    files = _expand(paths)
    out_dir = os.fspath(extract_dir) if extract_dir is not None else _default_cache_dir(files)
    os.makedirs(out_dir, exist_ok=True)
    log = IssueLog(f"read_tfrecord({', '.join(files)})", strict)

    items, label_names = [], {}
    if class_names is not None:
        label_names = {i + 1: str(n) for i, n in enumerate(class_names)}
    index = 0
    for f in files:
        try:
            for raw in tf.data.TFRecordDataset(f).as_numpy_iterator():
                index += 1
                where = f"{f} (example {index})"
                try:
                    ex = tf.train.Example.FromString(raw)
                except Exception as e:  # protobuf DecodeError
                    log.bad(where, f"not a tf.train.Example ({e})", "skipped image")
                    continue
                items.append((where, index, ex))
        except tf.errors.DataLossError as e:
            reason = re.sub(r"\{\{.*?\}\}", "", getattr(e, "message", "") or str(e))  # TF's node name
            log.bad(f, f"corrupt or truncated TFRecord file ({' '.join(reason.split())[:120]})", "skipped file")

    records, seen_ids = [], set()
    parsed = []
    for where, index, ex in items:
        encoded = _feature(ex, "image/encoded")
        if not encoded or not encoded[0]:
            log.bad(where, "no image/encoded bytes", "skipped image")
            continue
        data = encoded[0]
        fmt = sniff_format(data) or "img"
        fname = (_feature(ex, "image/filename") or [b""])[0].decode("utf-8", "replace")
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(fname)) or "image"
        stem, ext = os.path.splitext(base)
        ext = {"jpeg": ".jpg", "png": ".png"}.get(fmt, ext or ".img")
        path = os.path.join(out_dir, f"{index:06d}_{stem}{ext}")
        if not (os.path.isfile(path) and os.path.getsize(path) == len(data)):
            write_bytes_atomic(path, data)
        sid = (_feature(ex, "image/source_id") or [b""])[0].decode("utf-8", "replace")
        image_id = int(sid) if sid.isdigit() else index
        if image_id in seen_ids:
            log.bad(where, f"duplicate image id {image_id}", "skipped image")
            continue
        seen_ids.add(image_id)
        try:
            info = read_image_info(path)
        except DataError as e:
            log.bad(where, str(e).split(": ", 1)[-1], "skipped image")
            continue
        h0 = (_feature(ex, "image/height") or [0])[0]
        w0 = (_feature(ex, "image/width") or [0])[0]
        size = resolve_size(w0, h0, info, where, log)
        if size is None:
            continue
        coords = [_feature(ex, f"image/object/bbox/{k}") for k in ("ymin", "xmin", "ymax", "xmax")]
        labels = _feature(ex, "image/object/class/label")
        texts = [t.decode("utf-8", "replace") for t in _feature(ex, "image/object/class/text")]
        n = len(coords[0])
        if any(len(c) != n for c in coords) or (labels and len(labels) != n) or (
                texts and len(texts) != n) or (not labels and not texts and n):
            log.bad(where, f"object features have different lengths (bbox {[len(c) for c in coords]}, "
                    f"label {len(labels)}, text {len(texts)})", "skipped image")
            continue
        if not labels and texts:  # text only: ids in order of first appearance
            for t in texts:
                if t not in label_names.values():
                    label_names[max(label_names, default=0) + 1] = t
            by_name = {v: k for k, v in label_names.items()}
            labels = [by_name[t] for t in texts]
        for lab, t in zip(labels, texts or [None] * n):
            if t is not None:
                label_names.setdefault(int(lab), t)
        crowd = _feature(ex, "image/object/is_crowd") or [0] * n
        diff = _feature(ex, "image/object/difficult") or [0] * n
        parsed.append((where, path, size, image_id, np.array(coords, np.float64).T.reshape(-1, 4),
                       [int(v) for v in labels], crowd, diff))

    all_labels = sorted(set(label_names) | {lab for p in parsed for lab in p[5]})
    label_map = LabelMap(tuple(label_names.get(i, str(i)) for i in all_labels), tuple(all_labels))
    for where, path, (w, h), image_id, yxyx, labels, crowd, diff in parsed:
        boxes, keep = clean_boxes(yxyx, w, h, where, log, [f"object {k}" for k in range(len(yxyx))])
        records.append(DetectionRecord(
            image_path=path, width=w, height=h, boxes=boxes,
            classes=np.array([label_map.from_source(v) for v in labels], np.int32).reshape(-1)[keep],
            iscrowd=np.array(crowd, bool).reshape(-1)[keep],
            difficult=np.array(diff, bool).reshape(-1)[keep], image_id=image_id))
    ds = DetectionDataset(tuple(records), label_map, tuple(log.issues), source=",".join(files))
    log.summary(ds.num_images, ds.num_boxes)
    return ds


def _encoded_image(path: str) -> tuple:
    """Return (bytes, format) that decode to exactly what load_image returns."""
    info = read_image_info(path)
    with open(path, "rb") as f:
        data = f.read()
    fmt = sniff_format(data)
    if fmt in ("jpeg", "png") and info.mode in ("RGB", "L") and info.orientation == 1:
        with Image.open(io.BytesIO(data)) as img:
            if "transparency" not in img.info:
                return data, fmt
    buf = io.BytesIO()
    Image.fromarray(load_image(path)).save(buf, format="PNG")
    return buf.getvalue(), "png"


def write_tfrecord(dataset: DetectionDataset, path: PathLike, *, num_shards: int = 1) -> list:
    """Write a dataset as TF OD API TFRecord file(s), atomically per file.

    Args:
        dataset: The DetectionDataset; labels are ``label_map.source_ids``.
        path: Output file; with ``num_shards > 1`` files are named
            ``<path>-00000-of-0000N``.
        num_shards: Number of shard files (records go round-robin).

    Returns:
        The written file paths.
    """
    import tensorflow as tf

    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    outs = [path] if num_shards == 1 else [f"{path}-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]

    def b(vals):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=vals))

    def i64(vals):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in vals]))

    def f32(vals):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in vals]))

    # each shard is renamed into place only when all are written; an error removes them all
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in outs]
        writers = [stack.enter_context(tf.io.TFRecordWriter(str(t))) for t in tmps]  # closed first
        for k, r in enumerate(dataset.records):
            data, fmt = _encoded_image(r.image_path)
            names = [dataset.label_map.names[c].encode() for c in r.classes]
            feats = {
                "image/encoded": b([data]), "image/format": b([fmt.encode()]),
                "image/height": i64([r.height]), "image/width": i64([r.width]),
                "image/filename": b([os.path.basename(r.image_path).encode()]),
                "image/source_id": b([str(r.image_id).encode()]),
                "image/key/sha256": b([hashlib.sha256(data).hexdigest().encode()]),
                "image/object/bbox/ymin": f32(r.boxes[:, 0]), "image/object/bbox/xmin": f32(r.boxes[:, 1]),
                "image/object/bbox/ymax": f32(r.boxes[:, 2]), "image/object/bbox/xmax": f32(r.boxes[:, 3]),
                "image/object/class/label": i64([dataset.label_map.to_source(c) for c in r.classes]),
                "image/object/class/text": b(names),
                "image/object/is_crowd": i64(r.iscrowd), "image/object/difficult": i64(r.difficult),
            }
            ex = tf.train.Example(features=tf.train.Features(feature=feats))
            writers[k % num_shards].write(ex.SerializeToString())
    return outs
