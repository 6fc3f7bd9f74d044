"""Training end to end on a tiny synthetic COCO set: kill-and-resume, evaluate, predict."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_fpn.cli import main

TINY = """
model:
  preset: retinanet_mobilenetv2_fpn
  image_size: [128, 128]
  backbone: {alpha: 0.35, weights: null}
  neck: {max_level: 5, width: 16}
  head: {width: 16, depth: 1}
  anchors: {scales_per_octave: 1, aspect_ratios: [1.0]}
data:
  train: data/train.json
  val: data/val.json
train:
  epochs: 3
  steps_per_epoch: 4
  batch_size: 4
  optimizer: adamw
  learning_rate: 0.001
  eval_every: 1
"""


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from keras_fpn.data.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("train")
    generate_synthetic_coco(root / "data", num_train=24, num_val=6, image_size=128, seed=1, masks=False)
    (root / "tiny.yaml").write_text(TINY)
    return root


def _history(run: Path) -> list:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_killed_run_resumes_where_it_stopped(tiny_setup):
    run = tiny_setup / "run"
    cmd = [sys.executable, "-m", "keras_fpn.cli", "train", str(tiny_setup / "tiny.yaml"),
           "--run-dir", str(run), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        # the backup advances last at an epoch end (after the checkpoints and the history row)
        meta = run / "backup" / "training_metadata.json"
        if meta.is_file() and json.loads(meta.read_text())["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert first.poll() is None, "training finished before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (run / "backup").is_dir()
    assert [r["epoch"] for r in _history(run)][:1] == ["0"]

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    out = second.stdout + second.stderr
    assert "Epoch 2/3" in out and "Epoch 1/3" not in out
    rows = _history(run)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    # the optimizer step counter (which drives the LR schedule) survived the kill: 3 epochs x 4 steps
    assert float(rows[-1]["step"]) == 12
    assert not (run / "backup").exists()
    for name in ("config.yaml", "labels.txt", "best.weights.h5", "best.keras", "last.weights.h5",
                 "last.keras", "eval.json", "best.json"):
        assert (run / name).is_file(), name
    assert (run / "labels.txt").read_text().split() == ["circle", "square", "triangle", "ring", "cross"]


def test_evaluate_and_predict_commands(tiny_setup, tmp_path, capsys):
    run = tiny_setup / "run"
    if not (run / "best.weights.h5").is_file():
        pytest.skip("needs the run trained by the resume test")
    assert main(["evaluate", str(run), "--out", str(tmp_path / "ev.json")]) == 0
    metrics = json.loads((tmp_path / "ev.json").read_text())
    assert metrics["images"] == 6
    assert set(metrics["per_class"]) == {"circle", "square", "triangle", "ring", "cross"}
    assert 0.0 <= metrics["AP"] <= metrics["AP50"] <= 1.0
    images = sorted((tiny_setup / "data" / "val").iterdir())[:2]
    assert main(["predict", str(run), *map(str, images), "--out", str(tmp_path / "pred"),
                 "--threshold", "0.0"]) == 0
    dets = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert sorted(dets) == sorted(p.name for p in images)
    for entry in dets.values():
        assert entry["width"] == 128 and entry["height"] == 128
        for d in entry["detections"]:
            x1, y1, x2, y2 = d["box_xyxy"]
            assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 128
    assert len(list((tmp_path / "pred").glob("*_pred.jpg"))) == 2


def test_train_config_error_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train: {epochs: many}\n")
    assert main(["train", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.epochs: expected an integer, got 'many'" in err


def test_single_level_neck_trains_evaluates_and_exports_raw(tiny_setup, tmp_path):
    """model.neck finest_no_topdown end to end: a 3-step fit with evaluation, fp32 raw export read by fpn_edge.

    (finest_no_topdown: the smallest graph, as the detector stops at C3; the anchors of P3-P5 all
    sit on P3. The other necks share every code path but the level choice.)
    """
    import numpy as np

    from fpn_edge.detector import Detector
    from fpn_edge.metadata import read_metadata
    from fpn_export.convert import export_model
    from keras_fpn.ops.anchors import model_anchors
    from keras_fpn.rundir import open_run

    run = tmp_path / "finest"
    assert main(["train", str(tiny_setup / "tiny.yaml"), "--run-dir", str(run), "--quiet",
                 "--set", "model.neck.kind=finest_no_topdown", "--set", "train.epochs=1",
                 "--set", "train.steps_per_epoch=3", "--set", "train.precise_bn_batches=1"]) == 0
    rows = _history(run)
    assert len(rows) == 1 and float(rows[0]["step"]) == 3
    assert np.isfinite(float(rows[0]["loss"])) and 0.0 <= float(rows[0]["val_AP"]) <= 1.0  # evaluated
    opened = open_run(run)
    cfg = opened.config.model
    # tiny.yaml: 128x128, P3-P5, 1 scale x ratio 1 -> P3 16x16 cells x 3 anchors (sides 32, 64, 128 px).
    assert cfg.neck.kind == "finest_no_topdown" and cfg.head_levels == (3,)
    anchors = model_anchors(cfg)
    assert anchors.shape == (16 * 16 * 3, 4)
    np.testing.assert_allclose((anchors[:3, 2] - anchors[:3, 0]) * 128, [32, 64, 128], rtol=1e-6)

    path = export_model(run, "fp32", raw=True)
    meta, meta_anchors = read_metadata(path)
    assert meta["config"]["model"]["neck"]["kind"] == "finest_no_topdown"
    np.testing.assert_array_equal(meta_anchors, anchors)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype("float32")
    ref = opened.build_model(which="best", batch_size=1)(x, training=False)
    got = Detector.from_file(path).raw_outputs(x)
    for key, width in (("box_deltas", 4), ("class_logits", 5)):
        assert got[key].shape == (1, 768, width)
        np.testing.assert_allclose(got[key], np.asarray(ref[key]), atol=1e-4)
