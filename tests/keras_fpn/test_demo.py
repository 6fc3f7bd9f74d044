"""`keras-fpn demo --fast` end to end: synthetic data -> train -> export -> fpn_edge -> report.

The fast demo is a sanity level run (one epoch of 100 steps on 400 clean-style images
of 160 px without augmentation, MobileNetV3-Small minimalistic from scratch, 2 QAT
steps; 1.8-1.9 min on 2 CPU cores in session 8, 2.7 min in sessions 6 and 7).
Measured (session 8 recipe, twice with the same numbers): float AP50 0.214, int8
100.5 %, QAT int8 101.0 % of float AP on its 60 val images (session 7: 0.172, 100.8 %,
101.1 %; at 0.1 AP one box more or less moves the ratio by points; session 4's
3 x 40 steps gave int8 94.6 %). The
floors are above what a broken pipeline reaches (an untrained model, boxes
decoded with the wrong convention or a quantized model that lost its
calibration score AP50 < 0.01 here) and below the measured values.
"""
import json

from keras_fpn.cli import main

FLOAT_AP50_FLOOR = 0.05
INT8_RATIO_FLOOR = 0.85


def test_demo_fast_report_is_sane(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--fast"]) == 0
    printed = capsys.readouterr().out
    assert "| float (Keras) |" in printed and "report.md" in printed

    report = json.loads((out / "report" / "report.json").read_text())
    rows = {r["variant"]: r for r in report["variants"]}
    assert list(rows) == ["float (Keras)", "fp32", "int8", "qat-int8"]
    assert report["dataset"]["images"] == 60
    assert rows["float (Keras)"]["AP50"] >= FLOAT_AP50_FLOOR
    # the fp32 .tflite is the float model converted: same accuracy
    assert abs(rows["fp32"]["AP"] - rows["float (Keras)"]["AP"]) <= 0.01
    for mode in ("int8", "qat-int8"):
        assert rows[mode]["AP_ratio"] >= INT8_RATIO_FLOOR, (mode, rows[mode]["AP_ratio"])
        assert rows[mode]["size_bytes"] < 0.45 * rows["fp32"]["size_bytes"]
        assert rows[mode]["latency_ms_p50"] > 0
    for name in ("report.md", "ap_per_variant.png", "ap_vs_latency.png", "ap_vs_size.png",
                 "per_class_ap.png", "side_by_side.png"):
        assert (out / "report" / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "run").glob("model_*.tflite")) == [
        "model_fp32.tflite", "model_int8.tflite", "model_qat-int8.tflite"]
