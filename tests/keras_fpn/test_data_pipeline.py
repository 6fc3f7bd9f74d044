"""tf.data pipeline: letterbox numbers, normalization, augmentation alignment, targets."""
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_fpn.data import DataError, DetectionDataset, DetectionRecord, LabelMap, load_image
from keras_fpn.data.augment import AugmentConfig, augment_example
from keras_fpn.data.pipeline import (build_detection_dataset, build_inference_dataset, crowd_ignore,
                                     representative_images)
from keras_fpn.data.preprocess import canvas_to_original, letterbox, normalize, preprocess_for_inference
from keras_fpn.ops.anchors import generate_anchors
from keras_fpn.ops.matcher import encode_targets

MOBILENET = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}
CAFFE = {"channel_order": "BGR", "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0]}
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _bilinear_reference(img, out_h, out_w):
    """numpy bilinear, half-pixel centres, no antialias, edge clamp (what fpn_edge must do)."""
    img = img.astype(np.float64)
    h, w = img.shape[:2]

    def coords(n_out, n_in):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = coords(out_h, h)
    x0, x1, fx = coords(out_w, w)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def test_letterbox_scale_and_padding():
    img = np.full((100, 200, 3), (10, 20, 30), np.uint8)
    canvas, hw = letterbox(img, 320)
    assert hw.numpy().tolist() == [160, 320]  # scale min(320/100, 320/200) = 1.6
    c = canvas.numpy()
    assert c.shape == (320, 320, 3) and c.dtype == np.float32
    assert np.all(c[:160] == [10, 20, 30]) and np.all(c[160:] == 0)
    # non-square canvas, raccoon-1 size 650x417: scale = min(256/417, 320/650) = 0.49231
    canvas, hw = letterbox(np.zeros((417, 650, 3), np.uint8), (256, 320))
    assert hw.numpy().tolist() == [205, 320] and canvas.shape == (256, 320, 3)  # 417 * 0.49231 = 205.3
    # upscaling a tall image: scale = min(64/40, 64/10) = 1.6 -> (64, 16)
    _, hw = letterbox(np.zeros((40, 10, 3), np.uint8), 64)
    assert hw.numpy().tolist() == [64, 16]


def test_letterbox_pixels_match_numpy_bilinear_reference():
    rng = np.random.default_rng(0)
    for shape, size in [((13, 7, 3), (8, 8)), ((9, 20, 3), (16, 24)), ((5, 6, 3), (15, 15))]:
        img = rng.integers(0, 256, shape, np.uint8)
        canvas, hw = letterbox(img, size)
        nh, nw = hw.numpy()
        ref = _bilinear_reference(img, nh, nw)
        np.testing.assert_allclose(canvas.numpy()[:nh, :nw], ref, atol=1e-3)
        assert np.all(canvas.numpy()[nh:] == 0) and np.all(canvas.numpy()[:, nw:] == 0)


def test_normalize_rgb_and_caffe_bgr():
    px = np.array([[[0, 127.5, 255]]], np.float32)
    np.testing.assert_allclose(normalize(px, MOBILENET).numpy(), [[[-1, 0, 1]]])
    px = np.array([[[10, 20, 30]]], np.float32)  # R, G, B
    np.testing.assert_allclose(normalize(px, CAFFE).numpy(),
                               [[[30 - 103.939, 20 - 116.779, 10 - 123.68]]], rtol=1e-6)


def test_preprocess_for_inference_and_back_mapping():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (50, 100, 3), np.uint8)
    x, hw = preprocess_for_inference(img, 64, MOBILENET)
    canvas, hw2 = letterbox(img, 64)
    np.testing.assert_array_equal(x.numpy(), normalize(canvas, MOBILENET).numpy())
    assert hw.numpy().tolist() == [32, 64]
    # a box normalized to the original maps to the canvas by y * 32/64, x * 64/64 ...
    box = np.array([[0.2, 0.1, 0.8, 0.5]], np.float32)
    on_canvas = box * np.array([32 / 64, 1, 32 / 64, 1], np.float32)
    np.testing.assert_allclose(canvas_to_original(on_canvas, hw.numpy(), 64), box, atol=1e-6)
    np.testing.assert_allclose(canvas_to_original(tf.constant(on_canvas), hw, 64).numpy(), box,
                               atol=1e-6)


