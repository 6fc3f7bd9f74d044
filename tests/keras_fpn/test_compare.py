"""`keras-fpn compare`: the detection-change counts on hand-made detections, and the report of a segmentation run."""
import json
import os

import pytest

from keras_fpn.compare.detection import detection_changes
from keras_fpn.compare.report import headline_table


def _det(image_id, x, y, w, h, cat, score):
    return {"image_id": image_id, "bbox": [x, y, w, h], "category_id": cat, "score": score}


def test_detection_changes_by_hand():
    ref = [_det(1, 0, 0, 100, 100, 1, 0.9),      # kept exactly
           _det(1, 200, 200, 50, 50, 1, 0.8),    # moved: IoU 45*50 / (2*2500 - 2250) = 0.818 < 0.9
           _det(1, 400, 0, 40, 40, 2, 0.7),      # changed class
           _det(2, 10, 10, 20, 20, 3, 0.6),      # lost: the variant's box is elsewhere
           _det(2, 10, 10, 20, 20, 3, 0.1)]      # not confident: ignored
    var = [_det(1, 0, 0, 100, 100, 1, 0.85),
           _det(1, 205, 200, 50, 50, 1, 0.8),
           _det(1, 400, 0, 40, 40, 1, 0.5),
           _det(2, 300, 300, 20, 20, 3, 0.6),    # new (no float counterpart)
           _det(3, 0, 0, 10, 10, 1, 0.2)]        # not confident: ignored
    totals = ("reference", "lost", "changed_class", "moved", "new")
    ch = detection_changes(ref, var, {1: "cat", 2: "dog", 3: "cow"})
    assert {k: ch[k] for k in totals} == {"reference": 4, "lost": 1, "changed_class": 1, "moved": 1, "new": 1}
    # kept with the same class: the exact box (IoU 1) and the moved one (2250 / 2750)
    assert ch["matched_iou"] == pytest.approx((1.0 + 2250 / 2750) / 2)
    # per class by the float box's class (new: the variant's class); 'cow' lost its box, gained a new one
    assert ch["per_class"] == {"cat": {"reference": 2, "lost": 0, "changed_class": 0, "moved": 1, "new": 0},
                               "cow": {"reference": 1, "lost": 1, "changed_class": 0, "moved": 0, "new": 1},
                               "dog": {"reference": 1, "lost": 0, "changed_class": 1, "moved": 0, "new": 0}}
    # per COCO size by area: 100x100 large, 50x50 medium (2500 >= 32^2), 40x40 medium, 20x20 small
    assert ch["per_size"] == {"small": {"reference": 1, "lost": 1, "changed_class": 0, "moved": 0, "new": 1},
                              "medium": {"reference": 2, "lost": 0, "changed_class": 1, "moved": 1, "new": 0},
                              "large": {"reference": 1, "lost": 0, "changed_class": 0, "moved": 0, "new": 0}}
    same = detection_changes(ref, ref)
    assert {k: same[k] for k in totals} == {"reference": 4, "lost": 0, "changed_class": 0, "moved": 0, "new": 0}
    assert same["matched_iou"] == 1.0 and set(same["per_class"]) == {"1", "2", "3"}   # no names: the ids
    gone = detection_changes(ref, [])
    assert gone["lost"] == 4 and gone["matched_iou"] is None
    # two classes on one box: the same-class detection is found even when listed second
    ref2 = [_det(5, 0, 0, 10, 10, 1, 0.9), _det(5, 0, 0, 10, 10, 2, 0.8)]
    assert detection_changes(ref2, list(reversed(ref2)))["changed_class"] == 0


def test_headline_table_rows():
    row = {"variant": "int8", "AP": 0.5, "AP50": 0.9, "AP75": 0.45, "AP_small": 0.2, "AP_medium": 0.5,
           "AP_large": 0.7, "AP_ratio": 0.98, "AP50_ratio": 0.995, "AP75_ratio": 0.9, "matched_iou": 0.9613,
           "latency_ms_p50": 3.21, "latency_ms_p90": 4.0, "threads": 2, "size_bytes": 2_500_000,
           "changes": {"reference": 10, "lost": 1, "changed_class": 0, "moved": 2, "new": 0}}
    table = headline_table({"task": "detection", "variants": [row]})
    assert table.splitlines()[0] == ("| variant | AP | AP50 | AP75 | AP_small | AP_medium | AP_large | AP vs float | "
                                     "AP50 vs float | AP75 vs float | matched IoU | latency p50 / p90 (ms) | "
                                     "size (MB) | lost / class / moved / new |")
    assert ("| int8 | 0.500 | 0.900 | 0.450 | 0.200 | 0.500 | 0.700 | 98.0 % | 99.5 % | 90.0 % | 0.961 | 3.2 / 4.0 "
            "| 2.50 | 1 / 0 / 2 / 0 of 10 |") in table


