"""Segmentation through the CLI on a tiny synthetic set: train, evaluate (mIoU + boundary F), export."""
import csv
import json

import pytest

from keras_fpn.cli import main


@pytest.fixture(scope="module")
def seg_run(tiny_seg_run):
    """The shared tiny segmentation run (conftest.TINY_SEG_CONFIG: 1 epoch, 4 val images)."""
    return tiny_seg_run


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
    assert meta["config"]["model"]["segmentation"]["c2_skip"] is True
