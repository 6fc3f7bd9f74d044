"""The exported post-process gives the same detections at every interpreter thread count.

The TFLite kernel of ``TFLite_Detection_PostProcess`` (regular NMS) never runs
class T when the interpreter has 2 <= T <= C-1 threads (``fpn_export.postprocess_op``).
Exports hold one op per 2 classes plus an int32 merge: on the plain LiteRT
interpreter, at 1..8 threads, they must equal bit for bit (values and order)
the single op of old exports run on one thread.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
pytest.importorskip("tensorflow")

import linear_models as lin  # noqa: E402
from fpn_edge import Detector  # noqa: E402
from fpn_edge.detector import _map_postprocess_outputs, pin_cpu_kernel_threads, postprocess_thread_safe  # noqa: E402
from fpn_edge.metadata import read_metadata  # noqa: E402
from fpn_edge.postprocess import decode_detections  # noqa: E402

THREADS = range(1, 9)
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("nms_threads")


def _plain_run(path, threads: int, x: np.ndarray, *, pin: bool = False) -> dict:
    """The post-process outputs of the plain LiteRT interpreter (no fpn_edge workaround)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    if pin:
        assert pin_cpu_kernel_threads(it)
    inp = it.get_input_details()[0]
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), 0, 255).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    it.invoke()
    out_map = _map_postprocess_outputs(it, it.get_output_details(), str(path))
    return {k: it.get_tensor(i).copy() for k, i in out_map.items()}


def _class_counts(out) -> list:
    n = int(out["num_detections"][0])
    return np.bincount(out["classes"][0, :n].astype(int), minlength=lin.C).tolist()


def test_old_single_op_loses_class_T_on_T_threads(out_dir):
    """The root cause, on the plain interpreter: T threads (2 <= T < C) lose class T, and only it.

    If this fails because every class is there, the kernel was fixed upstream.
    """
    old = lin.export(out_dir, "fp32", classes_per_op=None)
    x = lin.canvas(0)
    for t in THREADS:
        want = [0 if c == t else 10 for c in range(lin.C)] if 2 <= t < lin.C else [10] * lin.C
        assert _class_counts(_plain_run(old, t, x)) == want, f"{t} threads: kernel behaviour changed"
        assert _class_counts(_plain_run(old, t, x, pin=True)) == [10] * lin.C


@pytest.mark.parametrize("mode, max_detections", [("fp32", 50), ("fp32", 23), ("fp32", 64), ("int8", 50),
                                                  ("int8", 23), ("qat-int8", 50)])
def test_export_identical_at_every_thread_count(out_dir, mode, max_detections):
    """Split ops + merge at 1..8 threads == the old single op on 1 thread, bit for bit."""
    if mode == "qat-int8":
        pytest.importorskip("tensorflow_model_optimization")
    nms = {"max_detections": max_detections}
    new = lin.export(out_dir, mode, nms=nms)
    old = lin.export(out_dir, mode, classes_per_op=None, nms=nms)
    for seed in SEEDS:
        x = lin.canvas(seed)
        ref = _plain_run(old, 1, x)
        n = int(ref["num_detections"][0])
        # 10 per class over 5 classes: 50 detections, cut at 23; 64 rows: the ops' 50 rows padded
        assert n == min(max_detections, 50)
        if max_detections >= 50:
            assert _class_counts(ref) == [10] * lin.C
        for t in THREADS:
            got = _plain_run(new, t, x)
            for key in ("boxes", "classes", "scores", "num_detections"):
                np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{mode} {t} threads {key}")
        assert not got["boxes"][0, n:].any() and not got["classes"][0, n:].any()


def test_fpn_edge_right_for_old_and_new_files(out_dir):
    """fpn_edge at 1..5 threads == raw model + numpy NMS, for the new export and an old single-op file."""
    new, old = lin.export(out_dir, "fp32"), lin.export(out_dir, "fp32", classes_per_op=None)
    raw = Detector.from_file(lin.export(out_dir, "fp32", raw=True), threads=1)
    assert read_metadata(new)[0]["nms"]["thread_safe"] is True
    for threads in (1, 2, 3, 4, 5):
        dets = {name: Detector.from_file(p, threads=threads) for name, p in (("new", new), ("old", old))}
        assert dets["new"].thread_safe and not dets["old"].thread_safe
        for seed in SEEDS:
            x = lin.canvas(seed)
            r = raw.raw_outputs(x)
            ref = decode_detections(r["box_deltas"][0], r["class_logits"][0], lin.anchors(),
                                    scale_factors=lin.SCALE_FACTORS, **lin.NMS)
            n = ref["num_detections"]
            for name, det in dets.items():
                o = det.raw_outputs(x)
                assert int(o["num_detections"][0]) == n == 50, f"{name} {threads} threads"
                np.testing.assert_array_equal(o["classes"][0, :n].astype(int), ref["classes"][:n])
                np.testing.assert_allclose(o["boxes"][0, :n], ref["boxes"][:n], atol=1e-6, rtol=0)
                np.testing.assert_allclose(o["scores"][0, :n], ref["scores"][:n], atol=1e-6, rtol=0)


def test_thread_safety_read_from_the_ops(out_dir):
    from ai_edge_litert.interpreter import Interpreter

    def safe(path):
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        return postprocess_thread_safe(it)

    assert safe(lin.export(out_dir, "fp32"))
    assert safe(lin.export(out_dir, "fp32", classes_per_op=1))
    assert not safe(lin.export(out_dir, "fp32", classes_per_op=None))
    assert not safe(lin.export(out_dir, "fp32", classes_per_op=3))


def test_metadata_says_which_exports_are_thread_safe():
    import dataclasses

    import export_helpers as H
    from fpn_export.detection import detector_metadata

    cfg = H.tiny_config()
    five = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=5))

    def safe(config, output, mode):
        labels = [f"c{i}" for i in range(config.model.num_classes)]
        return detector_metadata(config, labels, output=output, mode=mode)["nms"]["thread_safe"]

    assert safe(five, "postprocess", "int8") and safe(five, "postprocess", "fp32") and safe(five, "raw", "edgetpu")
    assert not safe(five, "postprocess", "edgetpu")          # Coral: one op over 5 classes
    assert safe(cfg, "postprocess", "edgetpu")               # 1 class: no thread count reaches it
    single = dataclasses.replace(five, export=dataclasses.replace(five.export, nms_ops="single"))
    assert not safe(single, "postprocess", "int8") and not safe(single, "postprocess", "fp32")  # export.nms_ops


def test_export_nms_ops_setting_is_checked():
    """`--set export.nms_ops=single` (many classes, a runtime that controls its threads) is read and checked."""
    from keras_fpn.config import ConfigError, config_from_dict, config_to_dict
    import export_helpers as H

    cfg = H.tiny_config()
    assert cfg.export.nms_ops == "pairs"
    assert config_from_dict(config_to_dict(cfg), ["export.nms_ops=single"]).export.nms_ops == "single"
    with pytest.raises(ConfigError, match="export.nms_ops"):
        config_from_dict(config_to_dict(cfg), ["export.nms_ops=triples"])