def _scene(seed=0):
    """200x120 noisy grey image with a red and a blue rectangle; boxes normalized."""
    rng = np.random.default_rng(seed)
    img = rng.integers(80, 170, (120, 200, 1), np.uint8).repeat(3, axis=2)
    img[20:80, 30:110] = RED  # rows 20..79, cols 30..109 -> box x 30..110, y 20..80
    img[60:110, 150:190] = BLUE
    boxes = np.array([[20 / 120, 30 / 200, 80 / 120, 110 / 200],
                      [60 / 120, 150 / 200, 110 / 120, 190 / 200]], np.float32)
    return img, boxes


def _close(canvas, colour):
    return np.all(np.abs(canvas.astype(np.int32) - np.array(colour)) < 60, axis=-1)


def test_augmentation_keeps_boxes_on_their_pixels():
    img, boxes = _scene()
    cfg = AugmentConfig(scale_jitter=(0.5, 2.0), photometric=False, min_visible=0.3)
    H = W = 128
    partial, flipped = 0, 0
    for seed in range(24):
        canvas, out, visible = augment_example(img, boxes, tf.constant([seed, 7], tf.int64), (H, W), cfg)
        canvas, out, visible = canvas.numpy(), out.numpy(), visible.numpy()
        partial += int(np.any((visible > 0) & (visible < 0.99)))
        for box, vis, colour in zip(out, visible, (RED, BLUE)):
            mask = _close(canvas, colour)
            if vis < cfg.min_visible:
                continue
            y0, x0, y1, x1 = box * [H, W, H, W]
            if y1 - y0 < 4 or x1 - x0 < 4:
                continue
            inner = canvas[int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1]
            assert _close(inner, colour).mean() > 0.95, (seed, box)
            # and the colour's pixels lie inside the box (1 px margin for bilinear blending)
            ys, xs = np.nonzero(mask)
            inside = (ys >= y0 - 1) & (ys < y1 + 1) & (xs >= x0 - 1) & (xs < x1 + 1)
            assert inside.mean() > 0.95, (seed, box)
        red_cx = (out[0, 1] + out[0, 3]) / 2
        blue_cx = (out[1, 1] + out[1, 3]) / 2
        flipped += int(visible[0] > 0 and visible[1] > 0 and red_cx > blue_cx)
    assert partial > 0 and flipped > 0  # crops and flips really happened


def test_no_augmentation_is_exactly_letterbox():
    img, boxes = _scene()
    canvas, out, visible = augment_example(img, boxes, tf.constant([0, 0], tf.int64), 128, None)
    ref, hw = letterbox(img, 128)
    np.testing.assert_array_equal(canvas.numpy(), ref.numpy())
    nh, nw = hw.numpy()
    np.testing.assert_allclose(out.numpy(), boxes * [nh / 128, nw / 128, nh / 128, nw / 128], atol=1e-6)
    np.testing.assert_allclose(visible.numpy(), [1, 1], atol=1e-5)


def test_photometric_keeps_padding_and_range():
    img, boxes = _scene()
    cfg = AugmentConfig(hflip=False, scale_jitter=(1, 1), brightness=0.3, contrast=(0.5, 1.5),
                        saturation=(0.5, 1.5), hue=0.1)
    changed = 0
    for seed in range(4):
        canvas, _, _ = augment_example(img, boxes, tf.constant([seed, 1], tf.int64), 256, cfg)
        c = canvas.numpy()
        assert c.min() >= 0 and c.max() <= 255
        assert np.all(c[154:] == 0)  # 120 * 256/200 = 153.6 -> 154 rows of content
        ref, _ = letterbox(img, 256)
        changed += int(np.abs(c - ref.numpy()).mean() > 1)
    assert changed == 4


