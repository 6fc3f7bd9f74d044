"""COCO instances JSON reader (the canonical format: ``keras-fpn data convert`` writes it, evaluation scores it).

``bbox`` is ``[x, y, w, h]`` in pixels of the displayed image; category ids
may be any integers (COCO uses 1..90 with gaps): they are mapped to contiguous
ids 0..C-1 in ascending id order and kept in ``LabelMap.source_ids``. Crowd
annotations (``iscrowd=1``) are kept with ``iscrowd=True``. Conventions: see
``keras_fpn.data.dataset``; bad-input handling: ``keras_fpn.data.issues``.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from keras_fpn.data.dataset import DetectionDataset, DetectionRecord, LabelMap
from keras_fpn.data.images import DataError, PathLike, read_image_info
from keras_fpn.data.issues import IssueLog, clean_boxes, resolve_size


def _image_dirs(json_path: str, image_dir: Optional[PathLike]) -> list:
    if image_dir is not None:
        return [os.fspath(image_dir)]
    base = os.path.dirname(json_path)
    stem = os.path.splitext(os.path.basename(json_path))[0]
    cands = [base, os.path.join(base, "images"), os.path.join(base, stem),
             os.path.join(base, "images", stem)]
    # COCO layout: annotations/instances_train2017.json next to train2017/
    if stem.startswith("instances_"):
        cands.append(os.path.join(os.path.dirname(base), stem[len("instances_"):]))
    return cands


def _find_image(file_name: str, dirs: list) -> str:
    if os.path.isabs(file_name):
        return file_name
    for d in dirs:
        p = os.path.join(d, file_name)
        if os.path.isfile(p):
            return p
    return os.path.join(dirs[0], file_name)


def load_json(path: PathLike) -> dict:
    """Load a JSON object file, turning any failure into a one-line DataError.

    Args:
        path: The file.

    Returns:
        The parsed dict.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not raw.strip():
        raise DataError(f"{path}: empty file, expected a COCO JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_coco(json_path: PathLike, image_dir: Optional[PathLike] = None, *,
              strict: bool = False, keep_segmentation: bool = True,
              check_images: bool = True) -> DetectionDataset:
    """Read a COCO instances JSON file.

    Args:
        json_path: The annotation file.
        image_dir: Folder that ``file_name`` is relative to. Default: the first
            of the JSON's folder, ``<json dir>/images``, ``<json dir>/<json
            stem>`` (and ``../train2017`` for ``instances_train2017.json``)
            that holds the image.
        strict: Raise DataError at the first bad item instead of skipping it.
        keep_segmentation: Keep each annotation's ``segmentation`` (polygons
            or RLE) in the records.
        check_images: Read every image header (existence, real size, EXIF
            orientation). False trusts the JSON's width/height (faster for
            very large sets; missing files then surface when decoding).

    Returns:
        The DetectionDataset (image order as in the file; ``image_id`` = COCO id).

    Raises:
        DataError: unreadable/malformed JSON, missing ``images`` or
            ``categories``; with ``strict``, any bad item.
    """
    json_path = os.path.abspath(os.fspath(json_path))
    data = load_json(json_path)
    log = IssueLog(f"read_coco({json_path})", strict)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{json_path}: no '{key}' list (not a COCO instances file)")
    anns = data.get("annotations") or []
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: 'annotations' is not a list")

    cats = {}
    for c in data["categories"]:
        try:
            cid, name = int(c["id"]), str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{json_path}: bad category entry {c!r}") from None
        if cid in cats:
            raise DataError(f"{json_path}: duplicate category id {cid}")
        cats[cid] = name
    ids = sorted(cats)
    label_map = LabelMap(tuple(cats[i] for i in ids), tuple(ids))

    by_image: dict = {}
    seen_ann_ids = set()
    for a in anns:
        if not isinstance(a, dict):
            log.bad(json_path, f"annotation {a!r} is not an object", "dropped box")
            continue
        aid = a.get("id")
        if aid is not None:
            if aid in seen_ann_ids:
                log.bad(json_path, f"duplicate annotation id {aid}", "dropped box")
                continue
            seen_ann_ids.add(aid)
        by_image.setdefault(a.get("image_id"), []).append(a)

    dirs = _image_dirs(json_path, image_dir)
    records, seen_ids = [], set()
    for im in data["images"]:
        try:
            image_id, file_name = int(im["id"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            log.bad(json_path, f"image entry {str(im)[:80]} lacks an integer id or file_name",
                    "skipped image")
            continue
        path = _find_image(file_name, dirs)
        if image_id in seen_ids:
            log.bad(path, f"duplicate image id {image_id} in {json_path}", "skipped image")
            continue
        seen_ids.add(image_id)
        if not check_images and _positive(im.get("width")) and _positive(im.get("height")):
            size = int(im["width"]), int(im["height"])
        else:
            try:
                info = read_image_info(path)
            except DataError as e:
                log.bad(path, str(e).split(": ", 1)[-1], "skipped image")
                continue
            size = resolve_size(im.get("width"), im.get("height"), info, path, log)
        if size is None:
            continue
        w, h = size
        records.append(_record(path, w, h, image_id, by_image.pop(image_id, []), label_map,
                               json_path, log, keep_segmentation))
    for image_id, lst in by_image.items():
        if image_id not in seen_ids:
            log.bad(json_path, f"{len(lst)} annotation(s) refer to unknown image id {image_id}",
                    "dropped box")
    ds = DetectionDataset(tuple(records), label_map, tuple(log.issues), source=json_path)
    log.summary(ds.num_images, ds.num_boxes)
    return ds


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and v > 0


def _record(path, w, h, image_id, anns, label_map, json_path, log, keep_segmentation):
    where = f"{json_path} (image id {image_id})"
    boxes, classes, crowd, difficult, areas, segs, labels = [], [], [], [], [], [], []
    for a in anns:
        try:
            cls = label_map.from_source(int(a["category_id"]))
        except (KeyError, TypeError, ValueError):
            log.bad(where, f"annotation {a.get('id')} has unknown category_id "
                    f"{a.get('category_id')!r}", "dropped box")
            continue
        bbox = a.get("bbox")
        try:
            x, y, bw, bh = (float(v) for v in bbox)
        except (TypeError, ValueError):
            log.bad(where, f"annotation {a.get('id')} has no valid bbox ({bbox!r})", "dropped box")
            continue
        boxes.append([y / h, x / w, (y + bh) / h, (x + bw) / w])
        classes.append(cls)
        crowd.append(bool(a.get("iscrowd", 0)))
        difficult.append(bool(a.get("difficult", 0)))
        area = a.get("area")
        areas.append(float(area) if isinstance(area, (int, float)) else max(bw, 0) * max(bh, 0))
        segs.append(a.get("segmentation") if keep_segmentation else None)
        labels.append(f"annotation {a.get('id')}")
    yxyx, keep = clean_boxes(np.array(boxes, np.float64).reshape(-1, 4), w, h, where, log, labels)
    sel = np.flatnonzero(keep)
    seg_tuple = tuple(segs[i] for i in sel) if keep_segmentation and any(
        segs[i] is not None for i in sel) else None
    return DetectionRecord(
        image_path=path, width=w, height=h, boxes=yxyx,
        classes=np.array(classes, np.int32)[keep] if classes else np.zeros(0, np.int32),
        iscrowd=np.array(crowd, bool)[keep] if crowd else np.zeros(0, bool),
        difficult=np.array(difficult, bool)[keep] if difficult else np.zeros(0, bool),
        image_id=image_id,
        areas=np.array(areas, np.float32)[keep] if areas else np.zeros(0, np.float32),
        segmentations=seg_tuple)
