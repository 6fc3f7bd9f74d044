"""Pascal VOC XML reader.

One XML per image with ``<filename>``, ``<size>`` and ``<object>`` entries
(``<name>``, ``<difficult>``, ``<bndbox>`` xmin/ymin/xmax/ymax in pixels).
Pixel values are used as they are (TF OD API's converter does the same). A
missing or 0x0 ``<size>`` is replaced by the image's real size. Class ids:
``class_names`` order when given (objects of other classes are dropped with a
warning), else the sorted set of names found; ``source_ids = 1..C``.
Conventions: see ``keras_fpn.data.dataset``; bad-input handling: ``keras_fpn.data.issues``.
"""
from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np

from keras_fpn.data.dataset import DetectionDataset, DetectionRecord, LabelMap
from keras_fpn.data.images import IMAGE_EXTENSIONS, DataError, PathLike, read_image_info
from keras_fpn.data.issues import IssueLog, clean_boxes, resolve_size


def _find_dirs(path: str, images_dir: Optional[PathLike]) -> tuple:
    if os.path.isfile(path) and path.endswith(".txt"):
        raise DataError(f"{path}: pass the VOC folder and the split file as split_file=")
    ann_dir = path
    if not glob.glob(os.path.join(path, "*.xml")):
        for sub in ("Annotations", "annotations"):
            if os.path.isdir(os.path.join(path, sub)):
                ann_dir = os.path.join(path, sub)
                break
    if images_dir is not None:
        img_dirs = [os.fspath(images_dir)]
    else:
        parent = os.path.dirname(ann_dir.rstrip(os.sep))
        img_dirs = [os.path.join(path, "JPEGImages"), os.path.join(path, "images"), ann_dir,
                    os.path.join(parent, "JPEGImages"), os.path.join(parent, "images")]
    return ann_dir, img_dirs


def _find_image(xml_file: str, filename: Optional[str], img_dirs: list) -> str:
    names = []
    if filename:
        names.append(os.path.basename(filename.replace("\\", "/")))
    stem = os.path.splitext(os.path.basename(xml_file))[0]
    names += [stem + ext for ext in IMAGE_EXTENSIONS]
    for d in img_dirs:
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p):
                return p
    existing = [d for d in img_dirs if os.path.isdir(d)]
    return os.path.join(existing[0] if existing else img_dirs[0], names[0])


def _text(node, tag: str) -> Optional[str]:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text is not None else None


def _num(node, tag: str) -> Optional[float]:
    t = _text(node, tag) if node is not None else None
    try:
        return float(t) if t is not None else None
    except ValueError:
        return None


def read_voc(path: PathLike, images_dir: Optional[PathLike] = None,
             class_names: Optional[Sequence[str]] = None, *, split_file: Optional[PathLike] = None,
             strict: bool = False) -> DetectionDataset:
    """Read a folder of Pascal VOC XML annotations.

    Args:
        path: Folder holding the ``*.xml`` files, or a folder with an
            ``Annotations``/``annotations`` subfolder (VOC devkit layout).
        images_dir: Image folder. Default: the first of ``JPEGImages``,
            ``images``, the XML folder, and their siblings that holds the file.
        class_names: Fixed class order; objects of other names are dropped.
        split_file: Optional ImageSets-style list of ids (XML stems) to read.
        strict: Raise DataError at the first bad item instead of skipping it.

    Returns:
        The DetectionDataset (sorted by XML name; ``image_id`` = 1, 2, ...).

    Raises:
        DataError: no XML files found; with ``strict``, any bad item.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a folder")
    ann_dir, img_dirs = _find_dirs(path, images_dir)
    xml_files = sorted(glob.glob(os.path.join(ann_dir, "*.xml")))
    if split_file is not None:
        with open(split_file) as f:
            wanted = {line.split()[0] for line in f if line.strip()}
        xml_files = [x for x in xml_files if os.path.splitext(os.path.basename(x))[0] in wanted]
    if not xml_files:
        raise DataError(f"{path}: no VOC .xml annotation files found")
    log = IssueLog(f"read_voc({path})", strict)
    fixed = list(class_names) if class_names is not None else None

    parsed = []  # (xml, image path, w, h, [(name, difficult, yxyx)])
    for xml_file in xml_files:
        try:
            root = ET.parse(xml_file).getroot()
        except (ET.ParseError, OSError) as e:
            log.bad(xml_file, f"malformed XML ({e})", "skipped image")
            continue
        if root.tag != "annotation":
            log.bad(xml_file, f"root element is <{root.tag}>, expected <annotation>", "skipped image")
            continue
        image_path = _find_image(xml_file, _text(root, "filename"), img_dirs)
        try:
            info = read_image_info(image_path)
        except DataError as e:
            log.bad(xml_file, str(e), "skipped image")
            continue
        size = root.find("size")
        size_wh = resolve_size(_num(size, "width"), _num(size, "height"), info, xml_file, log)
        if size_wh is None:
            continue
        w, h = size_wh
        objects = []
        for k, obj in enumerate(root.iter("object")):
            name = _text(obj, "name")
            bb = obj.find("bndbox")
            coords = [_num(bb, t) for t in ("ymin", "xmin", "ymax", "xmax")] if bb is not None else []
            if not name:
                log.bad(xml_file, f"object {k} has no <name>", "dropped box")
                continue
            if len(coords) != 4 or any(c is None for c in coords):
                log.bad(xml_file, f"object {k} ({name}) has no valid <bndbox>", "dropped box")
                continue
            if fixed is not None and name not in fixed:
                log.bad(xml_file, f"object {k} has unknown class name {name!r}", "dropped box")
                continue
            diff = _num(obj, "difficult")
            objects.append((name, bool(diff), [coords[0] / h, coords[1] / w, coords[2] / h,
                                               coords[3] / w], f"object {k} ({name})"))
        parsed.append((xml_file, image_path, w, h, objects))

    names = fixed if fixed is not None else sorted({o[0] for p in parsed for o in p[4]})
    label_map = LabelMap.from_names(names)
    records = []
    for i, (xml_file, image_path, w, h, objects) in enumerate(parsed):
        yxyx, keep = clean_boxes(np.array([o[2] for o in objects], np.float64).reshape(-1, 4),
                                 w, h, xml_file, log, [o[3] for o in objects])
        kept = [o for o, k in zip(objects, keep) if k]
        records.append(DetectionRecord(
            image_path=image_path, width=w, height=h, boxes=yxyx,
            classes=np.array([label_map.class_id(o[0]) for o in kept], np.int32),
            iscrowd=np.zeros(len(kept), bool),
            difficult=np.array([o[1] for o in kept], bool),
            image_id=i + 1))
    ds = DetectionDataset(tuple(records), label_map, tuple(log.issues), source=path)
    log.summary(ds.num_images, ds.num_boxes)
    return ds
