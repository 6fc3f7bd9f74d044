"""The one in-memory detection dataset every reader produces: LabelMap, DetectionRecord, DetectionDataset.

Conventions (stated once for the data package; bad-input handling is in
``keras_fpn.data.issues``, the model-canvas geometry in
``keras_fpn.data.preprocess``):

- A record's ``boxes`` are float32 ``[N, 4]`` normalized ``[ymin, xmin, ymax,
  xmax]`` in [0, 1], relative to the *original displayed image* (EXIF
  orientation applied, see ``images.py``), whose real decoded size is
  ``width`` x ``height``. The pipeline maps them to the model canvas.
- Pixel coordinates in the source formats are continuous: a VOC/COCO box
  ``xmin..xmax`` covers ``xmax - xmin`` pixels (VOC values are used as they
  are, like TF Object Detection API's converter; no ``-1``).
- ``classes`` are int32 contiguous ids ``0..C-1`` into the ``LabelMap``; the
  label map keeps the dataset's own category ids (``source_ids``) so that
  COCO evaluation can map predictions back. Formats without ids (VOC, YOLO)
  get ``source_ids = 1..C`` (COCO / TF OD API style: 0 means background).
- ``iscrowd`` boxes are kept for evaluation and are never training positives
  (the pipeline makes their area an ignore region). ``difficult`` (VOC) boxes
  are ordinary training boxes; evaluation decides what to do with them.
"""


from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from fpn_edge import atomic
from keras_fpn.data.images import DataError, PathLike
from keras_fpn.data.issues import DataIssue, IssueLog

