"""Write suite results: ``STEM.json`` (everything) and ``STEM.md`` (tables), both atomically."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.machine import machine_line


def output_paths(out) -> tuple:
    """``(STEM.md, STEM.json)`` for ``--out`` given as a stem or as either file name."""
    p = Path(out)
    if p.suffix in (".md", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".md"), p.with_name(p.name + ".json")


def write_json_md(out, results: dict, markdown: str) -> tuple:
    """Write both files atomically (temp file + fsync + rename, ``fpn_edge.atomic``)."""
    from fpn_edge.atomic import write_text_atomic

    md, js = output_paths(out)
    write_text_atomic(js, json.dumps(results, indent=2, default=str) + "\n")
    write_text_atomic(md, markdown)
    return md, js


def _f(v, fmt="{:.1f}"):
    return "—" if v is None else fmt.format(v)


def _row(n: int, *cells) -> str:
    """A markdown table row of ``n`` columns (missing cells empty)."""
    cells = [str(c) for c in cells] + [""] * (n - len(cells))
    return "| " + " | ".join(cells) + " |"


def _err(d) -> str | None:
    if isinstance(d, dict) and "error" in d:
        return "error: " + d["error"].splitlines()[0][:200].replace("|", "/")
    return None


def overloaded(r: dict) -> int:
    """How many measurements ran with a 1-minute load average above the usable CPU count."""
    cpus = r["machine"].get("usable_cpus") or 1

    def walk(d):
        if not isinstance(d, dict):
            return 0
        own = int(bool(d.get("loadavg")) and d["loadavg"][0] > cpus)
        return own + sum(walk(v) for k, v in d.items() if k != "loadavg")
    return walk(r.get("presets", {}))


def render_suite(r: dict) -> str:
    """The markdown report of a suite run (partial results render too)."""
    m = r["machine"]
    s = r["settings"]
    lines = [f"# keras-fpn performance suite{' (quick mode)' if r.get('quick') else ''}", "",
             f"Started {r['started']}, git {m.get('git')}; "
             + (f"took {r['seconds'] / 60:.1f} min." if "seconds" in r else "**incomplete** (still running or killed)."),
             "",
             f"- **Machine**: {machine_line(m)}; {m.get('memory_gib')} GiB RAM"
             + (f", {m['hypervisor']} guest" if m.get("hypervisor") else ""),
             f"- AVX2 {m['has']['avx2']}, AVX-512 {m['has']['avx512']}, VNNI {m['has']['vnni']}, AMX {m['has']['amx']}",
             "- " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
             f"- Load average (1/5/15 min) at start {r.get('loadavg_start')}, at end {r.get('loadavg_end')}: "
             "every number below is from a CPU shared with that load; each measurement records its own.",
             f"- Batch {s['batch_size']}, input {s['image_size']}x{s['image_size']}; training: "
             f"{s['warmup_steps']} warmup + {s['steps']} timed `fit` steps on the raccoon training split "
             "(full pipeline: decode/cache, flip + scale jitter + photometric augmentation, anchor matching); "
             f"Keras latency: {s['keras_runs']} batch-1 runs; TFLite: `fpn-edge bench` in a fresh TF-free "
             f"process per model and thread count, on a real raccoon image, {s['tflite_warmup']} warmup runs, "
             f"timed runs = {s['tflite_budget_s']:g} s / probe latency in [{s['tflite_min_runs']}, "
             f"{s['tflite_max_runs']}]; int8/int16x8 calibrated on {s['calibration_images']} training images.",
             "- Weights: random FPN/heads (MobileNetV2 backbones from the ImageNet weights file), trained only "
             f"for the timed steps, BN statistics recomputed on {s['bn_batches']} batches (precise BN): "
             "speed and size of the architecture, not of a trained detector.", ""]
    presets = r.get("presets", {})
    loaded = overloaded(r)
    if loaded:
        lines += [f"**Warning: {loaded} measurement(s) ran with a 1-minute load average above the "
                  f"{m['usable_cpus']} usable CPUs** (column `load`): their times are inflated and more "
                  "threads can be slower than fewer (XNNPACK workers wait for a core). Rerun on a free machine "
                  "before comparing numbers.", ""]
    notes = [f"- `{p}`: {n}" for p, v in presets.items() for n in v.get("notes", []) if "overridden" in n]
    if notes:
        lines += ["Overrides:", "", *notes, ""]

    lines += ["## Training throughput (Model.fit, full pipeline)", "",
              "| preset | params | images/s | step p50 (ms) | step p90 (ms) | first step (s) | pipeline alone "
              "(images/s) | peak RSS during fit (MB) | load (1 min) |", "|---|---|---|---|---|---|---|---|---|"]
    for p, v in presets.items():
        t, pl = v.get("training"), v.get("pipeline")
        if t is None or _err(t):
            lines.append(_row(9, p, _err(t) or _err(v) or "not run"))
            continue
        lines.append(f"| {p} | {t['params']:,} | {t['images_per_s']:.2f} | {t['step_ms']['p50']:.0f} | "
                     f"{t['step_ms']['p90']:.0f} | {t['first_step_s']:.1f} | "
                     f"{_err(pl) or (_f(pl['images_per_s'], '{:.1f}') if pl else '—')} | "
                     f"{_f(t['rss_mb']['peak_during_fit'], '{:.0f}')} | {(t.get('loadavg') or ['—'])[0]} |")

    lines += ["", "## Keras inference latency (batch 1, float32)", "",
              "| preset | eager `model(x)` p50 / p90 (ms) | compiled `predict_on_batch` p50 / p90 (ms) |",
              "|---|---|---|"]
    for p, v in presets.items():
        k = v.get("keras_latency")
        if k is None or _err(k):
            lines.append(_row(3, p, _err(k) or "not run"))
            continue
        lines.append(f"| {p} | {k['eager_ms']['p50']:.1f} / {k['eager_ms']['p90']:.1f} | "
                     f"{k['compiled_ms']['p50']:.1f} / {k['compiled_ms']['p90']:.1f} |")

    lines += ["", "## TFLite through fpn_edge (XNNPACK CPU, batch 1)", "",
              "End to end = letterbox + normalize/quantize + invoke + detections in image pixels; "
              "invoke = the interpreter alone. Peak RSS = the whole `fpn-edge bench` process.", "",
              "| preset | mode | size (MB) | export (s) | threads | end-to-end p50 / p90 (ms) | "
              "invoke p50 / p90 (ms) | runs | peak RSS (MB) | load (1 min) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p, v in presets.items():
        for mode, e in (v.get("tflite") or {}).items():
            ex = e.get("export")
            if ex is None or _err(ex):
                lines.append(_row(10, p, mode, _err(ex) or "not run"))
                continue
            lat = e.get("latency") or {}
            if not lat:
                lines.append(_row(10, p, mode, f"{ex['size_mb']:.2f}", f"{ex['export_s']:.0f}", "—"))
            for key, b in lat.items():
                if _err(b):
                    lines.append(_row(10, p, mode, f"{ex['size_mb']:.2f}", f"{ex['export_s']:.0f}",
                                      key.replace("threads", ""), _err(b)))
                    continue
                e2e, inv = b["end_to_end_ms"], b["invoke_ms"]
                lines.append(f"| {p} | {mode} | {ex['size_mb']:.2f} | {ex['export_s']:.0f} | {b['threads']} | "
                             + (f"{e2e['p50']:.1f} / {e2e['p90']:.1f}" if e2e else "—")
                             + f" | {inv['p50']:.1f} / {inv['p90']:.1f} | {b['runs']} | "
                             f"{_f(b['peak_rss_mb'], '{:.0f}')} | {(b.get('loadavg') or ['—'])[0]} |")

    errors = [(p, v) for p, v in presets.items() if _err(v)]
    if errors:
        lines += ["", "## Errors", ""] + [f"- `{p}`: {_err(v)}" for p, v in errors]
    lines += ["", "Full numbers (p50/p90/mean/min/max, RSS, load per measurement, files): the JSON beside this file.", ""]
    return "\n".join(lines)
