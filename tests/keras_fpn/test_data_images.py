"""load_image: modes, alpha rule, EXIF orientation, content-based format."""
import os

import numpy as np
import pytest
from PIL import Image

from keras_fpn.data import DataError, load_image, read_image_info, read_voc


def test_grayscale_and_cmyk_become_rgb(tmp_path):
    Image.new("L", (4, 3), 77).save(tmp_path / "g.jpg", quality=100)
    g = load_image(tmp_path / "g.jpg")
    assert g.shape == (3, 4, 3) and g.dtype == np.uint8
    assert np.all(g == g[..., :1]) and abs(int(g[0, 0, 0]) - 77) <= 1
    Image.new("CMYK", (5, 2), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    assert read_image_info(tmp_path / "c.jpg").mode == "CMYK"
    c = load_image(tmp_path / "c.jpg")
    assert c.shape == (2, 5, 3)
    assert c[0, 0, 0] > 240 and c[0, 0, 1] < 15 and c[0, 0, 2] < 15  # pure red


def test_rgba_composited_on_white_exactly(tmp_path):
    a = np.zeros((1, 4, 4), np.uint8)
    a[0] = [[100, 0, 200, 0], [100, 0, 200, 128], [100, 0, 200, 255], [7, 8, 9, 1]]
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png")
    rgb = a[0, :, :3].astype(np.int64)
    alpha = a[0, :, 3:].astype(np.int64)
    expect = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    np.testing.assert_array_equal(out[0], expect)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [177, 127, 227])  # (100*128 + 255*127 + 127) // 255


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "p.png", transparency=1)
    np.testing.assert_array_equal(load_image(tmp_path / "p.png")[0], [[255, 0, 0], [255, 255, 255]])


def test_png_named_jpg_is_read_by_content(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    Image.fromarray(arr).save(tmp_path / "x.jpg", format="PNG")
    assert read_image_info(tmp_path / "x.jpg").format == "PNG"
    np.testing.assert_array_equal(load_image(tmp_path / "x.jpg"), arr)


def test_exif_rotation_applied_and_boxes_refer_to_displayed_image(tmp_path):
    stored = np.zeros((50, 100, 3), np.uint8)  # stored 100 wide x 50 high
    stored[:10, :20] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif)
    info = read_image_info(tmp_path / "r.png")
    assert (info.width, info.height, info.stored_width, info.stored_height) == (50, 100, 100, 50)
    shown = load_image(tmp_path / "r.png")
    assert shown.shape == (100, 50, 3)
    # rotating clockwise moves the stored top-left block to the displayed top-right
    assert np.all(shown[:20, 40:] == [255, 0, 0]) and shown[20:, :].max() == 0 and shown[:, :40].max() == 0
    with open(tmp_path / "r.xml", "w") as f:
        f.write("<annotation><filename>r.png</filename><size><width>50</width><height>100</height>"
                "</size><object><name>red</name><bndbox><xmin>40</xmin><ymin>0</ymin><xmax>50</xmax>"
                "<ymax>20</ymax></bndbox></object></annotation>")
    r = read_voc(tmp_path, strict=True).records[0]
    assert (r.width, r.height) == (50, 100)
    y0, x0, y1, x1 = np.round(r.boxes[0] * [100, 50, 100, 50]).astype(int)
    assert np.all(shown[y0:y1, x0:x1] == [255, 0, 0])


def test_missing_and_truncated_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="nope.jpg: image file not found"):
        load_image(tmp_path / "nope.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[:600])
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "t.jpg")
    assert str(e.value).startswith(os.fspath(tmp_path / "t.jpg") + ": cannot decode image")
    assert "\n" not in str(e.value)
