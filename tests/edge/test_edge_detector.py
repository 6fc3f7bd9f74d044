"""fpn_edge.Detector / interpreter: raw and post-process models, quantized I/O, every error case."""
import sys

import numpy as np
import pytest

import edge_tiny_models as etm
from fpn_edge import Detector, EdgeError
from fpn_edge.interpreter import interpreter_backend, load_interpreter, parse_delegate
from fpn_edge.metadata import strip_metadata
from fpn_edge.postprocess import decode_detections
from fpn_edge.preprocess import quantize


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return etm.get_models(tmp_path_factory)


@pytest.fixture(scope="module")
def image_path(raccoon_dir):
    return sorted((raccoon_dir / "images").glob("*.jpg"))[0]


def test_raw_detect_on_real_image(models, image_path):
    det = Detector.from_file(models["raw_fp32"], threads=1)
    assert det.output_kind == "raw" and det.input_size == (etm.H, etm.W)
    assert det.delegate == "cpu (XNNPACK, 1 thread)" and det.backend == "ai-edge-litert"
    img = det.load(image_path)
    h, w = img.shape[:2]
    dets = det.detect(image_path)
    assert 0 < len(dets) <= etm.NMS["max_detections"]
    # the same numbers by hand: preprocess -> raw outputs -> numpy decode -> undo the letterbox
    x, info = det.preprocess(img)
    out = det.raw_outputs(x)
    assert out["box_deltas"].shape == (1, etm.A, 4) and out["class_logits"].shape == (1, etm.A, etm.C)
    ref = decode_detections(out["box_deltas"][0], out["class_logits"][0], etm.tiny_anchors(),
                            scale_factors=etm.SCALE_FACTORS, score_threshold=etm.NMS["score_threshold"],
                            iou_threshold=etm.NMS["iou_threshold"],
                            max_detections_per_class=etm.NMS["max_detections_per_class"],
                            max_detections=etm.NMS["max_detections"])
    n = ref["num_detections"]
    assert len(dets) == n
    sy, sx = etm.H / info.new_h, etm.W / info.new_w
    for d, box, s, c in zip(dets, ref["boxes"][:n], ref["scores"][:n], ref["classes"][:n]):
        assert d.class_id == c and d.label == etm.LABELS[c]
        assert d.score == pytest.approx(float(s), abs=1e-6)
        exp = np.clip(box * [sy, sx, sy, sx], 0, 1)
        np.testing.assert_allclose(d.box_yxyx, exp, atol=1e-6)
        np.testing.assert_allclose(d.box_xyxy, [exp[1] * w, exp[0] * h, exp[3] * w, exp[2] * h], atol=1e-3)
        assert 0 <= d.box_xyxy[0] <= d.box_xyxy[2] <= w and 0 <= d.box_xyxy[1] <= d.box_xyxy[3] <= h
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    assert set(dets[0].to_dict()) == {"class_id", "label", "score", "box_xyxy", "box_yxyx"}


