"""fpn_edge.preprocess: numpy letterbox == TF's tf.image.resize pipeline; image loading rules."""
import numpy as np
import pytest
from PIL import Image

from fpn_edge.errors import EdgeError
from fpn_edge.preprocess import (LetterboxInfo, as_rgb_uint8, letterbox, letterbox_size, load_image,
                                 normalize, quantize, resize_bilinear)

tf = pytest.importorskip("tensorflow")


def _tf_letterbox(image_u8, H, W, norm):
    """The TF pipeline as DESIGN.md states it (resize bilinear half-pixel, no antialias, pad, normalize)."""
    h, w = image_u8.shape[:2]
    new_h, new_w = letterbox_size(h, w, H, W)
    x = tf.image.resize(tf.convert_to_tensor(image_u8), (new_h, new_w), method="bilinear", antialias=False)
    x = tf.image.pad_to_bounding_box(x, 0, 0, H, W)
    if norm["channel_order"] == "BGR":
        x = x[..., ::-1]
    return ((x - np.float32(norm["mean"])) / np.float32(norm["std"])).numpy()


@pytest.mark.parametrize("in_hw, out_hw", [((37, 53), (64, 96)), ((480, 640), (61, 83)),
                                           ((100, 100), (100, 100)), ((5, 200), (1, 7)),
                                           ((300, 17), (911, 23))])
def test_resize_matches_tf(in_hw, out_hw):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, in_hw + (3,), dtype=np.uint8)
    ref = tf.image.resize(img, out_hw, method="bilinear", antialias=False).numpy()
    got = resize_bilinear(img, *out_hw)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= 1e-3  # float32 rounding only (exact in practice)


@pytest.mark.parametrize("canvas", [(64, 96), (320, 320), (256, 192)])
@pytest.mark.parametrize("norm", [{"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3},
                                  {"channel_order": "BGR", "mean": [103.939, 116.779, 123.68],
                                   "std": [1.0, 1.0, 1.0]}])
def test_letterbox_parity_real_image(raccoon_dir, canvas, norm):
    """Real raccoon photos through numpy vs TF: the normalized canvases agree."""
    files = sorted((raccoon_dir / "images").glob("*.jpg"))[:3]
    worst = 0.0
    for f in files:
        img = load_image(f)
        H, W = canvas
        got_canvas, info = letterbox(img, H, W)
        got = normalize(got_canvas, norm)
        ref = _tf_letterbox(img, H, W, norm)
        assert got.shape == ref.shape == (H, W, 3)
        diff = float(np.max(np.abs(got - ref)))
        worst = max(worst, diff)
        # padding is exactly the normalized zero pixel
        assert info.new_h == H or np.all(got_canvas[info.new_h:] == 0)
        assert info.new_w == W or np.all(got_canvas[:, info.new_w:] == 0)
    # in 0..255 units the bound is 1e-3 * std; measured 0 (bit-identical) on these machines
    assert worst <= 1e-3 / min(norm["std"]) + 1e-6, worst
    print(f"letterbox parity {canvas} {norm['channel_order']}: max abs diff {worst:.3g}")


def test_letterbox_geometry_and_box_mapping():
    assert letterbox_size(480, 640, 64, 96) == (64, 85)     # scale = min(64/480, 96/640) = 0.1333
    assert letterbox_size(640, 480, 320, 320) == (320, 240)
    assert letterbox_size(1, 5000, 64, 96) == (1, 96)       # never below 1 px
    info = LetterboxInfo(480, 640, 64, 85, 64, 96)
    # a canvas box covering the whole resized image is the whole original image
    full = info.canvas_to_image(np.array([[0, 0, 1.0, 85 / 96]], np.float32))
    np.testing.assert_allclose(full, [[0, 0, 1, 1]], atol=1e-6)
    # boxes in the padding are clipped to the image
    np.testing.assert_allclose(info.canvas_to_image(np.array([[0.5, 0.5, 1.2, 1.0]])),
                               [[0.5, 0.5 * 96 / 85, 1, 1]], atol=1e-6)


def test_normalize_out_buffer_and_bgr():
    canvas = np.zeros((2, 2, 3), np.float32)
    canvas[..., 0], canvas[..., 1], canvas[..., 2] = 10, 20, 30
    out = np.empty_like(canvas)
    res = normalize(canvas, {"channel_order": "BGR", "mean": [1, 2, 3], "std": [1, 2, 3]}, out=out)
    assert res is out
    np.testing.assert_allclose(out[0, 0], [(30 - 1) / 1, (20 - 2) / 2, (10 - 3) / 3])


def test_quantize_rounds_half_away_and_saturates():
    x = np.array([-1.0, -0.25, 0.25, 0.75, 100.0], np.float32)
    q = quantize(x, 0.5, 127, np.uint8)
    np.testing.assert_array_equal(q, [125, 126, 128, 129, 255])   # -0.5 -> -1, 0.5 -> 1, 1.5 -> 2
    q8 = quantize(x, 0.5, 0, np.int8)
    np.testing.assert_array_equal(q8, [-2, -1, 1, 2, 127])


def test_quantize_float32_rounding_equals_float64_reference():
    # The float32 rounding must decide every tie and near-tie like the exact float64 rule
    # (round half away from zero of the float32 quotient), including saturation and inf.
    def reference(x, scale, zp, dtype):
        info = np.iinfo(dtype)
        v = (np.asarray(x, np.float32) / np.float32(scale)).astype(np.float64)
        return np.clip(np.copysign(np.floor(np.abs(v) + 0.5), v) + zp, info.min, info.max).astype(dtype)

    rng = np.random.default_rng(0)
    halves = np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)
    near = np.concatenate([halves, np.nextafter(halves, np.float32(0)), np.nextafter(halves, np.float32(1e9)),
                           np.float32([0.49999997, -0.49999997, 0.0, -0.0, 8388607.5, 1e30, -1e30, np.inf, -np.inf])])
    for scale, zp, dtype in ((1 / 127.5, 127, np.uint8), (0.00784314, -1, np.int8), (0.5, 0, np.int8),
                             (3.7, 200, np.uint8), (1.0, -128, np.int8)):
        x = np.concatenate([near * np.float32(scale), rng.normal(0, 300 * scale, 20000).astype(np.float32),
                            rng.normal(0, 1e-6, 100).astype(np.float32)])
        out = np.empty(x.shape, dtype)
        np.testing.assert_array_equal(quantize(x, scale, zp, dtype), reference(x, scale, zp, dtype))
        assert quantize(x, scale, zp, dtype, out=out) is out
        np.testing.assert_array_equal(out, reference(x, scale, zp, dtype))
        out[:], work = 0, np.full((2,) + x.shape, np.nan, np.float32)   # the reused buffers of a runner
        quantize(x, scale, zp, dtype, out=out, work=work)
        np.testing.assert_array_equal(out, reference(x, scale, zp, dtype))