def _dataset(tmp_path, n=3, crowd=False):
    records = []
    for k in range(n):
        img, boxes = _scene(k)
        path = tmp_path / f"s{k}.png"
        Image.fromarray(img).save(path)
        records.append(DetectionRecord(str(path), 200, 120, boxes, [0, 1],
                                       [False, crowd and k == 0], [False, False], k + 1))
    return DetectionDataset(tuple(records), LabelMap.from_names(["red", "blue"]))


ANCHORS = generate_anchors((64, 64), 3, 4, 4.0, 2, (0.5, 1.0, 2.0))


ATSS = dict(matcher="atss", level_sizes=[8 * 8 * 6, 4 * 4 * 6], atss_top_k=9)


@pytest.mark.parametrize("matcher", [{}, ATSS], ids=["iou", "atss"])
def test_eval_pipeline_targets_equal_encode_targets(tmp_path, matcher):
    ds = _dataset(tmp_path)
    tds = build_detection_dataset(ds, image_size=64, anchors=ANCHORS, normalization=MOBILENET,
                                  batch_size=2, training=False, **matcher)
    batches = list(tds)
    assert [b[0].shape[0] for b in batches] == [2, 1]
    x, y = batches[0]
    assert x.shape == (2, 64, 64, 3) and y["box_deltas"].shape == (2, len(ANCHORS), 5)
    assert y["class_logits"].shape == (2, len(ANCHORS))
    img = load_image(ds.records[0].image_path)
    ref, hw = preprocess_for_inference(img, 64, MOBILENET)
    np.testing.assert_allclose(x[0].numpy(), ref.numpy(), atol=1e-6)
    nh, nw = hw.numpy()  # (38, 64): 120 * 64/200 = 38.4
    canvas_boxes = ds.records[0].boxes * np.array([nh / 64, nw / 64, nh / 64, nw / 64], np.float32)
    t = encode_targets(canvas_boxes, np.array([0, 1]), ANCHORS, image_size=(64, 64), **matcher)
    np.testing.assert_allclose(y["box_deltas"][0].numpy(), t["box_deltas"].numpy(), atol=1e-4)
    np.testing.assert_array_equal(y["class_logits"][0].numpy(), t["class_logits"].numpy())
    assert set(np.unique(y["class_logits"][0].numpy())) >= {-1.0, 0.0, 1.0}


def test_matcher_options_follow_the_config():
    from keras_fpn.config import config_from_dict
    from keras_fpn.tasks.detection import matcher_options

    cfg = config_from_dict({}, ["model.image_size=[96, 160]", "model.neck.max_level=5",
                                "model.anchors.scales_per_octave=2", "model.anchors.aspect_ratios=[1.0]",
                                "train.matcher=atss", "train.atss_top_k=4"])
    kw = matcher_options(cfg)
    assert kw["matcher"] == "atss" and kw["atss_top_k"] == 4
    assert kw["level_sizes"] == [12 * 20 * 2, 6 * 10 * 2, 3 * 5 * 2] and len(kw["anchors"]) == 630


def test_training_pipeline_deterministic_per_seed_and_new_each_epoch(tmp_path):
    ds = _dataset(tmp_path, n=4)

    def build(seed, cache=False):
        return build_detection_dataset(ds, image_size=64, anchors=ANCHORS, normalization=MOBILENET,
                                       batch_size=2, training=True, seed=seed, deterministic=True,
                                       cache=cache)

    a, b = build(5), build(5)
    ea = [x.numpy() for x, _ in a]
    eb = [x.numpy() for x, _ in b]
    assert len(ea) == 2 and all(np.array_equal(p, q) for p, q in zip(ea, eb))
    ea2 = [x.numpy() for x, _ in a]  # second epoch: new shuffle/augmentation
    assert not all(np.array_equal(p, q) for p, q in zip(ea, ea2))
    ec = [x.numpy() for x, _ in build(6)]
    assert not all(np.array_equal(p, q) for p, q in zip(ea, ec))
    cached = build(5, cache=True)
    assert sum(x.shape[0] for x, _ in cached) == 4 and sum(x.shape[0] for x, _ in cached) == 4