@pytest.mark.parametrize("name", ["raw_fp32", "pp_fp32", "raw_int8", "pp_int8"])
def test_threshold_and_max_detections(models, image_path, name):
    det = Detector.from_file(models[name], threads=1)
    all_dets = det.detect(image_path)
    assert all(d.score >= etm.NMS["score_threshold"] - 1e-6 for d in all_dets)
    top = det.detect(image_path, max_detections=3)
    assert len(top) == 3
    assert [d.class_id for d in top] == [d.class_id for d in all_dets[:3]]
    thr = sorted(d.score for d in all_dets)[len(all_dets) // 2]
    high = det.detect(image_path, score_threshold=thr)
    assert 0 < len(high) < len(all_dets) and all(d.score >= thr for d in high)


def test_int8_io_quantization(models, image_path):
    """uint8 input quantized by its (scale, zero_point); int8 raw outputs dequantized."""
    det = Detector.from_file(models["raw_int8"], threads=1)
    assert det.input_dtype == np.uint8
    outs = {d["name"]: d for d in det.interpreter.get_output_details()}
    assert all(np.dtype(d["dtype"]) == np.int8 for d in outs.values())
    ref = Detector.from_file(models["raw_fp32"], threads=1)
    x, _ = ref.preprocess(ref.load(image_path))
    a, b = det.raw_outputs(x.copy()), ref.raw_outputs(x)
    for k in ("box_deltas", "class_logits"):
        scale = det.interpreter.get_tensor_details()[det._out_map[k]]["quantization"][0]
        err = np.abs(a[k] - b[k]).max()
        assert a[k].dtype == np.float32 and err < 12 * scale + 0.05, (k, err, scale)
    # the quantized input is what TFLite's own QUANTIZE op would produce from the float canvas
    scale, zp = det._input["quantization"]
    v = (x / np.float32(scale)).astype(np.float32).astype(np.float64)
    ref = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + zp, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(det._qinput, ref)


def test_buffers_reused(models, image_path):
    det = Detector.from_file(models["pp_int8"], threads=1)
    ids = (id(det._canvas), id(det._norm), id(det._qinput))
    first = det.detect(image_path)
    for _ in range(3):
        again = det.detect(image_path)
    assert (id(det._canvas), id(det._norm), id(det._qinput)) == ids
    assert [d.to_dict() for d in again] == [d.to_dict() for d in first]
    # a differently sized input reuses the same buffers too
    det.detect(np.zeros((10, 300, 3), np.uint8))
    assert (id(det._canvas), id(det._norm), id(det._qinput)) == ids


def test_postprocess_outputs_mapped_by_op_not_position(models):
    det = Detector.from_file(models["pp_fp32"])
    order = [d["index"] for d in det.interpreter.get_output_details()]
    mapped = [det._out_map[k] for k in ("boxes", "classes", "scores", "num_detections")]
    assert sorted(order) == sorted(mapped)
    assert order != mapped  # the interpreter's own order is not the SSD order (why mapping matters)


# -- error cases --------------------------------------------------------------------------------

def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_model(tmp_path):
    with pytest.raises(EdgeError) as e:
        Detector.from_file(tmp_path / "missing.tflite")
    assert _one_line(e) == f"{tmp_path / 'missing.tflite'}: model file not found"


def test_not_a_tflite_file(tmp_path, image_path):
    p = tmp_path / "photo.tflite"
    p.write_bytes(image_path.read_bytes())
    with pytest.raises(EdgeError) as e:
        Detector.from_file(p)
    assert "photo.tflite: not a TFLite model" in _one_line(e)
    (tmp_path / "tiny.tflite").write_bytes(b"abc")
    with pytest.raises(EdgeError, match="not a TFLite model"):
        Detector.from_file(tmp_path / "tiny.tflite")
    with pytest.raises(EdgeError, match="not a file"):
        Detector.from_file(tmp_path)


@pytest.mark.parametrize("frac", [0.2, 0.6, 0.97])
def test_truncated_model(models, tmp_path, frac):
    data = strip_metadata(models["pp_fp32"].read_bytes())
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[:int(len(data) * frac)])
    with pytest.raises(EdgeError) as e:
        Detector.from_file(p)
    assert "cut.tflite: cannot load the TFLite model, the file is truncated or corrupt" in _one_line(e)


def test_model_without_metadata(models):
    with pytest.raises(EdgeError) as e:
        Detector.from_file(models["raw_fp32_nometa"])
    assert "raw_fp32_nometa.tflite: the model has no keras-fpn metadata" in _one_line(e)


@pytest.mark.parametrize("spec, message", [
    ("edgetpu", "cannot load the Edge TPU delegate library libedgetpu"),
    ("edgetpu:usb:0", "cannot load the Edge TPU delegate library libedgetpu"),
    ("gpu:/nonexistent/libgpu_delegate.so", "cannot load the GPU delegate library /nonexistent/libgpu_delegate.so"),
    ("gpu", "the gpu delegate needs its library path"),
    ("tpu", "unknown delegate 'tpu'"),
])
def test_missing_delegate(models, spec, message, capfd):
    with pytest.raises(EdgeError) as e:
        Detector.from_file(models["pp_fp32"], delegate=spec)
    assert message in _one_line(e)
    assert "Traceback" not in capfd.readouterr().err