def test_changes_sections_per_class_and_size():
    from keras_fpn.compare.detection import changes_sections

    ref = [_det(1, 0, 0, 100, 100, 1, 0.9), _det(2, 10, 10, 20, 20, 2, 0.6)]
    ch = detection_changes(ref, ref[:1], {1: "cat", 2: "dog"})
    lines = changes_sections({"variants": [{"variant": "float (Keras)", "changes": None},
                                           {"variant": "int8", "changes": ch}]})
    assert "| cat | 0 / 0 / 0 / 0 of 1 |" in lines and "| dog | 1 / 0 / 0 / 0 of 1 |" in lines
    assert "| small | 1 / 0 / 0 / 0 of 1 |" in lines and "| medium | 0 / 0 / 0 / 0 of 0 |" in lines
    assert lines.count("|---|---|") == 2


def test_interleaved_latency_times_every_model_round_robin(tiny_seg_exports):
    from fpn_edge.bench import interleaved_latency

    paths = [tiny_seg_exports[m] for m in ("fp32", "int8")]
    out = interleaved_latency(paths, threads=1, runs=4, warmup=1)
    assert list(out) == [str(p) for p in paths]
    for latency in out.values():
        assert set(latency) == {"invoke", "end_to_end"}
        assert 0 < latency["invoke"]["min"] <= latency["invoke"]["p50"] <= latency["end_to_end"]["p50"]


# --------------------------------------------------------------------------- segmentation


