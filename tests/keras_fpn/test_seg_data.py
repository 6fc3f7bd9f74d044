"""Segmentation data: class maps from COCO polygons/RLE, and augmentation that keeps mask and image aligned."""
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_fpn.data import DataError, read_coco
from keras_fpn.data.dataset import DetectionRecord
from keras_fpn.data.augment import AugmentConfig, augment_with_mask
from keras_fpn.data.masks import decode_segmentation, rasterize_class_map
from keras_fpn.data.pipeline import build_segmentation_dataset
from keras_fpn.ops.seg_labels import IGNORE_LABEL

NORM = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}


def test_hand_polygons_rasterize_by_pixel_centre():
    # rectangle x 2..6, y 1..4 (pixel coordinates): pixels whose centre is inside -> rows 1..3, cols 2..5
    m = decode_segmentation([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 8)
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(m, expected)
    # right triangle (2,1) (6,1) (2,5): centres (x+.5, y+.5) with x + y < 5 -> 3 + 2 + 1 pixels
    t = decode_segmentation([[2, 1, 6, 1, 2, 5]], 6, 8)
    assert t.sum() == 6
    assert t[1, 2:5].all() and t[2, 2:4].all() and t[3, 2] and not t[1, 5] and not t[4].any()


def test_rle_forms_decode_alike():
    from pycocotools import mask as mask_utils

    m = np.zeros((5, 7), np.uint8)
    m[1:4, 2:6] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    compressed = {"size": [5, 7], "counts": rle["counts"].decode("ascii")}
    # uncompressed RLE: column-major run lengths starting with zeros
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    for seg in (compressed, {"size": [5, 7], "counts": runs}):
        np.testing.assert_array_equal(decode_segmentation(seg, 5, 7), m.astype(bool))
    with pytest.raises(DataError, match="RLE size"):
        decode_segmentation(compressed, 7, 5)


def _record(segs, classes, crowd=None, boxes=None, h=6, w=8):
    n = len(classes)
    return DetectionRecord("x.jpg", w, h, boxes if boxes is not None else np.tile([0, 0, 1, 1], (n, 1)),
                           classes, crowd, None, 1, segmentations=tuple(segs))


def test_class_map_rules_overlap_crowd_and_missing_outline():
    a = [[0, 0, 4, 0, 4, 3, 0, 3]]          # class 0 -> id 1: rows 0..2, cols 0..3
    b = [[3, 2, 6, 2, 6, 5, 3, 5]]          # class 1 -> id 2: rows 2..4, cols 3..5 (overlaps a at (2, 3))
    same = [[0, 0, 2, 0, 2, 2, 0, 2]]       # class 0 again, inside a: same class, no conflict
    crowd = [[6, 0, 8, 0, 8, 2, 6, 2]]      # crowd: rows 0..1, cols 6..7 -> ignore
    boxes = np.array([[0, 0, 0.5, 0.375], [2 / 6, 3 / 8, 5 / 6, 6 / 8], [0, 0, 1 / 3, 0.25],
                      [0, 0.75, 1 / 3, 1.0], [4 / 6, 0, 1.0, 2 / 8]], np.float32)
    rec = _record([a, b, same, crowd, None], [0, 1, 0, 2, 1], [0, 0, 0, 1, 0], boxes)
    cm = rasterize_class_map(rec)
    expected = np.zeros((6, 8), np.uint8)
    expected[0:3, 0:4] = 1
    expected[2:5, 3:6] = 2
    expected[2, 3] = IGNORE_LABEL           # two classes paint it
    expected[0:2, 6:8] = IGNORE_LABEL       # crowd
    expected[4:6, 0:2] = IGNORE_LABEL       # no segmentation: its box (rows 4..5, cols 0..1)
    np.testing.assert_array_equal(cm, expected)


def _write_square_dataset(tmp_path, n=3, size=(40, 60)):
    """Images with one red square (class 'sq') on grey, COCO polygons; returns the JSON path."""
    h, w = size
    images, anns = [], []
    for i in range(n):
        img = np.full((h, w, 3), 90, np.uint8)
        x0, y0, s = 5 + 7 * i, 6 + 3 * i, 16
        img[y0:y0 + s, x0:x0 + s] = (230, 20, 20)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "bbox": [x0, y0, s, s], "area": s * s,
                     "segmentation": [[x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]]})
    (tmp_path / "d.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                 "categories": [{"id": 1, "name": "sq"}]}))
    return tmp_path / "d.json"


def test_augment_keeps_mask_and_image_aligned(tmp_path):
    ds = read_coco(_write_square_dataset(tmp_path))
    from keras_fpn.data.images import load_image

    cfg = AugmentConfig(hflip=True, scale_jitter=(0.6, 1.8), photometric=False)
    for k, rec in enumerate(ds.records):
        image, mask = load_image(rec.image_path), rasterize_class_map(rec)
        for s in range(6):
            canvas, m = augment_with_mask(image, mask, tf.constant([s, k], tf.int64), (64, 64), cfg)
            canvas, m = canvas.numpy(), m.numpy()
            assert m.dtype == np.uint8 and m.shape == (64, 64)
            red = (canvas[..., 0] > 160) & (canvas[..., 1] < 100)
            grey = np.abs(canvas - 90).max(-1) < 20
            # Away from the edge (where bilinear mixes colours) the mask labels what the pixels show.
            assert (m[red] == 1).all()
            assert (m[grey] == 0).all()
            assert red.sum() > 20
            # padding (canvas zeros outside the resized image) is ignore
            pad = (canvas == 0).all(-1)
            assert (m[pad] == IGNORE_LABEL).all()


def test_segmentation_dataset_batches(tmp_path):
    ds = read_coco(_write_square_dataset(tmp_path))
    data = build_segmentation_dataset(ds, image_size=(64, 64), normalization=NORM, batch_size=2,
                                      training=True, augment={"scale_jitter": (0.5, 0.5)}, seed=1,
                                      deterministic=True)
    images, y = next(iter(data))
    assert images.shape == (2, 64, 64, 3) and y["seg_logits"].shape == (2, 64, 64)
    m = y["seg_logits"].numpy()
    # 60x40 letterboxed to 64x43, jitter 0.5 -> 32x21: rows >= 21 and cols >= 32 are padding
    assert (m[:, 21:] == IGNORE_LABEL).all() and (m[:, :, 32:] == IGNORE_LABEL).all()
    assert set(np.unique(m[:, :21, :32])) == {0, 1}
    val = build_segmentation_dataset(ds, image_size=(64, 64), normalization=NORM, batch_size=3, training=False,
                                     deterministic=True)
    _, yv = next(iter(val))
    # no augmentation: the class map is the letterboxed (nearest) rasterization
    expected = tf.image.resize(rasterize_class_map(ds.records[0])[..., None], (43, 64), method="nearest")
    np.testing.assert_array_equal(yv["seg_logits"][0, :43].numpy(), expected.numpy()[..., 0])


def test_dataset_without_masks_is_a_clear_error(tmp_path):
    ds = read_coco(_write_square_dataset(tmp_path), keep_segmentation=False)
    with pytest.raises(DataError, match="no segmentation masks"):
        build_segmentation_dataset(ds, image_size=(64, 64), normalization=NORM, batch_size=2, training=False)