def test_delegate_parsing():
    assert parse_delegate(None).kind == "cpu"
    assert parse_delegate("edgetpu:pci:0").options == {"device": "pci:0"}
    assert parse_delegate("gpu:/x/lib.so").library == "/x/lib.so"
    assert parse_delegate("/opt/libfoo.so").kind == "external"


def test_not_a_delegate_library(models):
    libm = next((p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6",
                             "/lib/aarch64-linux-gnu/libm.so.6") if __import__("os").path.exists(p)), None)
    if libm is None:
        pytest.skip("no libm to try")
    with pytest.raises(EdgeError, match="is not a TFLite external delegate"):
        Detector.from_file(models["pp_fp32"], delegate=f"gpu:{libm}")


def test_wrong_input_image(models, tmp_path):
    det = Detector.from_file(models["pp_fp32"])
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(EdgeError) as e:
        det.detect(tmp_path / "x.jpg")
    assert "x.jpg: not an image Pillow can read" in _one_line(e)
    with pytest.raises(EdgeError, match="image file not found"):
        det.detect(tmp_path / "none.jpg")
    with pytest.raises(EdgeError, match="expected a uint8 RGB image"):
        det.detect(np.zeros((10, 10, 3), np.float64))
    with pytest.raises(EdgeError, match=r"expected an image of shape \[h, w, 3\]"):
        det.detect(np.zeros((10, 10, 3, 1), np.uint8))


def test_bad_threads(models):
    with pytest.raises(EdgeError, match="threads must be >= 1"):
        load_interpreter(models["pp_fp32"], threads=0)


def test_no_interpreter_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(EdgeError) as e:
        interpreter_backend()
    assert "pip install ai-edge-litert" in _one_line(e)


def test_tflite_runtime_fallback(monkeypatch):
    """Without ai_edge_litert the tflite_runtime module is used (a stand-in module here)."""
    import types
    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter, fake.load_delegate = object, lambda *a, **k: None
    pkg = types.ModuleType("tflite_runtime")
    pkg.interpreter = fake
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    assert interpreter_backend()[2] == "tflite-runtime"


def test_pixel_quantization_rule_by_hand():
    """The uint8 input is the pixels themselves when its quantization is the normalization."""
    from fpn_edge.preprocess import is_pixel_quantization

    mobilenet = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}
    assert is_pixel_quantization(mobilenet, 1 / 127.5, 128, np.uint8)
    assert is_pixel_quantization(mobilenet, 2 / 255, 127, np.uint8)          # the int8 exports' 127
    assert not is_pixel_quantization(mobilenet, 1 / 127.5, 120, np.uint8)    # zero point 7.5 steps off
    assert not is_pixel_quantization(mobilenet, 0.01, 128, np.uint8)         # another range
    assert not is_pixel_quantization(mobilenet, 1 / 127.5, 0, np.int8)       # int8 input: no raw pixels
    caffe = {"channel_order": "BGR", "mean": [103.9, 116.8, 123.7], "std": [1.0] * 3}
    assert not is_pixel_quantization(caffe, 1.0, 117, np.uint8)


def test_uint8_input_is_the_rounded_canvas(models, image_path):
    """A MobileNet-normalized uint8 model gets the canvas' pixels (as MediaPipe / pycoral feed them),
    never more than 1 step from what quantizing the normalized canvas gives."""
    det = Detector.from_file(models["pp_int8"], threads=1)
    scale, zp = det._input["quantization"]
    assert det.pixel_input, (det._normalization, scale, zp)
    det.detect(image_path)
    np.testing.assert_array_equal(det._qinput[0], np.rint(det._canvas).astype(np.uint8))
    quantized = quantize(det._norm, scale, zp, np.uint8)
    assert np.abs(quantized.astype(int) - det._qinput.astype(int)).max() <= 1