@pytest.fixture(scope="module")
def seg_report(tiny_seg_run, tiny_seg_exports, tmp_path_factory):
    """`keras-fpn compare` of the tiny segmentation run: float Keras vs fp32 / int8 / qat-int8 .tflite
    (the exports of conftest.tiny_seg_exports, which compare reuses: newer than the checkpoint)."""
    from keras_fpn.cli import main

    out = tmp_path_factory.mktemp("seg_compare")
    assert main(["compare", str(tiny_seg_run), "--modes", "fp32,int8,qat-int8", "--threads", "1",
                 "--runs", "3", "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text()), out


def test_seg_report_keys_and_files(seg_report, tiny_seg_exports):
    from keras_fpn.compare.segmentation import REPORT_KEYS as SEG_REPORT_KEYS

    report, out = seg_report
    assert report["task"] == "segmentation" and report["metric"] == "mIoU"
    assert report["rules"] == {"boundary_tolerance_px": 2} and report["dataset"]["images"] == 4
    assert [r["variant"] for r in report["variants"]] == ["float (Keras)", "fp32", "int8", "qat-int8"]
    for r in report["variants"]:
        assert tuple(r) == SEG_REPORT_KEYS
        assert set(r["per_class"]) == {"background", "circle", "square", "triangle", "ring", "cross"}
        assert all(set(v) == {"IoU", "boundary_F"} for v in r["per_class"].values())
        assert r["size_bytes"] == os.path.getsize(r["file"])
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"]
    assert report["variants"][0]["file"].endswith("best.weights.h5") and report["variants"][0]["changes"] is None
    assert [r["file"] for r in report["variants"][1:]] == [str(tiny_seg_exports[m]) for m in ("fp32", "int8", "qat-int8")]
    sizes = {r["variant"]: r["size_bytes"] for r in report["variants"]}
    assert sizes["int8"] < 0.5 * sizes["fp32"] and sizes["qat-int8"] < 0.5 * sizes["fp32"]
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "miou_per_variant.png", "miou_vs_latency.png",
                                                "miou_vs_size.png", "per_class_iou.png", "side_by_side.png"}
    md = (out / "report.md").read_text()
    assert "| variant | mIoU | boundary F | pixel acc. | mIoU vs float | BF vs float |" in md
    assert "## Per-class IoU" in md and "## Per-class boundary F" in md and "(BF, 2 px tolerance)" in md
    timing = report["latency_method"]
    assert timing["order"] == "round-robin after every export" and (timing["runs"], timing["warmup"]) == (3, 5)
    assert len(timing["load_average_1min"]) == 2 and "the variants round-robin (3 rounds after 5 untimed)" in md


def test_seg_report_numbers(seg_report, tiny_seg_run):
    """Float = the run's own evaluation; fp32 = float; ratios and changed pixels recomputed by hand."""
    from keras_fpn.evaluation.segmentation import evaluate_tflite
    from keras_fpn.rundir import open_run
    from keras_fpn.data.splits import load_datasets

    report, _ = seg_report
    rows = {r["variant"]: r for r in report["variants"]}
    flt = rows["float (Keras)"]
    ev = json.loads((tiny_seg_run / "eval.json").read_text())   # evaluated at the end of training
    assert flt["mIoU"] == pytest.approx(ev["mIoU"], abs=1e-6)
    assert flt["boundary_F"] == pytest.approx(ev["boundary_F"], abs=1e-6)
    assert 0.05 < flt["mIoU"] < 1.0 and flt["mIoU_ratio"] == 1.0 and flt["boundary_F_ratio"] == 1.0
    fp32 = rows["fp32"]
    assert abs(fp32["mIoU"] - flt["mIoU"]) < 0.01 and abs(fp32["boundary_F"] - flt["boundary_F"]) < 0.01
    assert fp32["changes"]["changed_fraction"] < 0.01
    val = load_datasets(open_run(tiny_seg_run).config)[1]
    pixels = sum(r.height * r.width for r in val.records)
    for name in ("fp32", "int8", "qat-int8"):
        r = rows[name]
        assert r["mIoU_ratio"] == pytest.approx(r["mIoU"] / flt["mIoU"], rel=1e-9)
        assert r["boundary_F_ratio"] == pytest.approx(r["boundary_F"] / flt["boundary_F"], rel=1e-9)
        ch = r["changes"]
        assert ch["pixels"] == pixels and ch["changed_fraction"] == pytest.approx(ch["changed"] / pixels)
        assert r["threads"] == 1
    # the report's int8 numbers are those of fpn_export's own evaluation of the same file
    again = evaluate_tflite(rows["int8"]["file"], val, threads=1)
    assert rows["int8"]["mIoU"] == pytest.approx(again["mIoU"], abs=1e-9)
    assert rows["int8"]["per_class"] == again["per_class"]
    # quantization keeps most of the float model (measured: int8 112 %, qat-int8 109 % of float mIoU 0.133;
    # 8 % of the pixels changed class; 20.2 % in one suite run: the tiny run's weights differ from process
    # to process, and at mIoU 0.13 many pixels sit near a class boundary. A model that lost its
    # calibration changes most pixels.)
    assert abs(rows["int8"]["mIoU"] - flt["mIoU"]) < 0.05 and rows["int8"]["changes"]["changed_fraction"] < 0.3


# --------------------------------------------------------------------------- background export


def test_pick_background_takes_the_slowest_of_two_or_more():
    from keras_fpn.compare.background import pick_background

    assert pick_background([]) is None and pick_background(["qat-int8"]) is None
    assert pick_background(["fp32", "int8", "qat-int8"]) == "qat-int8"
    assert pick_background(["qat-int8", "fp32"]) == "qat-int8"
    assert pick_background(["fp32", "int8"]) == "int8"
    assert pick_background(["fp16", "fp32"]) == "fp16"


def test_failed_background_export_is_one_line_naming_mode_and_log(tiny_seg_run, tmp_path, capsys):
    """A run without data.train: fp32 exports in process, qat-int8 (needs training data) fails in the
    second process; compare ends with exit code 2 and one line with the child's reason."""
    import shutil

    import yaml

    from keras_fpn.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_seg_run, run, ignore=shutil.ignore_patterns("model_*", "compare", "logs", "backup"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    val = cfg["data"]["val"]
    cfg["data"]["train"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cmp"
    assert main(["compare", str(run), "--modes", "qat-int8,fp32", "--data", val, "--threads", "1",
                 "--runs", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]   # after the evaluation's progress bar
    assert err.startswith(f"keras-fpn compare: error: qat-int8 export (background, log {out / 'export_qat-int8.log'})"
                          " failed: keras-fpn export: error: "), err
    assert err.endswith("the config has no data.train")
    assert (run / "model_fp32.tflite").is_file() and not (run / "model_qat-int8.tflite").exists()
    assert not (out / "report.json").exists()


def test_scatter_labels_of_close_points_stack():
    from keras_fpn.compare.plots import label_offsets

    # the session-7 demo: fp32 3.8 ms / 0.744, int8 5.2 / 0.741, QAT 3.9 / 0.746 (x span 1.4, y span ~0.1)
    assert label_offsets([(3.8, 0.744), (5.2, 0.741), (3.9, 0.746)], 1.4, 0.1) == [5, 5, 16]
    # session 8: fp32 5.1 ms / 0.7585, int8 6.0 / 0.7585, QAT 5.6 / 0.7564, float 12.3 / 0.759
    assert label_offsets([(12.3, 0.759), (5.1, 0.7585), (6.0, 0.7585), (5.6, 0.7564)], 7.2, 0.09) == [5, 5, 16, 27]
    # three on top of each other: three rows; far apart: one row
    assert label_offsets([(1, 1), (1, 1), (1, 1)], 1, 1) == [5, 16, 27]
    assert label_offsets([(0, 0), (1, 1)], 1, 1) == [5, 5]
