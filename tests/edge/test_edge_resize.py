"""fpn_edge and the metadata's ``input.resize``: stretch models (what MediaPipe / the Task Library feed),
letterbox for files written before the key; parity with the Keras side on non-square images."""
import json

import numpy as np
import pytest

import edge_tiny_models as etm
from fpn_edge import Detector, EdgeError
from fpn_edge.metadata import read_metadata, validate_meta, write_metadata
from fpn_edge.postprocess import decode_detections
from fpn_edge.preprocess import LetterboxInfo, letterbox, letterbox_size, load_image

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return etm.get_models(tmp_path_factory)


@pytest.fixture(scope="module")
def stretch_model(models):
    """The tiny raw fp32 detector (64 x 96 canvas) with ``input.resize: stretch`` in its metadata."""
    meta, anchors = read_metadata(models["raw_fp32"])
    meta["input"]["resize"] = "stretch"
    return write_metadata(models["raw_fp32_nometa"], meta, anchors, models["dir"] / "raw_fp32_stretch.tflite")


@pytest.fixture(scope="module")
def photo(raccoon_dir):
    """A non-square raccoon photo (its aspect ratio differs from the 64 x 96 canvas's)."""
    for f in sorted((raccoon_dir / "images").glob("*.jpg")):
        img = load_image(f)
        h, w = img.shape[:2]
        if abs(h / w - etm.H / etm.W) > 0.1:
            return f
    pytest.skip("no raccoon photo with another aspect ratio than the canvas")


def test_stretch_geometry_hand_computed():
    """640 x 480 (w x h) -> 320 x 320: sx = 0.5, sy = 2/3; the box [100, 60, 300, 240] lands on
    [50, 40, 150, 160] and maps back exactly."""
    assert letterbox_size(480, 640, 320, 320, "stretch") == (320, 320)
    assert letterbox_size(480, 640, 320, 320) == (240, 320)          # the default stays letterbox
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    canvas, info = letterbox(img, 320, 320, resize="stretch")
    assert info == LetterboxInfo(480, 640, 320, 320, 320, 320)
    ref = tf.image.resize(img, (320, 320), method="bilinear", antialias=False).numpy()
    assert np.max(np.abs(canvas - ref)) <= 1e-3
    x1, y1, x2, y2 = 100.0, 60.0, 300.0, 240.0
    canvas_box = np.array([[y1 * 2 / 3, x1 * 0.5, y2 * 2 / 3, x2 * 0.5]]) / 320   # = [40, 50, 160, 150] px
    np.testing.assert_allclose(canvas_box * 320, [[40, 50, 160, 150]])
    np.testing.assert_allclose(info.canvas_to_image(canvas_box) * [480, 640, 480, 640], [[y1, x1, y2, x2]],
                               atol=1e-4)
    with pytest.raises(ValueError, match="resize must be one of letterbox, stretch"):
        letterbox(img, 320, 320, resize="fit")


def test_keras_side_and_edge_stretch_canvases_agree(photo):
    """keras_fpn's stretch (tf.image.resize per axis) and fpn_edge's give the same canvas on a real photo."""
    from keras_fpn.data.preprocess import letterbox as tf_letterbox

    img = load_image(photo)
    ref, hw = tf_letterbox(img, (etm.H, etm.W), "stretch")
    got, info = letterbox(img, etm.H, etm.W, resize="stretch")
    assert tuple(hw.numpy()) == (info.new_h, info.new_w) == (etm.H, etm.W)
    assert np.max(np.abs(got - ref.numpy())) <= 1e-3


def test_metadata_resize_key(models, stretch_model, capsys):
    from fpn_edge.cli import main

    assert read_metadata(stretch_model)[0]["input"]["resize"] == "stretch"
    assert main(["info", str(stretch_model)]) == 0 and ", resize stretch\n" in capsys.readouterr().out
    assert main(["info", str(models["raw_fp32"])]) == 0 and ", resize letterbox\n" in capsys.readouterr().out
    assert Detector.from_file(stretch_model, threads=1).resize == "stretch"
    old = read_metadata(models["raw_fp32"])[0]
    assert "resize" not in old["input"]                                   # a file written before the key
    assert Detector.from_file(models["raw_fp32"], threads=1).resize == "letterbox"
    bad = json.loads(json.dumps(etm.meta_for("raw")))
    bad["input"]["resize"] = "crop"
    with pytest.raises(EdgeError, match=r"^m.tflite: metadata 'input.resize' must be one of letterbox, "
                                        r"stretch, got 'crop'$"):
        validate_meta(bad, where="m.tflite")


