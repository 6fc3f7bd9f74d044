"""Bad input: each case is skipped with one warning naming the file, or raises when strict."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from keras_fpn.data import DataError, read_coco, read_voc, read_yolo, verify_images


def _img(path, w=100, h=50, colour=(90, 120, 150), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path, format=fmt)
    return str(path)


def _xml(path, filename, size=(100, 50), objects=(("a", (10, 10, 50, 40)),)):
    size_xml = "" if size is None else (f"<size><width>{size[0]}</width><height>{size[1]}</height>"
                                        "</size>")
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    with open(path, "w") as f:
        f.write(f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>")


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "keras_fpn.data"]


def _voc(tmp_path, n=2):
    for k in range(n):
        _img(tmp_path / f"i{k}.jpg")
        _xml(tmp_path / f"i{k}.xml", f"i{k}.jpg")


def test_missing_image_skipped_with_one_warning(tmp_path, caplog):
    _voc(tmp_path)
    os.remove(tmp_path / "i1.jpg")
    ds = read_voc(tmp_path)
    assert ds.num_images == 1
    w = _warnings(caplog)
    assert len(w) == 2  # the item + the summary
    assert "i1.xml" in w[0] and "image file not found" in w[0] and "skipped image" in w[0]
    assert "\n" not in w[0]
    assert "1 x skipped image" in w[1]
    with pytest.raises(DataError, match=r"i1\.jpg: image file not found"):
        read_voc(tmp_path, strict=True)


def test_corrupt_image_file_skipped(tmp_path, caplog):
    _voc(tmp_path)
    (tmp_path / "i0.jpg").write_bytes(b"this is not a jpeg at all")
    ds = read_voc(tmp_path)
    assert ds.num_images == 1
    assert "not a readable image" in _warnings(caplog)[0]
    with pytest.raises(DataError, match="i0.jpg: not a readable image"):
        read_voc(tmp_path, strict=True)


def test_truncated_jpeg_caught_by_verify_images(tmp_path, caplog):
    path = tmp_path / "i0.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 100, 3), np.uint8)).save(path, quality=95)
    _xml(tmp_path / "i0.xml", "i0.jpg")
    _img(tmp_path / "i1.jpg")
    _xml(tmp_path / "i1.xml", "i1.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = read_voc(tmp_path)  # headers are fine: the reader keeps it
    assert ds.num_images == 2
    checked = verify_images(ds)
    assert checked.num_images == 1
    assert any("i0.jpg" in m and "cannot decode image" in m for m in _warnings(caplog))
    with pytest.raises(DataError, match="i0.jpg: cannot decode image"):
        verify_images(ds, strict=True)


@pytest.mark.parametrize("size", [(0, 0), None])
def test_voc_zero_or_missing_size_read_from_image(tmp_path, caplog, size):
    _img(tmp_path / "i0.jpg", 100, 50)
    _xml(tmp_path / "i0.xml", "i0.jpg", size=size)
    ds = read_voc(tmp_path, strict=True)  # a repair, not an error
    r = ds.records[0]
    assert (r.width, r.height) == (100, 50)
    np.testing.assert_allclose(r.boxes, [[0.2, 0.1, 0.8, 0.5]], atol=1e-7)
    assert [i.action for i in ds.issues] == ["size from image"]
    assert _warnings(caplog) == []


def test_size_mismatch_skips_image(tmp_path, caplog):
    _img(tmp_path / "i0.jpg", 100, 50)
    _xml(tmp_path / "i0.xml", "i0.jpg", size=(300, 200))
    _voc(tmp_path / "ok", 1)
    os.replace(tmp_path / "ok" / "i0.jpg", tmp_path / "i1.jpg")
    _xml(tmp_path / "i1.xml", "i1.jpg")
    ds = read_voc(tmp_path)
    assert ds.num_images == 1
    assert "annotation size 300x200 differs from the image's real size 100x50" in _warnings(caplog)[0]


def test_boxes_outside_clipped_and_empty_dropped(tmp_path, caplog):
    _img(tmp_path / "i0.jpg", 100, 50)
    _xml(tmp_path / "i0.xml", "i0.jpg", objects=[
        ("a", (-20, 10, 50, 70)),     # outside: clipped to (0, 10, 50, 50)
        ("a", (30, 10, 30, 40)),      # zero width: dropped
        ("a", (60, 40, 40, 20)),      # negative: dropped
        ("a", (120, 10, 150, 40)),    # entirely right of the image: dropped
        ("a", (10, 10, 100.6, 50.4)),  # within 1 px: clipped silently
    ])
    ds = read_voc(tmp_path)
    r = ds.records[0]
    np.testing.assert_allclose(r.boxes, [[0.2, 0.0, 1.0, 0.5], [0.2, 0.1, 1.0, 1.0]], atol=1e-7)
    actions = [i.action for i in ds.issues]
    assert actions == ["clipped box", "dropped box", "dropped box", "dropped box"]
    w = _warnings(caplog)
    assert "object 0 (a) [xmin=-20, ymin=10, xmax=50, ymax=70] px extends outside" in w[0]
    assert "zero or negative area" in w[1]
    with pytest.raises(DataError, match="extends outside the 100x50 image"):
        read_voc(tmp_path, strict=True)


def test_unknown_class_name_dropped(tmp_path, caplog):
    _img(tmp_path / "i0.jpg")
    _xml(tmp_path / "i0.xml", "i0.jpg", objects=[("a", (10, 10, 50, 40)), ("zebra", (0, 0, 5, 5))])
    ds = read_voc(tmp_path, class_names=["a"])
    assert ds.num_boxes == 1
    assert "unknown class name 'zebra'" in _warnings(caplog)[0]
    with pytest.raises(DataError, match="unknown class name 'zebra'"):
        read_voc(tmp_path, class_names=["a"], strict=True)


def test_malformed_and_empty_xml_skipped(tmp_path, caplog):
    _voc(tmp_path, 3)
    (tmp_path / "i1.xml").write_text("<annotation><filename>i1.jpg</filename>")
    (tmp_path / "i2.xml").write_text("")
    ds = read_voc(tmp_path)
    assert ds.num_images == 1
    w = _warnings(caplog)
    assert "i1.xml: malformed XML" in w[0] and "i2.xml: malformed XML" in w[1]
    with pytest.raises(DataError, match="i1.xml: malformed XML"):
        read_voc(tmp_path, strict=True)


def test_malformed_and_empty_json_raise(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"images": [}')
    with pytest.raises(DataError, match=r"a\.json: malformed JSON \(Expecting value: line 1"):
        read_coco(p)
    p.write_text("")
    with pytest.raises(DataError, match="a.json: empty file"):
        read_coco(p)
    p.write_text('{"annotations": []}')
    with pytest.raises(DataError, match="no 'images' list"):
        read_coco(p)


def test_coco_duplicate_image_id_unknown_category_and_image(tmp_path, caplog):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
                       {"id": 1, "file_name": "b.jpg", "width": 100, "height": 50}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                            {"id": 2, "image_id": 1, "category_id": 77, "bbox": [0, 0, 10, 10]},
                            {"id": 3, "image_id": 9, "category_id": 1, "bbox": [0, 0, 10, 10]},
                            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
            "categories": [{"id": 1, "name": "x"}]}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data))
    ds = read_coco(p)
    assert ds.num_images == 1 and ds.num_boxes == 1
    assert os.path.basename(ds.records[0].image_path) == "a.jpg"
    w = " | ".join(_warnings(caplog))
    assert "duplicate annotation id 3" in w
    assert "b.jpg: duplicate image id 1" in w
    assert "unknown category_id 77" in w
    assert "unknown image id 9" in w
    with pytest.raises(DataError, match="duplicate annotation id 3"):
        read_coco(p, strict=True)


def test_coco_with_no_annotations_is_background(tmp_path):
    _img(tmp_path / "a.jpg")
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
                             "categories": [{"id": 1, "name": "x"}]}))
    ds = read_coco(p, strict=True)
    assert ds.num_images == 1 and ds.num_boxes == 0


def test_yolo_empty_and_bad_rows(tmp_path, caplog):
    _img(tmp_path / "images" / "a.jpg")
    _img(tmp_path / "images" / "b.jpg")
    os.makedirs(tmp_path / "labels")
    (tmp_path / "labels" / "a.txt").write_text("")  # empty: background image
    (tmp_path / "labels" / "b.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n0 0.5 x 0.1 0.1\n0 0.5 0.5\n")
    ds = read_yolo(tmp_path / "images", class_names=["a", "b"])
    assert ds.num_images == 2 and ds.num_boxes == 1
    w = _warnings(caplog)
    assert "b.txt: line 2 has class 5 outside 0..1" in w[0]
    assert "line 3 is not numeric" in w[1]
    assert "line 4 has 3 values" in w[2]
    with pytest.raises(DataError, match="line 2 has class 5"):
        read_yolo(tmp_path / "images", class_names=["a", "b"], strict=True)


def test_exif_size_confusion_is_skipped(tmp_path, caplog):
    """An annotation sized for the stored (un-rotated) pixels is ambiguous: skipped."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 50)).save(tmp_path / "r.jpg", exif=exif)  # displayed 50x100
    _xml(tmp_path / "r.xml", "r.jpg", size=(100, 50))
    _img(tmp_path / "k.jpg")
    _xml(tmp_path / "k.xml", "k.jpg")
    ds = read_voc(tmp_path)
    assert ds.num_images == 1
    assert "EXIF orientation 6 displays it as 50x100" in _warnings(caplog)[0]