def test_no_augmentation_caches_prepared_examples_and_reshuffles_them(tmp_path):
    ds = _dataset(tmp_path, n=4)
    identity = AugmentConfig(hflip=False, scale_jitter=(1.0, 1.0), photometric=False)
    assert identity.is_identity and not AugmentConfig().is_identity

    def epochs(cache, seed=3):
        tds = build_detection_dataset(ds, image_size=64, anchors=ANCHORS, normalization=MOBILENET, batch_size=1,
                                      training=True, augment=identity, seed=seed, cache=cache, deterministic=True)
        return [[(x.numpy()[0], y["box_deltas"].numpy()[0], y["class_logits"].numpy()[0]) for x, y in tds]
                for _ in range(2)]

    def key(example):  # which image: the 4 scenes differ in their pixel sums
        return round(float(example[0].sum()), 1)

    cached, plain = epochs(True), epochs(False)
    first, second = cached
    assert sorted(map(key, first)) == sorted(map(key, second)) and len(first) == 4
    assert [key(e) for e in first] != [key(e) for e in second]  # reshuffled after the cache
    assert [key(e) for e in epochs(True)[0]] == [key(e) for e in first]  # same seed, same order
    reference = {key(e): e for e in plain[0]}
    rounded = []
    for x, deltas, cls in first:
        rx, rdeltas, rcls = min(reference.values(), key=lambda e: np.abs(e[0] - x).max())
        # the cached canvas is rounded to uint8: at most half a grey level off (1/255 after x / 127.5 - 1)
        assert np.abs(rx - x).max() <= 0.5 / 127.5 + 1e-6
        rounded.append(np.abs(rx - x).max() > 0)
        np.testing.assert_array_equal(rcls, cls)
        np.testing.assert_allclose(rdeltas, deltas, atol=1e-6)
    assert all(rounded)  # what is cached is the uint8 canvas (200 x 120 -> 64 x 38 px: fractional values)


def test_crowd_box_is_ignore_region_not_positive(tmp_path):
    ds = _dataset(tmp_path, n=1, crowd=True)  # the blue box is a crowd region
    anchors = generate_anchors((64, 64), 2, 3, 2.0, 1, (1.0,))  # 8 and 16 px: some fit inside
    x, y = next(iter(build_detection_dataset(ds, image_size=64, anchors=anchors,
                                             normalization=MOBILENET, batch_size=1,
                                             training=False)))
    cls = y["class_logits"][0].numpy()
    assert 1.0 not in cls and 0.0 in cls
    r = ds.records[0]
    c = r.boxes[1] * np.array([38 / 64, 1, 38 / 64, 1], np.float32)  # crowd box on the canvas
    a = anchors
    ih = np.clip(np.minimum(a[:, 2], c[2]) - np.maximum(a[:, 0], c[0]), 0, None)
    iw = np.clip(np.minimum(a[:, 3], c[3]) - np.maximum(a[:, 1], c[1]), 0, None)
    ioa = ih * iw / ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))
    assert (ioa > 0.5).sum() >= 2
    assert np.all(cls[(ioa > 0.5) & (cls != 0)] == -2.0)
    # crowd_ignore directly: an anchor fully inside -> -2, positives untouched
    out = crowd_ignore(tf.constant([-1.0, 0.0, -1.0]), tf.constant([[0, 0, .1, .1], [0, 0, .1, .1],
                                                                     [.5, .5, .9, .9]]),
                       tf.constant([[0.0, 0.0, 0.2, 0.2]]), 0.5)
    np.testing.assert_array_equal(out.numpy(), [-2.0, 0.0, -1.0])


