"""Include lists and splits: ``include_images`` (the one rule) and ``keras_fpn.data.splits``."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from keras_fpn.config import config_from_dict
from keras_fpn.data import DataError, DetectionDataset, DetectionRecord, LabelMap, include_images
from keras_fpn.data.splits import load_datasets, load_eval_split, load_split

NAMES = ["raccoon-1.jpg", "raccoon-2.jpg", "raccoon-3.jpg", "raccoon-4.jpg"]


def _dataset(root="/data/images") -> DetectionDataset:
    """Four records (include lists read no image, so the files need not exist)."""
    records = [DetectionRecord(f"{root}/{n}", 100, 80, [[0.1, 0.1, 0.5, 0.5]], [0], None, None, k + 1)
               for k, n in enumerate(NAMES)]
    return DetectionDataset(records, LabelMap.from_names(["raccoon"]), source="hand")


def _names(ds) -> list:
    return [r.image_path.rsplit("/", 1)[-1] for r in ds]


def test_txt_and_raccoon_csv_give_the_same_subset(tmp_path):
    txt = tmp_path / "train.txt"
    # base-name match: folders in the list do not matter; blank lines are ignored
    txt.write_text("raccoon-3.jpg\n\nsome/other/dir/raccoon-1.jpg\n")
    csv = tmp_path / "train_labels.csv"  # raccoon's splits/*.csv: one row per box, so names repeat
    csv.write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n"
                   "raccoon-3.jpg,100,80,raccoon,1,2,30,40\n"
                   "raccoon-1.jpg,100,80,raccoon,5,5,50,50\n"
                   "raccoon-3.jpg,100,80,raccoon,40,40,90,70\n")
    ds = _dataset()
    a, b = include_images(ds, txt), include_images(ds, csv)
    assert _names(a) == _names(b) == ["raccoon-1.jpg", "raccoon-3.jpg"]  # dataset order, no duplicates
    assert [r.image_id for r in a] == [r.image_id for r in b] == [1, 3]
    assert a.label_map == ds.label_map


def test_absent_listed_image_left_out_with_one_warning(tmp_path, caplog):
    txt = tmp_path / "list.txt"
    txt.write_text("raccoon-2.jpg\nraccoon-99.jpg\nraccoon-98.jpg\n")
    with caplog.at_level(logging.WARNING, logger="keras_fpn.data"):
        out = include_images(_dataset(), str(txt))
    assert _names(out) == ["raccoon-2.jpg"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(txt) in warnings[0].getMessage() and "2 listed image(s)" in warnings[0].getMessage()


def test_no_listed_image_in_dataset_is_an_error_naming_the_file(tmp_path):
    txt = tmp_path / "wrong.txt"
    txt.write_text("cat.jpg\ndog.jpg\n")
    with pytest.raises(DataError, match=r"wrong\.txt: none of its 2 image names"):
        include_images(_dataset(), txt)


def test_csv_without_filename_column_is_an_error(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("image,class\nraccoon-1.jpg,raccoon\n")
    with pytest.raises(DataError, match=r"labels\.csv: a CSV include list needs a 'filename' column"):
        include_images(_dataset(), csv)


def test_unreadable_include_list_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"missing\.txt: cannot read include list"):
        include_images(_dataset(), tmp_path / "missing.txt")


def _coco(folder, classes, n=2) -> str:
    """A tiny COCO split in ``folder`` (``n`` 16x16 JPEGs, one box each)."""
    folder.mkdir()
    images, anns = [], []
    for k in range(n):
        Image.new("RGB", (16, 16), (40 * k, 90, 160)).save(folder / f"im{k}.jpg")
        images.append({"id": k + 1, "file_name": f"im{k}.jpg", "width": 16, "height": 16})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64,
                     "iscrowd": 0})
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def test_load_datasets_applies_include_lists_through_the_one_rule(tmp_path):
    train = _coco(tmp_path / "train", ["a", "b"], n=3)
    val = _coco(tmp_path / "val", ["a", "b"])
    (tmp_path / "keep.txt").write_text("im0.jpg\nim2.jpg\n")
    cfg = config_from_dict({"data": {"train": train, "val": val, "train_include": str(tmp_path / "keep.txt")}})
    tr, va = load_datasets(cfg)
    assert _names(tr) == ["im0.jpg", "im2.jpg"] and len(va) == 2
    assert _names(load_split(train, str(tmp_path / "keep.txt"))) == _names(tr)
    np.testing.assert_array_equal(tr[0].boxes, load_split(train)[0].boxes)
    assert load_datasets(config_from_dict({"data": {"train": train}}))[1] is None


def test_load_datasets_refuses_val_classes_that_differ(tmp_path):
    train = _coco(tmp_path / "train", ["a", "b"])
    val = _coco(tmp_path / "val", ["a", "c"])
    with pytest.raises(ValueError, match=r"data.val classes \['a', 'c'\] differ from the classes \['a', 'b'\]"):
        load_datasets(config_from_dict({"data": {"train": train, "val": val}}))
    with pytest.raises(ValueError, match="data.train is not set"):
        load_datasets(config_from_dict({}))


def test_records_sharing_a_listed_base_name_are_all_kept():
    """train/0001.jpg and val/0001.jpg in one dataset: a list naming 0001.jpg keeps both records."""
    records = [DetectionRecord(f"/data/{d}/0001.jpg", 100, 80, [[0.1, 0.1, 0.5, 0.5]], [0], None, None, k + 1)
               for k, d in enumerate(["train", "val", "test"])]
    ds = DetectionDataset(records[:2] + [DetectionRecord("/data/x/0002.jpg", 100, 80, [[0.1, 0.1, 0.5, 0.5]], [0],
                                                         None, None, 9)], LabelMap.from_names(["raccoon"]),
                          source="hand")
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("0001.jpg\n")
    kept = include_images(ds, f.name)
    assert [r.image_id for r in kept] == [1, 2]


def test_evaluate_and_compare_read_the_val_split_through_the_one_rule(tmp_path, caplog):
    """``load_eval_split``: data.val with data.val_include by default, ``--include`` over it (also
    without ``--data``: it used to be ignored there), ``--data`` without an include list; the run's
    classes must match; an undecodable image leaves with its boxes and one warning naming it."""
    val = _coco(tmp_path / "val", ["a", "b"], n=3)
    (tmp_path / "one.txt").write_text("im1.jpg\n")
    (tmp_path / "two.txt").write_text("im0.jpg\nim2.jpg\n")
    cfg = config_from_dict({"data": {"val": val, "val_include": str(tmp_path / "one.txt")}})
    assert _names(load_eval_split(cfg)) == ["im1.jpg"]
    assert _names(load_eval_split(cfg, include=str(tmp_path / "two.txt"))) == ["im0.jpg", "im2.jpg"]
    assert _names(load_eval_split(cfg, data=val)) == ["im0.jpg", "im1.jpg", "im2.jpg"]
    assert _names(load_eval_split(cfg, data=val, include=str(tmp_path / "two.txt"))) == ["im0.jpg", "im2.jpg"]
    with pytest.raises(ValueError, match=r"dataset classes \['a', 'b'\] differ from the run's \['a'\]"):
        load_eval_split(cfg, labels=["a"])
    with pytest.raises(ValueError, match="run7: the config has no data.val; pass --data"):
        load_eval_split(config_from_dict({}), where="run7")
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "val" / "im2.jpg", quality=100)
    data = (tmp_path / "val" / "im2.jpg").read_bytes()
    (tmp_path / "val" / "im2.jpg").write_bytes(data[:-200])  # the header reads, the pixels do not
    caplog.clear()
    kept = load_eval_split(cfg, data=val)
    assert _names(kept) == ["im0.jpg", "im1.jpg"] and kept.num_boxes == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "im2.jpg" in warnings[0] and "skipped image with its 1 box(es)" in warnings[0]
    with pytest.raises(DataError, match=r"im2\.jpg: cannot decode image"):
        load_eval_split(config_from_dict({"data": {"val": val, "strict": True}}))