def test_load_image_rules(tmp_path):
    # RGBA: composited over white in integer arithmetic
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3], rgba[1, :, 3], rgba[2:, :, 3] = 0, 255, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = load_image(tmp_path / "a.png")
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8
    assert tuple(a[0, 0]) == (255, 255, 255)       # transparent -> white
    assert tuple(a[1, 0]) == (200, 0, 0)           # opaque -> as stored
    assert tuple(a[2, 0]) == ((200 * 128 + 255 * 127 + 127) // 255, (255 * 127 + 127) // 255,
                              (255 * 127 + 127) // 255)
    # a PNG named .jpg is read by content
    (tmp_path / "png_named.jpg").write_bytes((tmp_path / "a.png").read_bytes())
    np.testing.assert_array_equal(load_image(tmp_path / "png_named.jpg"), a)
    # grayscale replicated
    Image.fromarray(np.full((3, 4), 77, np.uint8), "L").save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.shape == (3, 4, 3) and np.all(g == 77)
    # EXIF orientation 6 (rotate 90 CW on display): a 4x6 stored image loads as 6x4
    im = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "r.jpg").shape == (6, 4, 3)


def test_load_image_errors(tmp_path):
    with pytest.raises(EdgeError, match=r"nope\.jpg: image file not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(EdgeError, match=r"bad\.jpg: not an image"):
        load_image(tmp_path / "bad.jpg")
    # a truncated JPEG: header fine, data cut
    buf = tmp_path / "ok.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf)
    (tmp_path / "cut.jpg").write_bytes(buf.read_bytes()[:300])
    with pytest.raises(EdgeError, match=r"cut\.jpg: "):
        load_image(tmp_path / "cut.jpg")


def test_as_rgb_uint8_rejects_wrong_arrays():
    with pytest.raises(EdgeError, match="expected a uint8 RGB image, got dtype float32"):
        as_rgb_uint8(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(EdgeError, match=r"shape \[h, w, 3\], got \[4, 4, 2\]"):
        as_rgb_uint8(np.zeros((4, 4, 2), np.uint8))
    assert as_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)


def test_same_pixels_as_keras_fpn_loader_and_pipeline(raccoon_dir, shared_data):
    """fpn_edge's loader + letterbox == keras_fpn.data's (the training/eval preprocessing)."""
    images = pytest.importorskip("keras_fpn.data.images")
    preprocess = pytest.importorskip("keras_fpn.data.preprocess")
    files = sorted((raccoon_dir / "images").glob("*.jpg"))[:3]
    fruit = shared_data / "fruit"
    if fruit.is_dir():   # PNGs named .jpg: every non-RGB one (RGBA, palette) + a few RGB
        fruit_files = sorted(fruit.rglob("*.jpg"))
        modes = {}
        for f in fruit_files:
            with Image.open(f) as im:
                modes[f] = im.mode
        files += [f for f in fruit_files if modes[f] != "RGB"] + fruit_files[:5]
        assert {"RGBA", "P"} <= set(modes.values())
    norm = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}
    worst = 0.0
    for f in files:
        ours = load_image(f)
        theirs = images.load_image(f)
        np.testing.assert_array_equal(ours, theirs, err_msg=str(f))
        x_tf, hw = preprocess.preprocess_for_inference(theirs, (64, 96), norm)
        canvas, info = letterbox(ours, 64, 96)
        assert (info.new_h, info.new_w) == tuple(int(v) for v in np.asarray(hw))
        worst = max(worst, float(np.max(np.abs(normalize(canvas, norm) - np.asarray(x_tf)))))
    assert worst <= 1e-5, worst
    print(f"{len(files)} images: keras_fpn vs fpn_edge preprocessing max abs diff {worst:.3g}")
