"""The benchmark scripts' own arithmetic: ablation deltas, peer ratios, the suite's run count."""
import pytest

from benchmarks import ablation, peer_kerashub, suite

MACHINE = {"cpu_model": "Test CPU", "architecture": "x86_64", "usable_cpus": 2, "flags": ["avx2"]}


def _metrics(ap, small):
    m = {k: 0.5 for k in ablation.METRICS}
    m.update(AP=ap, AP_small=small)
    return m


def test_ablation_deltas_are_to_the_mean_of_the_fpn_runs():
    r = {"date": "2026-11-26", "machine": MACHINE, "notes": "",
         "runs": [{"variant": "fpn", "label": "a", "params": 100_000, "metrics": _metrics(0.352, 0.140)},
                  {"variant": "fpn", "label": "b", "params": 100_000, "metrics": _metrics(0.310, 0.126)},
                  {"variant": "c5_only", "label": "c", "params": 90_000, "metrics": _metrics(0.148, 0.014)}]}
    md = ablation.render(r)
    assert "| fpn | mean of 2 | | 0.331 | 0.500 | 0.133 |" in md
    # c5_only - mean: AP 0.148 - 0.331 = -18.3 points, AP_small 0.014 - 0.133 = -11.9 points
    assert "| c5_only | c | -18.3 | +0.0 | -11.9 |" in md
    assert "| c5_only | c | 90 k | 0.148 |" in md


def _side(img_s, params=5e6):
    lat = {"threads1": {"p50": 80.0}, "threads2": {"p50": 45.0}}
    return {"library": "lib", "params": params, "keras_latency_ms": {"p50": 70.0},
            "training": {"images_per_s": img_s, "step_ms_p50": 8000 / img_s, "loadavg": [1.0, 1.0, 1.0]},
            "tflite": {"fp32": {"size_mb": 23.2}, "int8": {"size_mb": 6.5}},
            "tflite_latency": {"fp32": lat, "int8": lat}}


def test_peer_report_ratio_is_ours_over_theirs():
    r = {"date": "2026-11-26", "machine": MACHINE, "image_size": 320, "batch_size": 8, "warmup_steps": 20,
         "steps": 15, "notes": "",
         "sides": {"ours": {**_side(3.0), "preset": "retinanet_mobilenetv2_fpn"},
                   "kerashub-resnet50": _side(0.75, 32.25e6),
                   "kerashub-mobilenetv3small": {"side": "kerashub-mobilenetv3small", "error": "exit 1: boom"}}}
    md = peer_kerashub.render(r)
    row = next(line for line in md.splitlines() if line.startswith("| kerashub-resnet50"))
    assert "| 32.25 M | 0.75 |" in row and row.endswith("| 4.00x |")
    r["sides"]["ours-fpnlite"] = {**_side(5.04), "preset": "ssd_mobilenetv2_fpnlite"}
    md = peer_kerashub.render(r)
    row = next(line for line in md.splitlines() if line.startswith("| kerashub-resnet50"))
    assert row.endswith("| 4.00x / 6.72x |")  # 3.0 / 0.75, 5.04 / 0.75
    assert "train img/s: ours / ours-fpnlite ÷ this" in md
    assert "80.0 / 45.0" in row
    assert "| kerashub-mobilenetv3small | error: exit 1: boom |" in md


@pytest.mark.parametrize("probe_ms, runs, warmup", [
    (10.0, 200, 10),      # fast: budget 20 s / 10 ms = 2000, clamped to max_runs
    (400.0, 50, 10),      # budget / latency
    (1500.0, 20, 10),     # min_runs (30 s) still within SLOW_FACTOR x budget (40 s)
    (2500.0, 16, 1),      # min_runs would take 50 s > 40 s: 40 s worth of runs, one warmup
    (30000.0, 3, 1),      # never fewer than 3
])
def test_suite_latency_run_count(monkeypatch, probe_ms, runs, warmup):
    calls = []

    def fake_bench(path, threads, runs, warmup, image):  # the probe and the timed call
        calls.append((runs, warmup))
        lat = {"p50": probe_ms, "p90": probe_ms, "mean": probe_ms}
        return {"latency_ms": {"end_to_end": lat, "invoke": lat}, "vm_hwm_mb": 1.0, "peak_rss_mb": 1.0,
                "rss_mb": 1.0, "backend": "cpu", "delegate": None, "input": "x"}

    monkeypatch.setattr(suite, "_edge_bench", fake_bench)
    res = suite.tflite_latency("m.tflite", 2, budget_s=20.0, min_runs=20, max_runs=200, warmup=10)
    assert calls == [(2, 1), (runs, warmup)]
    assert (res["runs"], res["warmup"]) == (runs, warmup)


def test_resize_modes_table_marks_the_matching_preprocessing():
    from benchmarks import resize_modes

    def fed(ap_lb, ap_st):
        return {"letterbox": {k: ap_lb for k in resize_modes.METRICS},
                "stretch": {k: ap_st for k in resize_modes.METRICS}}

    aspects = [0.75, 1.0, 1.333]
    lb = {"trained": "letterbox", "label": "lb", "aspect_w_over_h": aspects, "fed": fed(0.4, 0.3)}
    r = {"date": "2026-12-07", "machine": MACHINE, "budget": "12 epochs", "notes": "",
         "runs": {"letterbox": [lb],
                  "stretch": [{"trained": "stretch", "label": label, "aspect_w_over_h": aspects, "fed": fed(a, b)}
                              for label, a, b in (("s0", 0.2, 0.45), ("s1", 0.3, 0.35))]}}
    md = resize_modes.render(r)
    assert "| letterbox | lb | **letterbox** | 0.400 |" in md and "| letterbox | lb | stretch | 0.300 |" in md
    assert "| stretch | s0 | letterbox | 0.200 |" in md and "| stretch | s1 | **stretch** | 0.350 |" in md
    assert "| stretch | mean of 2 | **stretch** | 0.400 |" in md and "| stretch | mean of 2 | letterbox | 0.250 |" in md
    assert "mean of 1" not in md
    assert "width / height from 0.75 to 1.333 (median 1.0); 2 of them are not square" in md
