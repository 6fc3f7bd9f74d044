"""fpn_edge.metadata: the ZIP appended to the .tflite flatbuffer."""
import json
import zipfile

import numpy as np
import pytest

import edge_tiny_models as etm
from fpn_edge.errors import EdgeError
from fpn_edge.metadata import read_metadata, strip_metadata, validate_meta, write_metadata


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return etm.get_models(tmp_path_factory)


def _run(path, x):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in sorted(it.get_output_details(), key=lambda d: d["name"])]


def test_round_trip(models, tmp_path):
    meta, anchors = read_metadata(models["raw_fp32"])
    assert meta["schema_version"] == 1
    assert meta["task"] == "detection" and meta["output"] == "raw"
    assert meta["labels"] == etm.LABELS
    assert meta["input"] == {"height": etm.H, "width": etm.W, "normalization": etm.NORMALIZATION}
    assert meta["box_coder"]["scale_factors"] == list(etm.SCALE_FACTORS)
    assert meta["nms"] == etm.NMS
    assert meta["config"]["name"] == "tiny_test_detector"
    assert meta["num_anchors"] == etm.A
    np.testing.assert_array_equal(anchors, etm.tiny_anchors())
    with zipfile.ZipFile(models["raw_fp32"]) as zf:
        assert set(zf.namelist()) == {"fpn_meta.json", "anchors.npy", "labels.txt"}
        assert zf.read("labels.txt").decode().splitlines() == etm.LABELS
    meta_pp, anchors_pp = read_metadata(models["pp_fp32"])
    assert meta_pp["output"] == "postprocess" and anchors_pp is None


def test_interpreter_ignores_appended_zip(models):
    """The file with the archive runs and gives the same outputs as the bare flatbuffer."""
    bare = models["raw_fp32_nometa"]
    with_meta = models["raw_fp32"]
    assert with_meta.stat().st_size > bare.stat().st_size
    assert strip_metadata(with_meta.read_bytes()) == bare.read_bytes()
    x = np.random.default_rng(0).uniform(-1, 1, (1, etm.H, etm.W, 3)).astype(np.float32)
    for a, b in zip(_run(bare, x), _run(with_meta, x)):
        np.testing.assert_array_equal(a, b)


def test_rewrite_replaces_archive_in_place(models, tmp_path):
    """Writing metadata onto a file that has some replaces it (no stacking); out_path may be the input."""
    p = tmp_path / "m.tflite"
    p.write_bytes(models["pp_fp32"].read_bytes())
    meta, _ = read_metadata(p)
    meta["labels"] = ["a", "b", "c"]
    write_metadata(p, meta, None, p)
    meta2, _ = read_metadata(p)
    assert meta2["labels"] == ["a", "b", "c"]
    assert strip_metadata(p.read_bytes()) == strip_metadata(models["pp_fp32"].read_bytes())
    assert len(p.read_bytes()) < len(models["pp_fp32"].read_bytes()) + 200
    assert not list(tmp_path.glob(".tmp-*"))  # temp file renamed away


def test_no_metadata_error_names_file(models):
    with pytest.raises(EdgeError, match=r"raw_fp32_nometa\.tflite: the model has no keras-fpn metadata"):
        read_metadata(models["raw_fp32_nometa"])


def test_missing_file(tmp_path):
    with pytest.raises(EdgeError, match="model file not found"):
        read_metadata(tmp_path / "nope.tflite")


def test_write_rejects_bad_input(models, tmp_path):
    meta = etm.meta_for("raw")
    with pytest.raises(EdgeError, match="not a TFLite model"):
        write_metadata(b"hello world, not a model", meta, etm.tiny_anchors(), tmp_path / "x.tflite")
    data = models["raw_fp32_nometa"].read_bytes()
    with pytest.raises(EdgeError, match="needs its anchors"):
        write_metadata(data, meta, None, tmp_path / "x.tflite")
    with pytest.raises(EdgeError, match=r"anchors must have shape \[A, 4\]"):
        write_metadata(data, meta, np.zeros((5, 3)), tmp_path / "x.tflite")
    bad = dict(meta, output="boxes")
    with pytest.raises(EdgeError, match="'output' must be one of"):
        write_metadata(data, bad, etm.tiny_anchors(), tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.pop("labels"), "lacks the key 'labels'"),
    (lambda m: m.update(task="classification"), "unsupported task"),
    (lambda m: m.update(task="segmentation"), "lacks the key 'segmentation'"),
    (lambda m: m["input"]["normalization"].update(channel_order="RGBA"), "channel_order"),
    (lambda m: m["input"]["normalization"].update(std=[1, 0, 1]), "non-zero stds"),
    (lambda m: m["box_coder"].update(scale_factors=[1, 2]), "scale_factors"),
    (lambda m: m["nms"].pop("iou_threshold"), "lacks 'iou_threshold'"),
    (lambda m: m.update(labels=["a\nb"]), "line break"),
])
def test_validate_meta(mutate, message):
    meta = json.loads(json.dumps(etm.meta_for("raw")))
    mutate(meta)
    with pytest.raises(EdgeError, match=message):
        validate_meta(meta, where="m.tflite")


def test_newer_schema_rejected(models, tmp_path):
    meta, anchors = read_metadata(models["raw_fp32"])
    meta["schema_version"] = 99
    p = write_metadata(models["raw_fp32_nometa"], meta, anchors, tmp_path / "new.tflite")
    with pytest.raises(EdgeError, match="schema_version 99 is newer"):
        read_metadata(p)


def test_every_task_has_a_schema_and_a_runner():
    """A task is added to fpn_edge by its runner module plus one entry in each table."""
    from fpn_edge.metadata import TASK_SCHEMAS
    from fpn_edge.runner import RUNNERS, ModelRunner, runner_class

    assert set(TASK_SCHEMAS) == set(RUNNERS)
    for task in RUNNERS:
        cls = runner_class(task)
        assert issubclass(cls, ModelRunner) and cls.task == task and cls.command
    with pytest.raises(EdgeError, match="unsupported task 'classification'"):
        runner_class("classification")
