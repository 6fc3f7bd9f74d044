"""COCO instance segmentations (polygons / RLE) -> semantic class maps.

A class map is a uint8 ``[height, width]`` array over the record's original
(displayed) image, with the label values of ``keras_fpn.ops.seg_labels``
(0 = background, ``c + 1`` = contiguous class ``c``, ``ignore_label`` =
skipped). Rules, in order:

1. Every pixel starts as background.
2. Each non-crowd object paints its mask with its class. A pixel painted by
   objects of two *different* classes becomes ignore (overlapping instances
   of the same class are fine): COCO's instance masks may overlap, and
   "whichever came last" would be arbitrary.
3. Crowd objects (``iscrowd``) make their mask ignore; objects with no (or
   an unreadable) segmentation make their *box* ignore: the object is there
   but its outline is unknown. Ignore wins over every class.

Segmentations are decoded with pycocotools: polygon lists (pixel
coordinates, rasterized by pycocotools' own rule), uncompressed RLE
(``counts`` list) and compressed RLE (``counts`` string); an RLE's ``size``
must be ``[height, width]`` of the record.
"""
from __future__ import annotations

import numpy as np

from keras_fpn.data.images import DataError
from keras_fpn.ops.seg_labels import IGNORE_LABEL

BACKGROUND = 0


def decode_segmentation(seg, height: int, width: int) -> np.ndarray:
    """One COCO segmentation -> bool ``[height, width]`` mask.

    Args:
        seg: polygon list ``[[x0, y0, x1, y1, ...], ...]``, or an RLE dict
            ``{"size": [h, w], "counts": list | str | bytes}``.
        height, width: the image size in pixels.

    Raises:
        DataError: an unreadable segmentation or an RLE of another size.
    """
    from pycocotools import mask as mask_utils

    try:
        if isinstance(seg, dict):
            size = [int(v) for v in seg.get("size", [])]
            if size != [height, width]:
                raise DataError(f"RLE size {size} differs from the image size [{height}, {width}]")
            counts = seg["counts"]
            rle = (mask_utils.frPyObjects(seg, height, width) if isinstance(counts, list)
                   else {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
            m = mask_utils.decode(rle)
        elif isinstance(seg, list):
            polys = [[float(v) for v in p] for p in seg if len(p) >= 6]
            if not polys:
                raise DataError("polygon segmentation with fewer than 3 points")
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, height, width)))
        else:
            raise DataError(f"segmentation of type {type(seg).__name__} (expected polygons or RLE)")
    except DataError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"unreadable segmentation ({type(e).__name__}: {e})") from None
    return np.asarray(m, bool).reshape(height, width)


def rasterize_class_map(record, *, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """The class map of one ``DetectionRecord`` (rules in the module docstring).

    Args:
        record: a ``DetectionRecord`` (``segmentations`` may be None: every
            object's box is then ignore).
        ignore_label: the ignore value (> number of classes, <= 255).

    Returns:
        uint8 ``[record.height, record.width]``.
    """
    h, w = record.height, record.width
    out = np.zeros((h, w), np.uint8)
    ignore = np.zeros((h, w), bool)
    segs = record.segmentations or (None,) * record.num_objects
    for k in range(record.num_objects):
        mask = None
        if segs[k] is not None:
            try:
                mask = decode_segmentation(segs[k], h, w)
            except DataError:
                mask = None
        if mask is None:  # outline unknown: ignore the box
            y0, x0, y1, x1 = record.boxes[k] * np.array([h, w, h, w], np.float32)
            ignore[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
            continue
        if record.iscrowd[k]:
            ignore |= mask
            continue
        cls = int(record.classes[k]) + 1
        clash = mask & (out != BACKGROUND) & (out != cls)
        ignore |= clash
        out[mask] = cls
    out[ignore] = ignore_label
    return out


def has_masks(dataset) -> bool:
    """True when at least one record of ``dataset`` carries segmentations."""
    return any(r.segmentations is not None for r in dataset.records)
