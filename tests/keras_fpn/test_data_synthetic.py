"""Synthetic shapes dataset: deterministic, read back by the COCO reader, multi-scale, masks."""
import json

import numpy as np
from pycocotools import mask as mask_utils

from keras_fpn.data import generate_synthetic_coco, read_dataset
from keras_fpn.data.synthetic import CLASSES


def test_generate_read_back_and_masks(tmp_path):
    out = generate_synthetic_coco(tmp_path / "a", num_train=24, num_val=4, image_size=160, seed=3,
                                  workers=1)
    train = read_dataset(out["train"], strict=True)
    val = read_dataset(out["val"], strict=True)
    assert train.num_images == 24 and val.num_images == 4
    assert train.label_map.names == CLASSES and train.label_map.source_ids == (1, 2, 3, 4, 5)
    counts = [r.num_objects for r in train]
    assert min(counts) >= 1 and max(counts) <= 8
    assert not set(r.image_id for r in train) & set(r.image_id for r in val)
    data = json.loads(open(out["train"]).read())
    for ann in data["annotations"][:40]:
        m = mask_utils.decode(ann["segmentation"])
        assert m.shape == (160, 160) and int(m.sum()) == ann["area"]
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
    assert train.records[0].segmentations is not None


def test_deterministic_from_seed_and_independent_of_workers(tmp_path):
    a = generate_synthetic_coco(tmp_path / "a", num_train=6, num_val=2, image_size=96, seed=1,
                                workers=1)
    b = generate_synthetic_coco(tmp_path / "b", num_train=6, num_val=2, image_size=96, seed=1,
                                workers=2)
    c = generate_synthetic_coco(tmp_path / "c", num_train=6, num_val=2, image_size=96, seed=2,
                                workers=1)
    assert open(a["train"]).read() == open(b["train"]).read()
    for k in range(6):
        name = f"train/{k:06d}.jpg"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train/000000.jpg").read_bytes() != (tmp_path / "c" / "train/000000.jpg").read_bytes()


def test_sizes_cover_small_medium_large_at_320(tmp_path):
    out = generate_synthetic_coco(tmp_path, num_train=40, num_val=0, image_size=320, seed=0,
                                  masks=False, workers=1)
    ds = read_dataset(out["train"])
    areas = np.concatenate([r.areas for r in ds])
    small, large = (areas < 32 ** 2).mean(), (areas >= 96 ** 2).mean()
    medium = 1 - small - large
    assert min(small, medium, large) > 0.15, (small, medium, large)
    assert ds.records[0].segmentations is None


def _background_blotchiness(dataset) -> float:
    """Median over images of the std of the background's 8x8 block means around a fitted linear gradient
    (block means average the pixel noise away; what is left is blotches and lines)."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    values = []
    for r in dataset.records:
        img = np.asarray(Image.open(r.image_path), np.float64).mean(-1)
        fg = np.zeros(img.shape, bool)
        for seg in r.segmentations:
            fg |= mask_utils.decode(seg).astype(bool)
        h, w = img.shape
        blocks = img.reshape(h // 8, 8, w // 8, 8).mean((1, 3))
        bg = ~fg.reshape(h // 8, 8, w // 8, 8).any((1, 3))
        yy, xx = np.nonzero(bg)
        design = np.stack([yy, xx, np.ones_like(yy)], 1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, blocks[bg], rcond=None)
        values.append(np.std(blocks[bg] - design @ coef))
    return float(np.median(values))


def test_clean_style_keeps_small_objects_at_least_12_px_and_the_background_smooth(tmp_path):
    clean = read_dataset(generate_synthetic_coco(tmp_path / "clean", num_train=30, num_val=0, image_size=192,
                                                 seed=0, style="clean")["train"])
    side = np.sqrt(np.concatenate([r.areas for r in clean]))
    small, large = (side < 32).mean(), (side >= 96).mean()
    assert min(small, 1 - small - large, large) > 0.15, (small, large)
    # drawn at >= 12 px, at most 25 % covered later: sqrt(0.75) * 12 = 10.4 px visible
    assert side.min() >= 10.3 and side.max() <= 0.8 * 192 + 1
    cluttered = read_dataset(generate_synthetic_coco(tmp_path / "cluttered", num_train=30, num_val=0,
                                                     image_size=192, seed=0)["train"])
    assert np.sqrt(np.concatenate([r.areas for r in cluttered])).min() < 10.0  # 10 * 192 / 320 = 6 px possible
    smooth, rough = _background_blotchiness(clean), _background_blotchiness(cluttered)
    assert smooth < 0.5 * rough, (smooth, rough)


def test_clean_style_at_small_image_sizes(tmp_path):
    """Below 125 px the clean style's bins are capped at 0.8 * size (was a ValueError: high - low < 0);
    from 125 px on they are the documented 12-30 / 36-88 / 100-0.8*size."""
    from keras_fpn.data.synthetic import _size_bins

    assert _size_bins("clean", 160) == ((12.0, 30.0), (36.0, 88.0), (100.0, 128.0))
    assert np.allclose(_size_bins("clean", 96), ((12.0, 30.0), (36.0, 76.8), (38.4, 76.8)))
    assert np.allclose(_size_bins("clean", 64), ((12.0, 30.0), (36.0, 51.2), (25.6, 51.2)))
    ds = read_dataset(generate_synthetic_coco(tmp_path / "small", num_train=6, num_val=0, image_size=64,
                                              seed=0, style="clean")["train"])
    side = np.sqrt(np.concatenate([r.areas for r in ds]))
    assert len(ds) == 6 and side.size > 0 and side.max() <= 0.8 * 64 + 1
