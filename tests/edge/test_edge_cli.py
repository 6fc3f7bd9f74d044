"""fpn-edge CLI (detect / bench / info) and the TF-free proof (subprocess where TF cannot import)."""
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import edge_tiny_models as etm
from fpn_edge.cli import main

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return etm.get_models(tmp_path_factory)


@pytest.fixture(scope="module")
def images(raccoon_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    for f in sorted((raccoon_dir / "images").glob("*.jpg"))[:2]:
        shutil.copy(f, d / f.name)
    Image.fromarray(np.full((50, 70, 4), 128, np.uint8), "RGBA").save(d / "rgba.png")
    return d


def test_detect_images_and_dirs(models, images, tmp_path, capsys):
    out = tmp_path / "out"
    single = sorted(images.glob("*.jpg"))[0]
    rc = main(["detect", str(models["pp_int8"]), str(images), str(single), "--out", str(out),
               "--threshold", "0.4", "--max-detections", "5", "--threads", "1"])
    assert rc == 0
    report = json.loads((out / "detections.json").read_text())
    assert set(report) >= {"model", "output_kind", "delegate", "labels", "images", "errors", "box_format"}
    assert report["output_kind"] == "postprocess" and report["labels"] == etm.LABELS
    assert report["errors"] == [] and len(report["images"]) == 4   # 3 in the dir + the single file
    for entry in report["images"]:
        assert set(entry) == {"file", "width", "height", "detections", "annotated"}
        assert (out / entry["annotated"]).is_file()
        assert len(entry["detections"]) <= 5
        for d in entry["detections"]:
            assert set(d) == {"class_id", "label", "score", "box_xyxy", "box_yxyx"}
            assert d["score"] >= 0.4
            x1, y1, x2, y2 = d["box_xyxy"]
            assert 0 <= x1 <= x2 <= entry["width"] and 0 <= y1 <= y2 <= entry["height"]
    # the same image given twice gets two annotated files, not one overwritten
    assert len({e["annotated"] for e in report["images"]}) == 4
    with Image.open(out / report["images"][0]["annotated"]) as im:
        assert im.size == (report["images"][0]["width"], report["images"][0]["height"])
    err = capsys.readouterr().err
    assert "[4/4]" in err and "detections.json" in err
    assert not list(out.glob(".tmp-*"))


def test_detect_raw_model_matches_library(models, images, tmp_path):
    out = tmp_path / "o"
    assert main(["detect", str(models["raw_fp32"]), str(images), "--out", str(out), "--quiet",
                 "--no-images"]) == 0
    report = json.loads((out / "detections.json").read_text())
    from fpn_edge import Detector
    det = Detector.from_file(models["raw_fp32"])
    for entry in report["images"]:
        assert "annotated" not in entry
        ref = [d.to_dict() for d in det.detect(entry["file"])]
        assert entry["detections"] == ref
    assert list(out.iterdir()) == [out / "detections.json"]


def test_detect_bad_image_keeps_going(models, images, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    good = sorted(images.glob("*.jpg"))[0]
    out = tmp_path / "o"
    rc = main(["detect", str(models["pp_fp32"]), str(bad), str(good), "--out", str(out)])
    assert rc == 2
    report = json.loads((out / "detections.json").read_text())
    assert len(report["images"]) == 1 and report["errors"][0]["file"] == str(bad)
    err = capsys.readouterr().err
    assert f"fpn-edge: error: {bad}: " in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["detect", "{missing}", "{img}", "--out", "{out}"], "model file not found"),
    (["detect", "{notflite}", "{img}", "--out", "{out}"], "not a TFLite model"),
    (["detect", "{model}", "{tmp}/nope.jpg", "--out", "{out}"], "nope.jpg: input not found"),
    (["detect", "{model}", "{img}", "--out", "{out}", "--delegate", "edgetpu"], "Edge TPU delegate library"),
    (["bench", "{nometa}", "--delegate", "gpu:/no/such/lib.so"], "GPU delegate library /no/such/lib.so"),
    (["info", "{truncated}"], "truncated or corrupt"),
    (["detect", "{model}", "{emptydir}", "--out", "{out}"], "no image files in directory"),
])
def test_user_errors_one_line_exit_2(models, images, tmp_path, capsys, argv, message):
    (tmp_path / "x.tflite").write_text("hello")
    data = models["pp_fp32"].read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[:len(data) // 2])
    (tmp_path / "empty").mkdir()
    subs = {"missing": tmp_path / "m.tflite", "notflite": tmp_path / "x.tflite", "model": models["pp_fp32"],
            "nometa": models["raw_fp32_nometa"], "truncated": tmp_path / "cut.tflite",
            "img": sorted(images.glob("*.jpg"))[0], "out": tmp_path / "out", "tmp": tmp_path,
            "emptydir": tmp_path / "empty"}
    rc = main([a.format(**subs) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("fpn-edge: error: ") and message in err
    assert len(err.splitlines()) == 1, err


def test_video_needs_opencv(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    v = tmp_path / "clip.mp4"
    v.write_bytes(b"\x00" * 100)
    rc = main(["detect", str(models["pp_fp32"]), str(v), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "pip install opencv-python-headless" in capsys.readouterr().err


def test_bench_json(models, images, capsys):
    rc = main(["bench", str(models["pp_int8"]), "--runs", "5", "--warmup", "2", "--threads", "1", "--json",
               "--image", str(sorted(images.glob("*.jpg"))[0])])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"model", "model_size_bytes", "backend", "delegate", "threads", "runs", "warmup",
                        "input", "output_kind", "latency_ms", "throughput_fps", "peak_rss_mb", "rss_mb", "cpu"}
    assert res["runs"] == 5 and res["threads"] == 1 and res["delegate"] == "cpu (XNNPACK, 1 thread)"
    # int8 speed depends on the CPU's int8 dot product: recorded with every timing
    from fpn_edge.machine import DOT_PRODUCT_FLAGS, INT8_FLAGS
    assert set(res["cpu_flags"]) <= set(INT8_FLAGS)
    assert res["int8_dot_product"] == any(f in res["cpu_flags"] for f in DOT_PRODUCT_FLAGS)
    assert res["model_size_bytes"] == models["pp_int8"].stat().st_size
    assert res["input"] == {"shape": [1, etm.H, etm.W, 3], "dtype": "uint8"}
    for k in ("invoke", "end_to_end"):
        s = res["latency_ms"][k]
        assert set(s) == {"p50", "p90", "p99", "mean", "min", "max"}
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert res["latency_ms"]["invoke"]["mean"] <= res["latency_ms"]["end_to_end"]["mean"]
    assert res["throughput_fps"] > 0 and res["peak_rss_mb"] > 10


def test_bench_text_and_no_metadata(models, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", str(models["raw_fp32_nometa"]), "--runs", "3", "--warmup", "0",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("invoke", "p50", "p99", "throughput", "peak RSS", "cpu (XNNPACK"):
        assert word in text
    res = json.loads(out.read_text())
    assert res["output_kind"] is None and "end_to_end" not in res["latency_ms"]


def test_info(models, capsys):
    assert main(["info", str(models["pp_int8"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"][0]["dtype"] == "uint8" and "quantization" in info["inputs"][0]
    assert len(info["outputs"]) == 4 and all(o["dtype"] == "float32" for o in info["outputs"])
    assert "TFLite_Detection_PostProcess" in info["ops"] and "DELEGATE" not in info["ops"]
    assert info["metadata"]["labels"] == etm.LABELS and info["metadata"]["config"]["name"] == "tiny_test_detector"
    assert main(["info", str(models["raw_fp32"])]) == 0
    text = capsys.readouterr().out
    for word in ("inputs:", "outputs:", "ops (", "CONV_2D", "labels   (3) raccoon, cat, dog", "anchors  192",
                 "tiny_test_detector", "output   raw"):
        assert word in text, word
    assert main(["info", str(models["raw_fp32_nometa"])]) == 0
    assert "metadata: none" in capsys.readouterr().out


def test_tf_free_subprocess(models, images, tmp_path):
    """The whole detect path in a process where importing tensorflow / keras raises."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {{"tensorflow", "keras", "tf_keras", "keras_fpn", "fpn_export", "tensorflow_model_optimization"}}
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked in the TF-free test: " + name)
        sys.meta_path.insert(0, Blocker())
        try:
            import tensorflow
            raise SystemExit("tensorflow imported despite the blocker")
        except ImportError:
            pass
        import fpn_edge
        from fpn_edge import Detector
        from fpn_edge.cli import main
        for name in ("raw_fp32", "pp_fp32", "raw_int8", "pp_int8"):
            det = Detector.from_file({str(models['dir'])!r} + "/" + name + ".tflite", threads=1)
            dets = det.detect({str(sorted(images.glob('*.jpg'))[0])!r})
            assert dets, name
        out = {str(tmp_path / 'o')!r}
        assert main(["detect", {str(models['pp_int8'])!r}, {str(images)!r}, "--out", out, "--quiet"]) == 0
        assert main(["bench", {str(models['raw_int8'])!r}, "--runs", "2", "--warmup", "1", "--json"]) == 0
        assert main(["info", {str(models['pp_fp32'])!r}]) == 0
        bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not bad, bad
        print("TF-FREE-OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TF-FREE-OK" in r.stdout
    assert (tmp_path / "o" / "detections.json").is_file()


def test_video_with_stand_in_cv2(models, tmp_path, monkeypatch):
    """The video path, driven by a stand-in cv2 module (OpenCV is an optional extra)."""
    import types
    written = []

    class Cap:
        def __init__(self, src):
            self.n = 0

        def isOpened(self):
            return True

        def read(self):
            self.n += 1
            if self.n > 3:
                return False, None
            return True, np.full((40, 60, 3), 30 * self.n, np.uint8)   # BGR frames

        def get(self, prop):
            return 25.0

        def release(self):
            pass

    class Writer:
        def __init__(self, path, fourcc, fps, size):
            written.append(("open", path, fps, size))

        def write(self, frame):
            written.append(("frame", frame.shape))

        def release(self):
            written.append(("release",))

    cv2 = types.ModuleType("cv2")
    cv2.VideoCapture, cv2.VideoWriter = Cap, Writer
    cv2.VideoWriter_fourcc = lambda *a: 0
    cv2.CAP_PROP_FPS = 5
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    v = tmp_path / "clip.mp4"
    v.write_bytes(b"\x00")
    out = tmp_path / "o"
    assert main(["detect", str(models["pp_fp32"]), str(v), "--out", str(out), "--quiet",
                 "--threshold", "0.0"]) == 0
    report = json.loads((out / "detections.json").read_text())
    entry = report["images"][0]
    assert entry["kind"] == "video" and [f["frame"] for f in entry["frames"]] == [0, 1, 2]
    assert entry["annotated"] == "clip_det.mp4"
    assert written[0] == ("open", str(out / "clip_det.mp4"), 25.0, (60, 40))
    assert written.count(("frame", (40, 60, 3))) == 3 and written[-1] == ("release",)
    # camera index + --max-frames
    assert main(["detect", str(models["pp_fp32"]), "0", "--out", str(out), "--quiet", "--max-frames", "2",
                 "--no-images"]) == 0
    entry = json.loads((out / "detections.json").read_text())["images"][0]
    assert entry["kind"] == "camera" and len(entry["frames"]) == 2


def test_draw_detections():
    from fpn_edge.detector import Detection
    from fpn_edge.draw import class_color, draw_detections
    img = np.zeros((60, 80, 3), np.uint8)
    d = Detection(2, "dog", 0.9, (10.0, 20.0, 50.0, 55.0), (20 / 60, 10 / 80, 55 / 60, 50 / 80))
    out = np.asarray(draw_detections(img, [d], line_width=1))
    assert out.shape == img.shape and not img.any()          # input untouched
    assert tuple(out[40, 10]) == class_color(2)               # left edge of the box
    assert tuple(out[55, 30]) == class_color(2)               # bottom edge
    assert not out[35, 30].any()                              # inside stays black
    out2 = np.asarray(draw_detections(Image.fromarray(img), [d.to_dict()], line_width=1))
    np.testing.assert_array_equal(out, out2)