logger = logging.getLogger("keras_fpn.data")


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Contiguous class ids 0..C-1 with names and the dataset's own category ids.

    Attributes:
        names: Class names, index = contiguous id.
        source_ids: The dataset's category id for each contiguous id.
    """

    names: tuple
    source_ids: tuple

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        ids = tuple(int(i) for i in self.source_ids)
        if len(names) != len(ids):
            raise ValueError(f"LabelMap: {len(names)} names but {len(ids)} source ids")
        if len(set(ids)) != len(ids):
            raise ValueError(f"LabelMap: duplicate source ids {ids}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "source_ids", ids)

    @classmethod
    def from_names(cls, names: Sequence[str], first_id: int = 1) -> "LabelMap":
        """Build a label map whose source ids count up from ``first_id``.

        Args:
            names: Class names in contiguous-id order.
            first_id: Source id of the first class (1: COCO / TF OD API style).

        Returns:
            The LabelMap.
        """
        return cls(tuple(names), tuple(range(first_id, first_id + len(names))))

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C."""
        return len(self.names)

    def class_id(self, name: str) -> int:
        """Contiguous id of a class name (KeyError when unknown)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(name) from None

    def to_source(self, class_id: int) -> int:
        """Dataset category id for a contiguous class id."""
        return self.source_ids[int(class_id)]

    def from_source(self, source_id: int) -> int:
        """Contiguous class id for a dataset category id (KeyError when unknown)."""
        try:
            return self.source_ids.index(int(source_id))
        except ValueError:
            raise KeyError(source_id) from None


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionRecord:
    """One image and its objects (box convention in the module docstring).

    Attributes:
        image_path: Path of the image file.
        width: Real displayed width in pixels.
        height: Real displayed height in pixels.
        boxes: float32 [N, 4] normalized yxyx relative to the original image.
        classes: int32 [N] contiguous class ids.
        iscrowd: bool [N]; crowd regions (evaluation only).
        difficult: bool [N]; VOC "difficult" flag.
        image_id: Integer image id (the COCO id when read from COCO).
        areas: float32 [N] object area in original pixels (COCO ``area``: the
            mask area when known, else the box area).
        segmentations: None, or a tuple of N COCO segmentations (polygon list,
            RLE dict or None per object) in original pixels.
    """

    image_path: str
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    iscrowd: np.ndarray
    difficult: np.ndarray
    image_id: int
    areas: Optional[np.ndarray] = None
    segmentations: Optional[tuple] = None

    def __post_init__(self):
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(boxes)

        def arr(value, dtype, default):
            out = np.full(n, default, dtype) if value is None else np.asarray(value, dtype).reshape(-1)
            if len(out) != n:
                raise ValueError(f"{self.image_path}: {len(out)} values for {n} boxes")
            out.setflags(write=False)
            return out

        boxes.setflags(write=False)
        object.__setattr__(self, "image_path", os.fspath(self.image_path))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "image_id", int(self.image_id))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "classes", arr(self.classes, np.int32, 0))
        object.__setattr__(self, "iscrowd", arr(self.iscrowd, bool, False))
        object.__setattr__(self, "difficult", arr(self.difficult, bool, False))
        if self.areas is None:
            hw = (boxes[:, 2:] - boxes[:, :2]) * np.array([self.height, self.width], np.float32)
            areas = hw[:, 0] * hw[:, 1]
        else:
            areas = self.areas
        object.__setattr__(self, "areas", arr(areas, np.float32, 0.0))
        if self.segmentations is not None:
            segs = tuple(self.segmentations)
            if len(segs) != n:
                raise ValueError(f"{self.image_path}: {len(segs)} segmentations for {n} boxes")
            object.__setattr__(self, "segmentations", segs)

    @property
    def num_objects(self) -> int:
        """Number of objects, crowd regions included."""
        return len(self.boxes)

    def pixel_boxes_xywh(self) -> np.ndarray:
        """Boxes as COCO ``[x, y, w, h]`` in original pixels, float64 [N, 4]."""
        b = self.boxes.astype(np.float64)
        x0, y0 = b[:, 1] * self.width, b[:, 0] * self.height
        x1, y1 = b[:, 3] * self.width, b[:, 2] * self.height
        return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionDataset:
    """An immutable list of DetectionRecords with their LabelMap.

    Attributes:
        records: Tuple of DetectionRecord.
        label_map: The LabelMap shared by all records.
        issues: DataIssue events the reader recorded (skips and repairs).
        source: Where the data came from (for messages).
    """

    records: tuple
    label_map: LabelMap
    issues: tuple = ()
    source: str = ""

    def __post_init__(self):
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "issues", tuple(self.issues))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> DetectionRecord:
        return self.records[i]

    def __iter__(self):
        return iter(self.records)

    @property
    def num_images(self) -> int:
        """Number of images (background images included)."""
        return len(self.records)

    @property
    def num_boxes(self) -> int:
        """Number of non-crowd boxes."""
        return int(sum(int((~r.iscrowd).sum()) for r in self.records))

    @property
    def num_crowd(self) -> int:
        """Number of crowd regions."""
        return int(sum(int(r.iscrowd.sum()) for r in self.records))

    def subset(self, indices: Iterable[int]) -> "DetectionDataset":
        """A dataset holding the records at ``indices`` (same label map).

        Args:
            indices: Record indices, in the wanted order.

        Returns:
            The new DetectionDataset.
        """
        return dataclasses.replace(self, records=tuple(self.records[int(i)] for i in indices))

    def split(self, val_fraction: float, seed: int = 0) -> tuple:
        """Split the records at random into (train, val) datasets.

        Args:
            val_fraction: Fraction of images that go to val (at least one each way).
            seed: Seed of the permutation.

        Returns:
            (train, val) DetectionDatasets.
        """
        n = len(self.records)
        perm = np.random.default_rng(seed).permutation(n)
        n_val = min(max(int(round(n * val_fraction)), 1), n - 1) if n > 1 else 0
        return self.subset(sorted(perm[n_val:])), self.subset(sorted(perm[:n_val]))

    def to_coco_dict(self, image_root: Optional[PathLike] = None) -> dict:
        """Build the COCO instances dict (categories use ``label_map.source_ids``).

        Args:
            image_root: ``file_name`` is written relative to this folder when
                the image lies under it, else as an absolute path.

        Returns:
            A JSON-serializable dict with images, annotations, categories;
            bbox in pixels ``[x, y, w, h]`` rounded to 1e-3 px. VOC's
            difficult flag goes to an extra ``difficult`` annotation field.
        """
        root = os.path.abspath(image_root) if image_root is not None else None
        images, annotations = [], []
        ann_id = 1
        for r in self.records:
            path = os.path.abspath(r.image_path)
            if root is not None and os.path.commonpath([root, path]) == root:
                file_name = os.path.relpath(path, root).replace(os.sep, "/")
            else:
                file_name = path
            images.append({"id": r.image_id, "file_name": file_name,
                           "width": r.width, "height": r.height})
            for k, (xywh, c) in enumerate(zip(r.pixel_boxes_xywh(), r.classes)):
                ann = {"id": ann_id, "image_id": r.image_id,
                       "category_id": self.label_map.to_source(c),
                       "bbox": [round(float(v), 3) for v in xywh],
                       "area": round(float(r.areas[k]), 3),
                       "iscrowd": int(r.iscrowd[k])}
                seg = r.segmentations[k] if r.segmentations is not None else None
                if seg is not None:
                    ann["segmentation"] = seg
                if r.difficult[k]:
                    ann["difficult"] = 1
                annotations.append(ann)
                ann_id += 1
        categories = [{"id": sid, "name": name, "supercategory": ""}
                      for sid, name in zip(self.label_map.source_ids, self.label_map.names)]
        return {"info": {"description": f"written by keras_fpn from {self.source}"},
                "images": images, "annotations": annotations, "categories": categories}

    def write_coco(self, path: PathLike, image_root: Optional[PathLike] = None) -> str:
        """Write the dataset as a COCO JSON file, atomically (temp file + rename).

        Args:
            path: Output .json file.
            image_root: Folder ``file_name`` is relative to; default the JSON's
                folder (images elsewhere get absolute paths).

        Returns:
            The written path.
        """
        path = os.path.abspath(os.fspath(path))
        out_dir = os.path.dirname(path)
        os.makedirs(out_dir, exist_ok=True)
        data = self.to_coco_dict(out_dir if image_root is None else image_root)
        write_json_atomic(path, data)
        return path


def write_json_atomic(path: PathLike, data: Any) -> None:
    """Write ``data`` as compact JSON (no spaces, no final newline: annotation files are large).

    Atomic (``fpn_edge.atomic``): an existing file is only replaced on success.
    """
    atomic.write_json_atomic(path, data, indent=None, separators=(",", ":"), trailing_newline=False)


def include_images(dataset: DetectionDataset, include: PathLike) -> DetectionDataset:
    """Keep only the images listed in a file (e.g. a train/test split): the one include-list rule.

    Training, evaluation, calibration and QAT fine-tuning all read ``data.*_include``
    through this function, so they see the same subset.

    Args:
        dataset: The DetectionDataset.
        include: A text file with one image file name per line, or a CSV
            with a ``filename`` column (like raccoon's ``splits/*.csv``);
            names are matched on the base name.

    Returns:
        The subset, in dataset order. Listed names the dataset lacks (e.g. an
        image its reader skipped as unreadable) are left out with one warning.

    Raises:
        DataError: the file cannot be read, a CSV has no ``filename`` column, or
            none of the listed images is in the dataset.
    """
    import csv

    include = os.fspath(include)
    try:
        with open(include, newline="") as f:
            text = f.read()
    except OSError as e:
        raise DataError(f"{include}: cannot read include list ({e.strerror})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    header = [c.strip() for c in lines[0].split(",")] if lines else []
    if "filename" in header:
        names = {os.path.basename(row["filename"].strip()) for row in csv.DictReader(lines)}
    elif include.endswith(".csv"):
        raise DataError(f"{include}: a CSV include list needs a 'filename' column")
    else:
        names = {os.path.basename(line.strip()) for line in lines}
    base = [os.path.basename(r.image_path) for r in dataset.records]
    missing = sorted(names - set(base))
    if names and len(missing) == len(names):
        raise DataError(f"{include}: none of its {len(names)} image names are in {dataset.source}")
    if missing:
        logger.warning("%s: %d listed image(s) not in the dataset (skipped or absent), e.g. %s",
                       include, len(missing), missing[0])
    return dataset.subset([i for i, name in enumerate(base) if name in names])  # every record of a listed name


def _decode_check(dataset: DetectionDataset, strict: bool):
    """``(index, record, decoded shape or DataError)`` of every record, decoded on a few threads
    (Pillow releases the GIL), in record order; ``strict`` raises at the first failure."""
    from concurrent.futures import ThreadPoolExecutor

    from keras_fpn.data.images import load_image

    def shape(record):
        try:
            return load_image(record.image_path).shape
        except DataError as e:
            if strict:
                raise
            return e

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        yield from zip(range(len(dataset)), dataset.records, pool.map(shape, dataset.records))


def drop_undecodable(dataset: DetectionDataset, strict: bool = False) -> DetectionDataset:
    """The dataset without the records whose image cannot be decoded: the undecodable-image rule.

    An image that cannot be decoded (missing, truncated, corrupt, over the size limit) goes
    with all its boxes and one WARNING line naming the file, so an evaluation counts it
    nowhere: neither in the images nor in the ground truth. ``keras-fpn evaluate``,
    ``compare`` and the validation during ``train`` check their evaluation set with it
    first (training batches skip such an image when the pipeline meets it).

    Args:
        dataset: The DetectionDataset.
        strict: Raise DataError at the first undecodable image instead.

    Returns:
        The dataset itself when every image decodes, else the subset (its issues extended).
    """
    keep, issues = [], []
    for i, record, result in _decode_check(dataset, strict):
        if isinstance(result, DataError):
            logger.warning("%s; skipped image with its %d box(es)", result, record.num_objects)
            issues.append(DataIssue(record.image_path, str(result).split(": ", 1)[-1], "skipped image"))
        else:
            keep.append(i)
    if not issues:
        return dataset
    return dataclasses.replace(dataset.subset(keep), issues=dataset.issues + tuple(issues))


def verify_images(dataset: DetectionDataset, strict: bool = False) -> DetectionDataset:
    """Decode every image fully and drop the ones that fail (readers only read headers).

    Catches truncated or corrupt pixel data, which a header read cannot see, and
    images whose decoded size differs from the record's.

    Args:
        dataset: The DetectionDataset.
        strict: Raise DataError at the first bad image instead of skipping it.

    Returns:
        The dataset without undecodable images (its issues extended).
    """
    log = IssueLog(f"verify_images({dataset.source})", strict)
    keep = []
    for i, r, result in _decode_check(dataset, strict):
        if isinstance(result, DataError):
            log.bad(r.image_path, str(result).split(": ", 1)[-1], "skipped image")
        elif result[:2] != (r.height, r.width):
            log.bad(r.image_path, f"decodes to {result[1]}x{result[0]}, the record says "
                    f"{r.width}x{r.height}", "skipped image")
        else:
            keep.append(i)
    out = dataclasses.replace(dataset.subset(keep), issues=dataset.issues + tuple(log.issues))
    log.summary(out.num_images, out.num_boxes)
    return out