def test_stretch_detections_scaled_back_per_axis(stretch_model, photo):
    """Detector on a stretch model: the numpy decode's canvas boxes, scaled by w and h independently."""
    det = Detector.from_file(stretch_model, threads=1)
    img = det.load(photo)
    h, w = img.shape[:2]
    dets = det.detect(img)
    x, info = det.preprocess(img)
    assert (info.new_h, info.new_w) == (etm.H, etm.W)
    out = det.raw_outputs(x)
    ref = decode_detections(out["box_deltas"][0], out["class_logits"][0], etm.tiny_anchors(),
                            scale_factors=etm.SCALE_FACTORS, score_threshold=etm.NMS["score_threshold"],
                            iou_threshold=etm.NMS["iou_threshold"],
                            max_detections_per_class=etm.NMS["max_detections_per_class"],
                            max_detections=etm.NMS["max_detections"])
    n = int(ref["num_detections"])
    assert n > 0 and len(dets) == n
    for d, box in zip(dets, ref["boxes"][:n]):
        y1, x1, y2, x2 = np.clip(box, 0, 1)
        np.testing.assert_allclose(d.box_xyxy, [x1 * w, y1 * h, x2 * w, y2 * h], atol=1e-3)


def test_keras_vs_tflite_parity_stretch_on_non_square_photo(models, stretch_model, photo):
    """The same network run by Keras through keras_fpn's inference path (preprocess_for_inference with
    stretch, keras_fpn's decode, canvas_to_original) and by fpn_edge on the stretch export: the same
    detections in image pixels. The letterbox file of the same network gives other boxes (the mode matters)."""
    from keras_fpn.data.preprocess import canvas_to_original, preprocess_for_inference
    from keras_fpn.ops.postprocess import decode_detections as tf_decode

    img = load_image(photo)
    h, w = img.shape[:2]
    x, hw = preprocess_for_inference(img, (etm.H, etm.W), etm.NORMALIZATION, "stretch")
    deltas, logits = models["keras"](x[None], training=False)
    res = tf_decode(deltas, logits, etm.tiny_anchors(), scale_factors=etm.SCALE_FACTORS,
                    score_threshold=etm.NMS["score_threshold"], iou_threshold=etm.NMS["iou_threshold"],
                    max_detections=etm.NMS["max_detections"],
                    max_detections_per_class=etm.NMS["max_detections_per_class"])
    n = int(res["num_detections"][0])
    boxes = canvas_to_original(res["boxes"][0].numpy()[:n], hw.numpy(), (etm.H, etm.W))
    keras_px = boxes[:, [1, 0, 3, 2]] * [w, h, w, h]
    dets = Detector.from_file(stretch_model, threads=1).detect(img)
    assert n > 0 and len(dets) == n
    np.testing.assert_allclose([d.box_xyxy for d in dets], keras_px, atol=0.05)
    np.testing.assert_allclose([d.score for d in dets], res["scores"][0].numpy()[:n], atol=1e-4)
    letterboxed = Detector.from_file(models["raw_fp32"], threads=1).detect(img)
    assert not (len(letterboxed) == n and np.allclose([d.box_xyxy for d in letterboxed], keras_px, atol=1.0))


def test_segmenter_stretch_pastes_back_per_axis(tmp_path, photo):
    """A 1x1-conv 'segmenter' (logits = the input's channels) on a 64 x 96 canvas, exported with stretch
    metadata: fpn_edge's class map equals keras_fpn's (preprocess with stretch, logits_to_class_map)."""
    import keras

    from keras_fpn.data.preprocess import preprocess_for_inference
    from keras_fpn.evaluation.segmentation import logits_to_class_map

    inp = keras.Input((etm.H, etm.W, 3), batch_size=1)
    conv = keras.layers.Conv2D(3, 1, use_bias=False, name="seg")
    model = keras.Model(inp, conv(inp))
    conv.set_weights([np.eye(3, dtype=np.float32)[None, None]])
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    meta = {"task": "segmentation", "labels": ["background", "a", "b"], "output": "logits",
            "input": {"height": etm.H, "width": etm.W, "normalization": etm.NORMALIZATION, "resize": "stretch"},
            "segmentation": {"background_id": 0, "ignore_label": 255}}
    path = write_metadata(data, meta, None, tmp_path / "seg.tflite")
    from fpn_edge import Segmenter

    img = load_image(photo)
    got = Segmenter.from_file(path, threads=1).segment(img)
    x, hw = preprocess_for_inference(img, (etm.H, etm.W), etm.NORMALIZATION, "stretch")
    ref = logits_to_class_map(model(x[None]).numpy()[0], hw.numpy(), img.shape[:2])
    assert got.shape == img.shape[:2] and tuple(hw.numpy()) == (etm.H, etm.W)
    assert np.mean(got == ref) >= 0.999   # argmax ties at float rounding only
