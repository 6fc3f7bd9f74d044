"""Segmentation through the CLI on a tiny synthetic set: train, evaluate (mIoU + boundary F), export."""
import csv
import json

import pytest

from keras_fpn.cli import main

TINY = """
model:
  task: segmentation
  backbone_alpha: 0.35
  backbone_weights: null
  image_size: [64, 64]
  min_level: 3
  max_level: 5
  fpn_width: 16
  seg_width: 16
  seg_c2_skip: true
data:
  train: data/train.json
  val: data/val.json
  cache: false
train:
  epochs: 1
  steps_per_epoch: 2
  batch_size: 2
  optimizer: adamw
  learning_rate: 0.001
  eval_every: 1
  checkpoint_metric: val_mIoU
  dice_weight: 0.5
export:
  representative_images: 4
"""


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    from keras_fpn.data.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("segtrain")
    generate_synthetic_coco(root / "data", num_train=8, num_val=4, image_size=64, seed=2, masks=True)
    (root / "tiny.yaml").write_text(TINY)
    run = root / "run"
    assert main(["train", str(root / "tiny.yaml"), "--run-dir", str(run), "--quiet"]) == 0
    return run


def test_train_logs_and_checkpoints_by_miou(seg_run):
    with open(seg_run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and {"val_mIoU", "val_boundary_F", "loss"} <= set(rows[0])
    best = json.loads((seg_run / "best.json").read_text())
    assert best["metric"] == "val_mIoU"
    ev = json.loads((seg_run / "eval.json").read_text())
    assert ev["num_images"] == 4 and set(ev["per_class"]) == {
        "background", "circle", "square", "triangle", "ring", "cross"}
    assert best["value"] == pytest.approx(ev["mIoU"])
    assert (seg_run / "labels.txt").read_text().splitlines()[0] == "circle"   # no background in labels.txt


def test_evaluate_reports_miou_and_boundary_f(seg_run, capsys):
    out = seg_run / "ev.json"
    assert main(["evaluate", str(seg_run), "--out", str(out), "--boundary-tolerance", "1"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "boundary F@1px" in printed
    ev = json.loads(out.read_text())
    assert 0.0 <= ev["mIoU"] <= 1.0 and ev["boundary_tolerance_px"] == 1
    assert ev["checkpoint"] == "best"


def test_export_fp32_through_the_cli(seg_run):
    from fpn_edge.metadata import read_metadata

    assert main(["export", str(seg_run), "--mode", "fp32"]) == 0
    meta, _ = read_metadata(seg_run / "model_fp32.tflite")
    assert meta["task"] == "segmentation" and meta["labels"][0] == "background"
    assert meta["config"]["model"]["seg_c2_skip"] is True