def test_undecodable_image_skipped_or_strict_error(tmp_path, caplog):
    ds = _dataset(tmp_path, n=3)
    data = open(ds.records[1].image_path, "rb").read()
    open(ds.records[1].image_path, "wb").write(data[:200])
    kw = dict(image_size=64, anchors=ANCHORS, normalization=MOBILENET, batch_size=4, training=False)
    with caplog.at_level(logging.WARNING, logger="keras_fpn.data"):
        n = sum(x.shape[0] for x, _ in build_detection_dataset(ds, **kw))
    assert n == 2
    assert any("s1.png: cannot decode image" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match="cannot decode image"):
        list(build_detection_dataset(ds, strict=True, **kw))


def test_inference_dataset_and_representative_images(tmp_path):
    ds = _dataset(tmp_path, n=3)
    batches = list(build_inference_dataset(ds, image_size=64, normalization=CAFFE, batch_size=2))
    x, meta = batches[0]
    assert meta["image_id"].numpy().tolist() == [1, 2]
    assert meta["resized_hw"].numpy().tolist() == [[38, 64], [38, 64]]
    assert meta["original_hw"].numpy().tolist() == [[120, 200], [120, 200]]
    ref, _ = preprocess_for_inference(load_image(ds.records[0].image_path), 64, CAFFE)
    np.testing.assert_allclose(x[0].numpy(), ref.numpy(), atol=1e-5)
    reps = list(representative_images(ds, 2, 64, CAFFE, seed=0))
    assert len(reps) == 2 and all(r.shape == (1, 64, 64, 3) and r.dtype == np.float32 for r in reps)
    again = list(representative_images(ds, 2, 64, CAFFE, seed=0))
    assert all(np.array_equal(p, q) for p, q in zip(reps, again))
    every = list(representative_images(ds, 10, 64, CAFFE, seed=3))  # n > len: each image once
    assert len(every) == 3
    assert min(np.abs(r[0] - ref.numpy()).max() for r in every) < 1e-4  # same preprocessing


def test_augment_config_from_any():
    assert AugmentConfig.from_any(None) is None and AugmentConfig.from_any(False) is None
    assert AugmentConfig.from_any(True) == AugmentConfig()
    assert AugmentConfig.from_any({"hflip": False}).hflip is False
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        AugmentConfig.from_any({"flip": True})
    with pytest.raises(ValueError, match="scale_jitter"):
        AugmentConfig(scale_jitter=(2.0, 1.0))
    with pytest.raises(DataError, match="no images"):
        build_detection_dataset(DetectionDataset((), LabelMap.from_names(["a"])), image_size=64,
                                anchors=ANCHORS, normalization=MOBILENET, batch_size=1, training=True)


def test_photometric_affine_parts():
    from keras_fpn.data.augment import _photometric

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(60, 190, (8, 9, 3)), tf.float32)
    seeds = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8]], tf.int64)
    off = dict(brightness=0.0, contrast=(1, 1), saturation=(1, 1), hue=0.0)
    np.testing.assert_allclose(_photometric(x, seeds, AugmentConfig(**off)).numpy(), x.numpy(), atol=1e-4)
    gray = _photometric(x, seeds, AugmentConfig(**{**off, "saturation": (0, 0)})).numpy()
    luma = x.numpy() @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-3)
    shift = _photometric(x, seeds, AugmentConfig(**{**off, "brightness": 0.2})).numpy() - x.numpy()
    assert np.ptp(shift) < 1e-3 and 0 < abs(shift.mean()) <= 51
    con = _photometric(x, seeds, AugmentConfig(**{**off, "contrast": (2, 2)})).numpy()
    mean = x.numpy().mean(axis=(0, 1))
    np.testing.assert_allclose(con, np.clip(mean + 2 * (x.numpy() - mean), 0, 255), atol=1e-3)
    hue = _photometric(x, seeds, AugmentConfig(**{**off, "hue": 0.2})).numpy()
    np.testing.assert_allclose(hue @ np.array([0.299, 0.587, 0.114]), luma, atol=0.05)  # luma kept
    assert np.abs(hue - x.numpy()).max() > 5
