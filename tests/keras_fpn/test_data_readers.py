"""Readers on hand-made tiny datasets: exact box values after conversion."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_fpn.data import (DataError, LabelMap, detect_format, read_coco, read_dataset, read_voc,
                            read_yolo)


def _img(path, w, h, colour=(90, 120, 150), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path, format=fmt)
    return str(path)


def _voc_xml(path, filename, size, objects):
    size_xml = "" if size is None else (f"<size><width>{size[0]}</width><height>{size[1]}</height>"
                                        "<depth>3</depth></size>")
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    with open(path, "w") as f:
        f.write(f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>")


def make_coco(tmp_path):
    _img(tmp_path / "images" / "a.jpg", 200, 100)
    _img(tmp_path / "images" / "b.jpg", 50, 80)
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 3, "file_name": "b.jpg", "width": 50, "height": 80}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [20, 10, 100, 50], "area": 4000,
             "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [0, 0, 200, 100], "area": 9000,
             "iscrowd": 1, "segmentation": {"size": [100, 200], "counts": "abc"}},
            {"id": 3, "image_id": 3, "category_id": 90, "bbox": [5, 8, 10, 40], "iscrowd": 0,
             "segmentation": [[5, 8, 15, 8, 15, 48]]},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 5, "name": "airplane"},
                       {"id": 18, "name": "dog"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_boxes_ids_crowd_and_segmentation(tmp_path):
    ds = read_coco(make_coco(tmp_path))
    assert ds.label_map == LabelMap(("airplane", "dog", "toothbrush"), (5, 18, 90))
    assert [r.image_id for r in ds] == [7, 3]
    a, b = ds.records
    assert (a.width, a.height) == (200, 100)
    # xywh px [20, 10, 100, 50] in 200x100 -> yxyx [10/100, 20/200, 60/100, 120/200]
    np.testing.assert_allclose(a.boxes, [[0.1, 0.1, 0.6, 0.6], [0.0, 0.0, 1.0, 1.0]], atol=1e-7)
    np.testing.assert_array_equal(a.classes, [1, 0])
    np.testing.assert_array_equal(a.iscrowd, [False, True])
    np.testing.assert_allclose(a.areas, [4000, 9000])
    assert a.segmentations[1] == {"size": [100, 200], "counts": "abc"}
    np.testing.assert_allclose(b.boxes, [[8 / 80, 5 / 50, 48 / 80, 15 / 50]], atol=1e-7)
    np.testing.assert_array_equal(b.classes, [2])
    assert b.areas[0] == 400  # no "area": box area in px
    assert ds.num_boxes == 2 and ds.num_crowd == 1
    assert ds.label_map.to_source(2) == 90 and ds.label_map.from_source(18) == 1


def test_voc_boxes_difficult_and_class_order(tmp_path):
    _img(tmp_path / "JPEGImages" / "x.jpg", 200, 100)
    _img(tmp_path / "JPEGImages" / "y.jpg", 64, 64)
    os.makedirs(tmp_path / "Annotations")
    _voc_xml(tmp_path / "Annotations" / "x.xml", "x.jpg", (200, 100),
             [("dog", (20, 10, 120, 60), 0), ("cat", (0, 50, 200, 100), 1)])
    _voc_xml(tmp_path / "Annotations" / "y.xml", "y.jpg", (64, 64), [])
    ds = read_voc(tmp_path)
    assert ds.label_map.names == ("cat", "dog") and ds.label_map.source_ids == (1, 2)
    x, y = ds.records
    np.testing.assert_allclose(x.boxes, [[0.1, 0.1, 0.6, 0.6], [0.5, 0.0, 1.0, 1.0]], atol=1e-7)
    np.testing.assert_array_equal(x.classes, [1, 0])
    np.testing.assert_array_equal(x.difficult, [False, True])
    assert y.num_objects == 0 and [r.image_id for r in ds] == [1, 2]
    fixed = read_voc(tmp_path / "Annotations", images_dir=tmp_path / "JPEGImages",
                     class_names=["dog", "cat", "bird"])
    np.testing.assert_array_equal(fixed.records[0].classes, [0, 1])
    assert fixed.label_map.num_classes == 3


def test_yolo_boxes_background_and_orphans(tmp_path):
    _img(tmp_path / "images" / "p.jpg", 200, 100)
    _img(tmp_path / "images" / "q.png", 40, 40, fmt="PNG")
    os.makedirs(tmp_path / "labels")
    (tmp_path / "labels" / "p.txt").write_text("1 0.35 0.35 0.5 0.5\n0 0.5 0.75 1.0 0.5\n")
    (tmp_path / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert detect_format(tmp_path) == "yolo"
    ds = read_dataset(tmp_path)
    assert ds.label_map.names == ("cat", "dog")
    assert [os.path.basename(r.image_path) for r in ds] == ["p.jpg", "q.png"]
    p, q = ds.records
    # cx cy w h (0.35, 0.35, 0.5, 0.5) -> yxyx (0.1, 0.1, 0.6, 0.6)
    np.testing.assert_allclose(p.boxes, [[0.1, 0.1, 0.6, 0.6], [0.5, 0.0, 1.0, 1.0]], atol=1e-7)
    np.testing.assert_array_equal(p.classes, [1, 0])
    assert q.num_objects == 0 and ds.issues == ()


def test_yolo_polygon_row_gives_bbox(tmp_path):
    _img(tmp_path / "images" / "p.jpg", 100, 100)
    os.makedirs(tmp_path / "labels")
    (tmp_path / "labels" / "p.txt").write_text("0 0.1 0.2 0.5 0.2 0.3 0.7\n")
    ds = read_yolo(tmp_path / "images", class_names=["a"])
    np.testing.assert_allclose(ds.records[0].boxes, [[0.2, 0.1, 0.7, 0.5]], atol=1e-7)


def test_coco_round_trip_through_writer(tmp_path):
    ds = read_coco(make_coco(tmp_path))
    out = ds.write_coco(tmp_path / "out" / "copy.json")
    back = read_coco(out)
    assert back.label_map == ds.label_map
    for r0, r1 in zip(ds, back):
        assert r0.image_id == r1.image_id and os.path.samefile(r0.image_path, r1.image_path)
        np.testing.assert_allclose(r0.boxes, r1.boxes, atol=1e-6)
        np.testing.assert_array_equal(r0.classes, r1.classes)
        np.testing.assert_array_equal(r0.iscrowd, r1.iscrowd)
        np.testing.assert_allclose(r0.areas, r1.areas)
    data = json.loads(open(out).read())
    assert data["annotations"][0]["bbox"] == [20.0, 10.0, 100.0, 50.0]
    assert data["annotations"][0]["category_id"] == 18
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".tmp")]


def test_voc_to_coco_keeps_difficult(tmp_path):
    _img(tmp_path / "x.jpg", 200, 100)
    _voc_xml(tmp_path / "x.xml", "x.jpg", (200, 100), [("dog", (20, 10, 120, 60), 1)])
    ds = read_voc(tmp_path)
    back = read_coco(ds.write_coco(tmp_path / "c.json"))
    np.testing.assert_array_equal(back.records[0].difficult, [True])
    assert back.label_map.source_ids == (1,)


def test_tfrecord_write_read_exact(tmp_path):
    pytest.importorskip("tensorflow")
    from keras_fpn.data import read_tfrecord, write_tfrecord

    ds = read_coco(make_coco(tmp_path))
    files = write_tfrecord(ds, tmp_path / "d.tfrecord")
    assert detect_format(files[0]) == "tfrecord"
    back = read_tfrecord(files, extract_dir=tmp_path / "x")
    assert back.label_map == ds.label_map  # labels are the source ids, text the names
    for r0, r1 in zip(ds, back):
        assert r1.image_id == r0.image_id and (r1.width, r1.height) == (r0.width, r0.height)
        np.testing.assert_array_equal(r0.boxes, r1.boxes)
        np.testing.assert_array_equal(r0.classes, r1.classes)
        np.testing.assert_array_equal(r0.iscrowd, r1.iscrowd)
        assert open(r0.image_path, "rb").read() == open(r1.image_path, "rb").read()


def test_tfrecord_hand_made_od_api_example(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from keras_fpn.data import read_tfrecord

    path = _img(tmp_path / "im.jpg", 200, 100)
    data = open(path, "rb").read()

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    def f(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    ex = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": b([data]), "image/format": b([b"jpeg"]), "image/height": i([100]),
        "image/width": i([200]), "image/filename": b([b"im.jpg"]), "image/source_id": b([b"42"]),
        "image/object/bbox/xmin": f([0.1, 0.5]), "image/object/bbox/xmax": f([0.6, 1.0]),
        "image/object/bbox/ymin": f([0.1, 0.0]), "image/object/bbox/ymax": f([0.6, 0.5]),
        "image/object/class/label": i([3, 1]), "image/object/class/text": b([b"dog", b"cat"])}))
    rec = tmp_path / "h.record"
    with tf.io.TFRecordWriter(str(rec)) as w:
        w.write(ex.SerializeToString())
    ds = read_dataset(rec, extract_dir=tmp_path / "x")
    assert ds.label_map == LabelMap(("cat", "dog"), (1, 3))
    r = ds.records[0]
    assert r.image_id == 42 and (r.width, r.height) == (200, 100)
    np.testing.assert_allclose(r.boxes, [[0.1, 0.1, 0.6, 0.6], [0.0, 0.5, 0.5, 1.0]], atol=1e-7)
    np.testing.assert_array_equal(r.classes, [1, 0])


def test_detect_format_rules(tmp_path):
    assert detect_format("x/y.json") == "coco"
    assert detect_format("x/train.record-00000-of-00010") == "tfrecord"
    assert detect_format("x/*.tfrecord") == "tfrecord"
    _img(tmp_path / "v" / "a.jpg", 10, 10)
    _voc_xml(tmp_path / "v" / "a.xml", "a.jpg", (10, 10), [])
    assert detect_format(tmp_path / "v") == "voc"
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        detect_format(tmp_path / "empty")
    ds = read_dataset({"format": "voc", "path": str(tmp_path / "v"), "class_names": ["z"]})
    assert ds.label_map.names == ("z",)
    assert read_dataset(f"voc:{tmp_path / 'v'}").num_images == 1


def test_tfrecord_writer_stores_pixels_plain_decoders_see_correctly(tmp_path):
    """RGBA PNG named .jpg and an EXIF-rotated JPEG: decode_image must give load_image's pixels."""
    tf = pytest.importorskip("tensorflow")
    from keras_fpn.data import DetectionDataset, DetectionRecord, load_image, write_tfrecord

    rgba = np.random.default_rng(0).integers(0, 256, (20, 30, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.jpg", format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.jpg", exif=exif, quality=95)
    recs = [DetectionRecord(str(tmp_path / "a.jpg"), 30, 20, [[0, 0, .5, .5]], [0], None, None, 1),
            DetectionRecord(str(tmp_path / "b.jpg"), 20, 30, [[0, 0, .5, .5]], [0], None, None, 2)]
    ds = DetectionDataset(tuple(recs), LabelMap.from_names(["x"]))
    path = write_tfrecord(ds, tmp_path / "o.tfrecord")[0]
    examples = [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    for rec, ex in zip(recs, examples):
        feat = ex.features.feature
        assert feat["image/format"].bytes_list.value[0] == b"png"
        decoded = tf.io.decode_image(feat["image/encoded"].bytes_list.value[0], channels=3).numpy()
        np.testing.assert_array_equal(decoded, load_image(rec.image_path))


def test_coco_check_images_false_trusts_json(tmp_path):
    path = make_coco(tmp_path)
    os.remove(tmp_path / "images" / "b.jpg")
    assert read_coco(path).num_images == 1
    fast = read_coco(path, check_images=False)
    assert fast.num_images == 2 and fast.records[1].image_path.endswith("b.jpg")
