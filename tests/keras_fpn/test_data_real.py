"""The real datasets in ../shared/data: counts, defects handled, a few images decoded."""
import numpy as np
import pytest

from keras_fpn.data import include_images, load_image, read_dataset


def test_raccoon_voc(raccoon_dir):
    ds = read_dataset(raccoon_dir, strict=True)
    assert (ds.num_images, ds.num_boxes, ds.label_map.names) == (200, 217, ("raccoon",))
    assert ds.issues == ()
    train = include_images(ds, raccoon_dir / "splits" / "train_labels.csv")
    test = include_images(ds, raccoon_dir / "splits" / "test_labels.csv")
    assert (train.num_images, train.num_boxes, test.num_images, test.num_boxes) == (160, 173, 40, 44)
    r = next(r for r in ds if r.image_path.endswith("raccoon-1.jpg"))
    assert (r.width, r.height) == (650, 417)
    # <xmin>81 <ymin>88 <xmax>522 <ymax>408 in 650x417
    np.testing.assert_allclose(r.boxes, [[88 / 417, 81 / 650, 408 / 417, 522 / 650]], atol=1e-7)


@pytest.mark.parametrize("split,images,boxes,zero_size", [("train", 240, 465, 33), ("test", 60, 117, 4)])
def test_fruit_voc_with_zero_sizes_and_png_named_jpg(shared_data, split, images, boxes, zero_size):
    ds = read_dataset(shared_data / "fruit" / split, strict=True)
    assert (ds.num_images, ds.num_boxes) == (images, boxes)
    assert ds.label_map.names == ("apple", "banana", "orange")
    assert sum(i.action == "size from image" for i in ds.issues) == zero_size
    assert len(ds.issues) == zero_size
    if split == "train":
        by_name = {r.image_path.rsplit("/", 1)[-1]: r for r in ds}
        for name, size in [("apple_1.jpg", (349, 349)), ("apple_37.jpg", (389, 352)),
                           ("apple_17.jpg", None)]:
            r = by_name[name]
            img = load_image(r.image_path)  # RGBA / palette / RGB PNGs named .jpg
            assert img.shape == (r.height, r.width, 3) and img.dtype == np.uint8
            if size:
                assert (r.width, r.height) == size


def test_coco128_yolo(shared_data):
    ds = read_dataset(shared_data / "coco128")
    assert (ds.num_images, ds.num_boxes, ds.label_map.num_classes) == (128, 929, 80)
    assert sum(r.num_objects == 0 for r in ds) == 2  # 000000000250, 000000000508
    assert ds.issues == ()  # the 2 orphan label files are ignored, not errors


def test_coco128_coco_json_matches_yolo(shared_data):
    ds = read_dataset(shared_data / "coco128" / "annotations.json", strict=True)
    assert (ds.num_images, ds.num_boxes, ds.num_crowd) == (128, 929, 10)
    assert sum(r.num_objects for r in ds) == 939
    assert ds.label_map.num_classes == 80 and ds.label_map.source_ids[-1] == 90
    names = (shared_data / "coco128" / "classes.txt").read_text().split("\n")
    assert list(ds.label_map.names) == [n for n in names if n]
    yolo = read_dataset(shared_data / "coco128")
    y = {r.image_path.rsplit("/", 1)[-1]: r for r in yolo}
    for r in list(ds)[:10]:
        other = y[r.image_path.rsplit("/", 1)[-1]]
        keep = ~r.iscrowd
        a = r.boxes[keep][np.lexsort(r.boxes[keep].T)]
        b = other.boxes[np.lexsort(other.boxes.T)]
        np.testing.assert_allclose(a, b, atol=2e-3)
