"""fpn_export.budget: the calibration-validation split, the plan search, and the int8-budget export of a tiny
trained detector (metadata, log, CLI, compare's variant)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

#: A tiny detector that learns something in 60 steps (96 px synthetic shapes, 5 classes, MobileNetV3-Small
#: minimalistic from scratch, P3-P5 width 16); 8 calibration images.
TINY_DET_CONFIG = """
model:
  image_size: [96, 96]
  num_classes: 5
  backbone: {name: mobilenetv3small_minimalistic, alpha: 1.0, weights: null}
  neck: {min_level: 3, max_level: 5, width: 16}
  head: {width: 16, depth: 1}
  anchors: {scale: 3.0, scales_per_octave: 1, aspect_ratios: [1.0]}
  bn_momentum: 0.9
data:
  train: data/train.json
  val: data/val.json
  cache: false
  hflip: false
  scale_jitter: [1.0, 1.0]
  photometric: false
train:
  epochs: 1
  steps_per_epoch: 60
  batch_size: 16
  optimizer: adamw
  learning_rate: 0.008
  warmup_epochs: 0.1
  eval_every: 1
export:
  representative_images: 8
"""


def _raccoon_config(raccoon_dir, **data):
    from keras_fpn.config import config_from_dict

    base = {"train": str(raccoon_dir), "val": str(raccoon_dir),
            "val_include": str(raccoon_dir / "splits" / "test_labels.csv")}
    return config_from_dict({"model": {"num_classes": 1}, "data": {**base, **data}})


def test_split_is_disjoint_from_val_and_calibration_and_deterministic(raccoon_dir):
    from fpn_export.budget import calibration_validation_split
    from keras_fpn.data.splits import load_split

    # data.train = every raccoon image (200), data.val = the 40 held-out ones: the split must avoid them
    cfg = _raccoon_config(raccoon_dir)
    pool, split = calibration_validation_split(cfg, 48)
    names = lambda ds: {Path(r.image_path).name for r in ds.records}  # noqa: E731
    val = names(load_split(str(raccoon_dir), str(raccoon_dir / "splits" / "test_labels.csv")))
    assert len(val) == 40 and len(split) == 48 and len(pool) == 200 - 40 - 48
    assert not names(split) & val and not names(pool) & val and not names(split) & names(pool)
    again = calibration_validation_split(cfg, 48)[1]
    assert [r.image_path for r in again.records] == [r.image_path for r in split.records]
    other = calibration_validation_split(cfg, 48, seed=1)[1]
    assert names(other) != names(split)
    # a small training set: at most half of it is held out; under 8 images is refused
    small = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, train_include=str(raccoon_dir / "splits" / "test_labels.csv"), val=None))
    pool, split = calibration_validation_split(small, 48)
    assert (len(pool), len(split)) == (20, 20)


def test_split_refuses_a_training_set_inside_val(raccoon_dir):
    from fpn_export.budget import calibration_validation_split
    from fpn_export.errors import ExportError

    cfg = _raccoon_config(raccoon_dir, train_include=str(raccoon_dir / "splits" / "test_labels.csv"))
    with pytest.raises(ExportError, match=r"0 training images outside the validation set; .* at least 8"):
        calibration_validation_split(cfg)


def test_layer_of_a_fused_tensor_name():
    from fpn_export.budget import layer_of

    assert layer_of("m/re_lu/Relu;m/Conv/BatchNorm/FusedBatchNormV3;m/Conv/Conv2D1") == "Conv"
    assert layer_of("m/head_box_deltas/BiasAdd_3;m/head_box_deltas/Conv2D_3") == "head_box_deltas"
    assert layer_of("m/fpn_merge_P4/add") == "fpn_merge_P4" and layer_of("image") == "image"


def test_max_ap_drop_needs_an_int8_mode(tmp_path, capsys):
    from fpn_export.cli import main

    assert main(["export", str(tmp_path / "no_run"), "--mode", "fp16", "--max-ap-drop", "1"]) == 2
    assert capsys.readouterr().err.strip() == ("keras-fpn export: error: --max-ap-drop / --max-float need "
                                               "--mode int8 (or int8-budget), not 'fp16'")


def test_quantization_entry_is_validated_and_summarized(tmp_path):
    import edge_tiny_models as T
    from fpn_edge.errors import EdgeError
    from fpn_edge.metadata import quantization_summary, validate_meta

    meta = T.meta_for("postprocess")
    assert quantization_summary(validate_meta(meta)) is None
    meta["quantization"] = {"full_integer": False, "kept_float": ["m/conv1/Conv2D"], "kept_float_layers": ["conv1"],
                            "budget": {"max_ap_drop": 1.0, "met": True, "chosen": {"AP": 0.5},
                                       "reference": {"AP": 0.502}, "split": {"images": 48}}}
    assert validate_meta(meta) is meta
    assert quantization_summary(meta) == ("NOT full integer: 1 layers kept float (not for the Edge TPU): conv1; "
                                          "budget 1.0 % of fp32 AP, met: AP 0.5000 vs 0.5020 on 48 training "
                                          "images held out")
    for bad in ({"kept_float": []}, {"full_integer": "no"}, {"full_integer": True, "kept_float": [3]}):
        with pytest.raises(EdgeError, match=r"q.tflite: metadata 'quantization"):
            validate_meta(dict(meta, quantization=bad), where="q.tflite")


def test_search_ladder_then_bisection():
    from fpn_export.budget import search_plans

    drops = {0: 5.0, 1: 3.0, 2: 2.5, 3: 2.0, 4: 1.2, 5: 1.1, 6: 0.9, 7: 0.8, 8: 0.5}
    measure = lambda n: {"meets": drops.get(n, 0.1) <= 1.0}  # noqa: E731
    chosen, tried = search_plans(measure, 32)
    assert chosen == 6 and list(tried) == [0, 1, 2, 4, 8, 6, 5]
    # the last rung is max_float itself; nothing holds -> None after trying it
    chosen, tried = search_plans(measure, 3)
    assert chosen is None and list(tried) == [0, 1, 2, 3]
    assert search_plans(lambda n: {"meets": True}, 32) == (0, {0: {"meets": True}})


# --------------------------------------------------------------------------- a tiny trained detector


@pytest.fixture(scope="module")
def tiny_det_run(tmp_path_factory) -> Path:
    """A detection run trained through the CLI on 80 + 16 synthetic 96 px images (once per module)."""
    from keras_fpn.cli import main
    from keras_fpn.data.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("tiny_det")
    generate_synthetic_coco(root / "data", num_train=80, num_val=16, image_size=96, seed=3, masks=False,
                            style="clean")
    (root / "tiny.yaml").write_text(TINY_DET_CONFIG)
    run = root / "run"
    assert main(["train", str(root / "tiny.yaml"), "--run-dir", str(run), "--quiet"]) == 0
    return run


@pytest.mark.slow
def test_budget_met_by_full_int8_keeps_no_layer_float(tiny_det_run, capsys):
    from fpn_edge.metadata import read_metadata
    from fpn_export.cli import main
    from fpn_export.flatbuffer import read_graph

    # --mode int8 --max-ap-drop is the accuracy-budget export (RUN/model_int8-budget.tflite)
    assert main(["export", str(tiny_det_run), "--mode", "int8", "--max-ap-drop", "100"]) == 0
    path = tiny_det_run / "model_int8-budget.tflite"
    assert "accuracy budget: budget met: 0 of" in capsys.readouterr().out
    meta = read_metadata(path)[0]
    q = meta["quantization"]
    assert meta["export"]["mode"] == "int8-budget" and meta["export"]["keep_float"] == 0
    assert "debug" not in meta["export"]   # the plans' debug folders are gone with the work folder
    assert q["full_integer"] is True and q["kept_float"] == [] and q["budget"]["met"] is True
    plans = q["budget"]["plans"]
    assert [p["kept_float"] for p in plans] == [0] and plans[0]["full_integer"]
    ref = q["budget"]["reference"]
    assert ref["AP"] > 0.02 and 0 < plans[0]["AP"] and plans[0]["AP_drop_pct"] == pytest.approx(
        100 * (1 - plans[0]["AP"] / ref["AP"]))
    assert q["budget"]["split"]["images"] == 40 and q["budget"]["split"]["calibration_images"] == 8
    assert [t.dtype for t in read_graph(path.read_bytes()).inputs] == ["UINT8"]
    # the standard TFLite metadata (MediaPipe / Task Library) names the mode too: one entry, the new one
    from fpn_export.flatbuffer import read_model

    model = read_model(path.read_bytes())
    (entry,) = [m for m in model.metadata if m.name in (b"TFLITE_METADATA", "TFLITE_METADATA")]
    assert b"detection export (int8-budget)" in bytes(model.buffers[entry.buffer].data)
    log = json.loads((tiny_det_run / "model_int8-budget_budget.json").read_text())
    assert log["kept_float"] == [] and log["size_bytes"] == path.stat().st_size and len(log["split"]["files"]) == 40
    assert log["chosen"]["latency_ms_p50"] > 0 and log["chosen"]["size_bytes"] > 0


@pytest.mark.slow
def test_impossible_budget_searches_to_the_end_and_recommends_qat(tiny_det_run, tmp_path):
    from fpn_edge.metadata import quantization_summary, read_metadata
    from fpn_export.convert import export_model
    from fpn_export.flatbuffer import read_graph

    out = tmp_path / "impossible.tflite"
    # -50 %: the model would have to gain half of the fp32 AP; at most 2 layers float
    path = export_model(tiny_det_run, "int8-budget", out=out, max_ap_drop=-50.0, max_float=2)
    meta = read_metadata(path)[0]
    q = meta["quantization"]
    b = q["budget"]
    assert b["met"] is False and b["recommend"] == "qat-int8" and "--mode qat-int8" in b["verdict"]
    assert [p["kept_float"] for p in b["plans"]] == [0, 1, 2, None]   # the ladder to its end, then int16x8
    int16 = b["plans"][-1]
    assert int16["plan"] == "int16x8 (whole model)" and not int16["full_integer"]
    # measured, or (TF 2.21 with the post-process pair merge) its export error in one line
    assert ("AP" in int16) != ("error" in int16) and "whole-model int16x8: " in b["verdict"]
    assert all(not p["meets"] for p in b["plans"])
    # the written plan is the best int8 plan by AP
    best = max(b["plans"][:3], key=lambda p: p["AP"])
    assert b["chosen"]["kept_float"] == best["kept_float"] == len(q["kept_float"])
    log = json.loads(out.with_name("impossible_budget.json").read_text())
    assert log["ranked_layers"][:len(q["kept_float"])] == q["kept_float"] and len(log["ranked_layers"]) == 2
    if q["kept_float"]:
        assert q["full_integer"] is False and "NOT full integer" in quantization_summary(meta)
        graph = read_graph(path.read_bytes())
        floats = {t.name for op in graph.ops if op.name not in ("QUANTIZE", "DEQUANTIZE")
                  for t in op.outputs if t.dtype == "FLOAT32"}
        assert set(q["kept_float"]) <= floats


@pytest.mark.slow
def test_written_plan_matches_its_graph_and_fpn_edge_info(tiny_det_run, tmp_path, capsys):
    """At most one float layer, nothing meets: the better of the two plans is written; its graph, its
    metadata and `fpn-edge info` agree on whether it is full integer."""
    from fpn_edge.cli import main as edge_main
    from fpn_edge.metadata import quantization_summary, read_metadata
    from fpn_export.convert import export_model
    from fpn_export.flatbuffer import read_graph

    path = export_model(tiny_det_run, "int8-budget", out=tmp_path / "one.tflite", max_ap_drop=-50.0, max_float=1)
    meta = read_metadata(path)[0]
    q = meta["quantization"]
    plans = q["budget"]["plans"]
    assert [p["kept_float"] for p in plans[:2]] == [0, 1]
    pick = 0 if plans[0]["AP"] >= plans[1]["AP"] else 1
    assert len(q["kept_float"]) == len(q["kept_float_layers"]) == pick and q["full_integer"] == (pick == 0)
    assert [t.dtype for t in read_graph(path.read_bytes()).inputs] == ["UINT8" if pick == 0 else "FLOAT32"]
    assert edge_main(["info", str(path)]) == 0
    line = f"quant    {quantization_summary(meta)}"
    assert line in capsys.readouterr().out.splitlines()
    assert ("NOT full integer: 1 layers kept float (not for the Edge TPU)" in line) == (pick == 1)
    assert "budget -50.0 % of fp32 AP, NOT met" in line


@pytest.mark.slow
def test_compare_measures_the_int8_budget_variant(tiny_det_run, tmp_path):
    from keras_fpn.compare.report import compare_run

    report = compare_run(tiny_det_run, modes=("fp32", "int8-budget"), out=tmp_path / "cmp", threads=1,
                         bench_runs=5, background=False, max_ap_drop=100.0, log=lambda *a: None)
    rows = {r["variant"]: r for r in report["variants"]}
    assert set(rows) == {"float (Keras)", "fp32", "int8-budget"}
    row = rows["int8-budget"]
    assert row["file"].endswith("model_int8-budget.tflite") and row["size_bytes"] > 0 and row["AP"] > 0
    assert row["AP_ratio"] == pytest.approx(row["AP"] / rows["float (Keras)"]["AP"])
    assert "| int8-budget |" in (tmp_path / "cmp" / "report.md").read_text()


def test_benchmark_tables_render_the_recorded_numbers():
    """benchmarks/budget.py's markdown from the recorded results (benchmarks/results/budget*.json)."""
    from benchmarks.budget import sweep_markdown, to_markdown

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    data = json.loads((root / "budget.json").read_text())
    md = to_markdown(data["results"], "machine", "note")
    demo_tight = next(r for r in data["results"] if r["name"] == "demo" and r["max_ap_drop"] == 0.1)
    assert demo_tight["search"]["kept_float_layers"] == ["Conv"] and "Layers kept float: Conv." in md
    assert "| int8, 1 float | 0.1647 | 0.2805 | 0.1582 | -1.12 | yes |" in md
    sweep = json.loads((root / "budget_sweep_raccoon.json").read_text())
    lines = sweep_markdown("raccoon", sweep)
    assert [p["kept_float"] for p in sweep["plans"]] == [0, 1, 2, 4, 8, None]
    assert any(ln.startswith("| int16x8 (whole model) | 0.5591 |") for ln in lines)
