"""YOLO txt reader (Darknet / Ultralytics layout).

Iterates over the *images*: ``labels_dir/<relative image path>.txt`` holds one
row ``class cx cy w h`` per box, normalized to [0, 1] (a segmentation row
``class x1 y1 x2 y2 ...`` gives its polygon's bounding box). An image without
a label file, or with an empty one, is a background image; label files without
an image are ignored (counted at INFO level). Class id = line index in the
classes file; ``source_ids = 1..C``. Conventions: see
``keras_fpn.data.dataset``; bad-input handling: ``keras_fpn.data.issues``.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np

from keras_fpn.data.dataset import DetectionDataset, DetectionRecord, LabelMap
from keras_fpn.data.images import IMAGE_EXTENSIONS, DataError, PathLike, read_image_info
from keras_fpn.data.issues import IssueLog, clean_boxes

logger = logging.getLogger("keras_fpn.data")

CLASS_FILE_NAMES = ("classes.txt", "classes.names", "obj.names", "data.yaml", "dataset.yaml")


def read_class_names(path: PathLike) -> list:
    """Read class names from a one-name-per-line file or a YOLO ``data.yaml``.

    Args:
        path: ``classes.txt``-style file, or YAML with ``names`` (list or {id: name}).

    Returns:
        The names in id order.
    """
    path = os.fspath(path)
    if path.endswith((".yaml", ".yml")):
        import yaml
        try:
            with open(path) as f:
                names = (yaml.safe_load(f) or {}).get("names")
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"{path}: cannot read class names ({' '.join(str(e).split())})") from None
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list):
            raise DataError(f"{path}: no 'names' list")
        return [str(n) for n in names]
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read class names ({e.strerror})") from None


def _list_images(images_dir: str) -> list:
    out = []
    for root, dirs, files in os.walk(images_dir):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                out.append(os.path.join(root, name))
    return out


def read_yolo(images_dir: PathLike, labels_dir: Optional[PathLike] = None,
              classes_file: Optional[PathLike] = None, *,
              class_names: Optional[Sequence[str]] = None, strict: bool = False) -> DetectionDataset:
    """Read a YOLO dataset by iterating over its images.

    Args:
        images_dir: Image folder (searched recursively), or a dataset root
            holding ``images/`` and ``labels/``.
        labels_dir: Label folder mirroring images_dir; default ``labels``
            beside ``images`` (``.../images/x`` -> ``.../labels/x``).
        classes_file: Class names file; default the first of
            ``classes.txt``, ``classes.names``, ``obj.names``, ``data.yaml``
            found in the dataset root. Ignored when ``class_names`` is given.
        class_names: Class names in id order.
        strict: Raise DataError at the first bad item instead of skipping it.

    Returns:
        The DetectionDataset (images sorted by path; ``image_id`` = 1, 2, ...).
    """
    images_dir = os.path.abspath(os.fspath(images_dir))
    root = os.path.dirname(images_dir)
    if os.path.isdir(os.path.join(images_dir, "images")):
        root, images_dir = images_dir, os.path.join(images_dir, "images")
    if labels_dir is None:
        parts = images_dir.split(os.sep)
        idx = max(i for i, p in enumerate(parts) if p == "images") if "images" in parts else None
        if idx is None:
            raise DataError(f"{images_dir}: pass labels_dir (no 'images' folder to mirror)")
        parts[idx] = "labels"
        labels_dir = os.sep.join(parts)
        root = os.sep.join(parts[:idx]) or os.sep
    labels_dir = os.fspath(labels_dir)
    if class_names is None:
        if classes_file is None:
            for d in (root, images_dir, labels_dir, os.path.dirname(root)):
                found = [os.path.join(d, n) for n in CLASS_FILE_NAMES
                         if os.path.isfile(os.path.join(d, n))]
                if found:
                    classes_file = found[0]
                    break
        if classes_file is None:
            raise DataError(f"{root}: no classes file ({', '.join(CLASS_FILE_NAMES)}); "
                            "pass classes_file or class_names")
        class_names = read_class_names(classes_file)
    label_map = LabelMap.from_names(list(class_names))
    num_classes = label_map.num_classes
    log = IssueLog(f"read_yolo({images_dir})", strict)

    image_files = _list_images(images_dir)
    if not image_files:
        raise DataError(f"{images_dir}: no image files found")
    used_labels = set()
    records = []
    for image_path in image_files:
        rel = os.path.relpath(image_path, images_dir)
        label_path = os.path.join(labels_dir, os.path.splitext(rel)[0] + ".txt")
        try:
            info = read_image_info(image_path)
        except DataError as e:
            log.bad(image_path, str(e).split(": ", 1)[-1], "skipped image")
            continue
        boxes, classes, labels = [], [], []
        if os.path.isfile(label_path):
            used_labels.add(os.path.abspath(label_path))
            try:
                with open(label_path) as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                log.bad(label_path, f"cannot read label file ({e})", "skipped image")
                continue
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                row = _parse_row(line, n, num_classes, label_path, log)
                if row is not None:
                    classes.append(row[0])
                    boxes.append(row[1])
                    labels.append(f"line {n}")
        yxyx, keep = clean_boxes(np.array(boxes, np.float64).reshape(-1, 4), info.width,
                                 info.height, label_path, log, labels)
        records.append(DetectionRecord(
            image_path=image_path, width=info.width, height=info.height, boxes=yxyx,
            classes=np.array(classes, np.int32).reshape(-1)[keep],
            iscrowd=np.zeros(len(yxyx), bool), difficult=np.zeros(len(yxyx), bool),
            image_id=len(records) + 1))
    orphans = 0
    if os.path.isdir(labels_dir):
        for r, _, files in os.walk(labels_dir):
            orphans += sum(1 for n in files if n.endswith(".txt")
                           and os.path.abspath(os.path.join(r, n)) not in used_labels)
    if orphans:
        logger.info("%s: %d label file(s) without an image ignored", labels_dir, orphans)
    ds = DetectionDataset(tuple(records), label_map, tuple(log.issues), source=images_dir)
    log.summary(ds.num_images, ds.num_boxes)
    return ds


def _parse_row(line: str, n: int, num_classes: int, label_path: str, log: IssueLog):
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        log.bad(label_path, f"line {n} is not numeric: {line.strip()[:60]!r}", "dropped row")
        return None
    if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
        log.bad(label_path, f"line {n} has {len(values)} values, expected 'class cx cy w h' "
                "or 'class x1 y1 x2 y2 ...'", "dropped row")
        return None
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < num_classes:
        log.bad(label_path, f"line {n} has class {fields[0]} outside 0..{num_classes - 1}",
                "dropped row")
        return None
    if len(values) == 5:
        cx, cy, bw, bh = values[1:]
        box = [cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2]
    else:
        xs, ys = values[1::2], values[2::2]
        box = [min(ys), min(xs), max(ys), max(xs)]
    return int(cls), box
