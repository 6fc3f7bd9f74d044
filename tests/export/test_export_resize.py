"""The export side of model.resize: fpn_meta.json's ``input.resize``, calibration images, and a real
stretch export that fpn_edge runs like Keras on a non-square photo."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import export_helpers as H


def _with_resize(cfg, resize):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, resize=resize))


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_metadata_records_the_resize(resize):
    from fpn_edge.metadata import validate_meta
    from fpn_export.tflite import export_metadata

    meta = export_metadata(_with_resize(H.tiny_config(), resize), task="detection", labels=H.LABELS,
                           output="postprocess", mode="fp32", box_coder={"scale_factors": [10, 10, 5, 5]},
                           nms={"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 20,
                                "max_detections_per_class": 20})
    assert meta["input"]["resize"] == resize
    assert meta["config"]["model"]["resize"] == resize
    validate_meta(meta, "m.tflite")


def test_calibration_images_follow_the_resize(raccoon_dir):
    """Int8 calibration feeds what inference feeds: the stretched photo for a stretch model."""
    from fpn_export.calibration import representative_from_config
    from keras_fpn.data.images import load_image
    from keras_fpn.data.preprocess import preprocess_for_inference

    cfg = _with_resize(H.tiny_config(raccoon_dir), "stretch")
    first = next(representative_from_config(cfg, n=1, seed=0)())
    assert first.shape == (1, *H.SIZE, 3)
    ds = H.raccoon(raccoon_dir)
    ref = [preprocess_for_inference(load_image(r.image_path), H.SIZE, H.NORM, "stretch")[0].numpy()
           for r in ds.records]
    assert min(np.abs(first[0] - r).max() for r in ref) <= 1e-5


@pytest.mark.slow
def test_stretch_export_matches_keras_predict(tmp_path, mobilenet_v2_weights, raccoon_dir):
    """The tiny detector exported fp32 (raw: fpn_edge's numpy decode = keras_fpn's) with ``model.resize:
    stretch``: fpn_edge reads the mode from the file and gives Keras predict's detections on a non-square
    photo (pixels)."""
    from fpn_edge import Detector
    from fpn_export.detection import export_detector
    from keras_fpn.data.images import load_image
    from keras_fpn.training.predict import detect_image

    cfg = _with_resize(H.tiny_config(raccoon_dir), "stretch")
    path = export_detector(H.tiny_twin(mobilenet_v2_weights[0.35]), cfg, H.LABELS, "fp32",
                           out=tmp_path / "stretch.tflite", raw=True, representative=H.calibration(raccoon_dir))
    det = Detector.from_file(path, threads=1)
    assert det.resize == "stretch"
    photo = next(r.image_path for r in H.raccoon(raccoon_dir).records[160:]
                 if abs(np.divide(*load_image(r.image_path).shape[:2]) - 1) > 0.2)
    img = load_image(photo)
    ref = detect_image(H.tiny_model(mobilenet_v2_weights[0.35]), cfg.model, H.LABELS, img, threshold=0.05,
                       max_detections=20)
    got = det.detect(img, score_threshold=0.05, max_detections=20)
    assert len(ref) > 0 and len(got) == len(ref)
    # the same set (near-equal scores of the random head may swap places): every Keras detection has an
    # fpn_edge twin within half a pixel and 1e-3 of score
    got_rows = np.array([[*d.box_xyxy, d.score] for d in got])
    for d in ref:
        err = np.abs(got_rows - [*d["box_xyxy"], d["score"]])
        assert np.any((err[:, :4].max(axis=1) <= 0.5) & (err[:, 4] <= 1e-3)), d
