"""Overfit one real raccoon photo with Model.fit; decode+NMS must find its box (IoU >= 0.7)."""
import pytest

import keras_fpn  # noqa: F401
import keras

from keras_fpn.config import config_from_dict
from keras_fpn.data.formats import read_dataset
from keras_fpn.data.preprocess import canvas_to_original, preprocess_for_inference
from keras_fpn.data.images import load_image
from keras_fpn.models.backbones import NORMALIZATION
from keras_fpn.models.detector import build_detector
from keras_fpn.ops.postprocess import decode_detections
from keras_fpn.ops.anchors import model_anchors
from keras_fpn.tasks import get_task


def _iou(a, b):
    y1, x1 = max(a[0], b[0]), max(a[1], b[1])
    y2, x2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(y2 - y1, 0) * max(x2 - x1, 0)
    area = lambda t: (t[2] - t[0]) * (t[3] - t[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.mark.slow
def test_overfit_one_raccoon_image(raccoon_dir, mobilenet_v2_weights):
    ds = read_dataset(raccoon_dir)
    one = ds.subset([i for i, r in enumerate(ds.records) if r.image_path.endswith("raccoon-1.jpg")])
    cfg = config_from_dict({
        "model": {"preset": "retinanet_mobilenetv2_fpn", "image_size": [256, 256], "num_classes": 1,
                  "backbone": {"alpha": 0.35, "weights": str(mobilenet_v2_weights[0.35])},
                  "neck": {"width": 32}, "head": {"width": 32, "depth": 2}},
        "data": {"hflip": False, "scale_jitter": [1.0, 1.0], "photometric": False, "cache": True},
        "train": {"batch_size": 4}})
    model = build_detector(cfg.model)
    task = get_task(cfg.model.task)
    loss, weights = task.losses(cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, loss_weights=weights)
    data = task.pipeline(cfg, one.subset([0, 0, 0, 0]), training=False).repeat()
    model.fit(data, steps_per_epoch=300, epochs=1, verbose=0)

    image = load_image(one.records[0].image_path)
    x, resized = preprocess_for_inference(image, cfg.model.image_size, NORMALIZATION["mobilenetv2"])
    raw = model(x[None], training=False)
    det = decode_detections(raw["box_deltas"], raw["class_logits"], model_anchors(cfg.model),
                            score_threshold=0.3, max_detections=10)
    assert int(det["num_detections"][0]) >= 1
    best = canvas_to_original(det["boxes"][0, :1].numpy(), resized.numpy(), cfg.model.image_size)[0]
    assert _iou(best, one.records[0].boxes[0]) >= 0.7
    assert float(det["scores"][0, 0]) > 0.5
