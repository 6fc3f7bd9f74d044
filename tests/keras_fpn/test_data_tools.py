"""`keras-fpn data` tools: stats numbers, preview image, convert command."""
import argparse
import json
import os

import numpy as np
from PIL import Image

from keras_fpn.data import DetectionDataset, DetectionRecord, LabelMap, read_coco
from keras_fpn.data.cli import add_data_commands, convert_dataset
from keras_fpn.data.stats import compute_stats, format_stats


def _ds(tmp_path):
    Image.new("RGB", (640, 320)).save(tmp_path / "a.jpg")
    Image.new("RGB", (100, 100)).save(tmp_path / "b.jpg")
    # image a, 640x320 -> scale 0.5 at 320: boxes of 60 and 180 px (medium, large) become 30
    # and 90 px at the model input (small, medium); the crowd box is left out; b has no boxes.
    boxes = np.array([[0, 0, 60 / 320, 60 / 640], [0, 0, 180 / 320, 180 / 640], [0, 0, 1, 1]])
    a = DetectionRecord(str(tmp_path / "a.jpg"), 640, 320, boxes, [0, 1, 1], [0, 0, 1], None, 1)
    b = DetectionRecord(str(tmp_path / "b.jpg"), 100, 100, np.zeros((0, 4)), [], None, None, 2)
    return DetectionDataset((a, b), LabelMap.from_names(["cat", "dog"]), source="hand")


def test_stats_numbers(tmp_path):
    s = compute_stats(_ds(tmp_path), 320, 3, 7)
    assert (s["images"], s["boxes"], s["crowd"], s["background_images"]) == (2, 2, 1, 1)
    assert s["per_class"] == {"cat": 1, "dog": 1}
    assert s["boxes_per_image"]["histogram"] == [1, 0, 1]
    assert s["sizes_original"] == {"small": 0, "medium": 1, "large": 1}  # 60^2, 180^2 px
    assert s["sizes_model_input"] == {"small": 1, "medium": 1, "large": 0}  # 30^2, 90^2 px
    # FPN rule floor(4 + log2(s/224)) clamped to [3, 7]: 30 -> 1 -> 3, 90 -> 2 -> 3
    assert s["levels_fpn_rule"] == {"P3": 2, "P4": 0, "P5": 0, "P6": 0, "P7": 0}
    # nearest anchor round(log2(s/4)): 30 -> 2.91 -> 3, 90 -> 4.49 -> 4
    assert s["levels_anchor"] == {"P3": 1, "P4": 1, "P5": 0, "P6": 0, "P7": 0}
    text = format_stats(s)
    assert "COCO sizes, model input 320x320 (letterboxed box area): small 1, medium 1" in text


def test_preview_png(tmp_path):
    out = tmp_path / "p.png"
    from keras_fpn.data.preview import render_preview

    render_preview(_ds(tmp_path), out, num=2, image_size=64, cols=2)
    img = np.asarray(Image.open(out))
    assert img.shape == (64 + 8, 2 * 64 + 12, 3)
    assert (np.abs(img.astype(int) - img[..., :1]).sum(-1) > 100).any()  # coloured box lines drawn
    render_preview(_ds(tmp_path), tmp_path / "q.png", num=2, augmented=True, image_size=64)
    assert os.path.getsize(tmp_path / "q.png") > 0


def test_cli_parser_and_convert(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command"))
    Image.new("RGB", (100, 50)).save(tmp_path / "i.jpg")
    (tmp_path / "i.xml").write_text(
        "<annotation><filename>i.jpg</filename><size><width>100</width><height>50</height></size>"
        "<object><name>a</name><bndbox><xmin>10</xmin><ymin>5</ymin><xmax>60</xmax><ymax>45</ymax>"
        "</bndbox></object></annotation>")
    out = tmp_path / "out" / "c.json"
    args = parser.parse_args(["data", "convert", str(tmp_path), "--to", "coco", "--out", str(out)])
    assert args.func(args) == 0
    assert "1 images, 1 boxes" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["annotations"][0]["bbox"] == [10.0, 5.0, 50.0, 40.0]
    assert read_coco(out).num_boxes == 1
    args = parser.parse_args(["data", "stats", str(out), "--image-size", "64x128", "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == [64, 128]
    r = convert_dataset(str(tmp_path), tmp_path / "d.json")
    assert (r["images"], r["boxes"]) == (1, 1)


def test_preview_examples_follow_resize(tmp_path):
    """``data preview --resize``: image a (640 x 320) on a 64 px canvas; stretch keeps the normalized boxes,
    letterbox (scale 0.1, content 32 x 64) halves their y."""
    from keras_fpn.data.pipeline import augmented_examples
    from keras_fpn.data.preview import render_preview

    ds = _ds(tmp_path)
    want = ds.records[0].boxes[:2]
    stretch = next(augmented_examples(ds, 64, None, num=1, resize="stretch"))
    np.testing.assert_allclose(stretch["boxes"][:2], want, atol=1e-6)
    letterbox = next(augmented_examples(ds, 64, None, num=1))
    np.testing.assert_allclose(letterbox["boxes"][:2], want * [0.5, 1, 0.5, 1], atol=1e-6)
    assert render_preview(ds, tmp_path / "s.png", num=2, image_size=64, resize="stretch")
