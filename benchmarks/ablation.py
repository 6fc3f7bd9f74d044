"""The FPN ablation (Lin et al. 2017, Table 1): full FPN vs single-scale heads, same data and budget.

    keras-fpn data synthetic data/synthetic --num-train 1500 --num-val 200
    python benchmarks/ablation.py --data data/synthetic --root runs          # trains what is missing
    python benchmarks/ablation.py --run fpn=runs/a --run fpn=runs/b --run c5_only=... --run finest_no_topdown=...

Variants (``configs/ablation_{fpn,c5_only,finest_no_topdown}.yaml``: the demo config plus
``model.neck``; one code path, the neck picks the levels):

- ``fpn``: P3-P6 with the top-down pathway and lateral connections, 2 anchors per cell per level;
- ``c5_only``: one head on P5 = 3x3(1x1(C5)), stride 32, every anchor size on each P5 cell;
- ``finest_no_topdown``: one head on P3 = 3x3(1x1(C3)), stride 8, no top-down pathway (the
  detector stops at C3), every anchor size on each P3 cell.

A run directory without ``eval_ablation.json`` is trained (``keras-fpn train``, unless it already
has ``best.keras``) and evaluated (``keras-fpn evaluate`` on the validation set) in a child process;
then ``benchmarks/results/ablation.{md,json}`` are written: COCO AP, AP50, AP_small/medium/large,
AR100 and AR_small by pycocotools, parameter count, and the deltas to ``fpn`` (the mean of the
``fpn`` runs when several are given: training on the CPU is not bit-deterministic, so a repeated
run shows the run-to-run spread).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))
VARIANTS = ("fpn", "c5_only", "finest_no_topdown")
METRICS = ("AP", "AP50", "AP_small", "AP_medium", "AP_large", "AR100", "AR_small")
EVAL_FILE = "eval_ablation.json"


def _keras_fpn(*args: str) -> None:
    cmd = [sys.executable, "-m", "keras_fpn.cli", *args]
    proc = subprocess.run(cmd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[2:])} exited {proc.returncode}")


def ensure_run(variant: str, run_dir: Path, data: Path | None, log) -> dict:
    """Train (if needed) and evaluate one variant; returns its metrics."""
    out = run_dir / EVAL_FILE
    if not out.is_file():
        val = str(data / "val.json") if data else None
        if not (run_dir / "best.keras").is_file():
            if data is None:
                raise SystemExit(f"error: {run_dir} has no best.keras; pass --data to train it")
            log(f"== training {variant} -> {run_dir}")
            t0 = time.time()
            _keras_fpn("train", str(ROOT / "configs" / f"ablation_{variant}.yaml"), "--run-dir", str(run_dir),
                       "--set", f"data.train={data / 'train.json'}", "--set", f"data.val={val}")
            log(f"   trained in {(time.time() - t0) / 60:.1f} min")
        log(f"== evaluating {variant} ({run_dir})")
        _keras_fpn("evaluate", str(run_dir), *(["--data", val] if val else []), "--out", str(out))
    return json.loads(out.read_text())


def params_of(run_dir: Path) -> int:
    """Parameter count of the run's architecture (built from its config, no weights loaded)."""
    from keras_fpn.models.factory import build_model
    from keras_fpn.rundir import open_run

    return int(build_model(open_run(run_dir).config.model, backbone_weights=None).count_params())


def _mean(rows: list) -> dict:
    return {k: sum(r["metrics"][k] for r in rows) / len(rows) for k in METRICS}


def render(r: dict) -> str:
    from benchmarks.machine import machine_line

    rows = r["runs"]
    fpn = [v for v in rows if v["variant"] == "fpn"]
    ref = _mean(fpn) if fpn else None
    lines = ["# FPN ablation: full FPN vs single-scale heads", "",
             f"{r['date']}, {machine_line(r['machine'])}. Synthetic multi-scale shapes (`keras-fpn data synthetic "
             "--num-train 1500 --num-val 200`: 5 classes, objects in equal thirds small / medium / large), "
             "validation 200 images; every variant trained from scratch with the same config and budget "
             "(8 x 80 steps of batch 16 at 256 px, MobileNetV2 0.35, best checkpoint by val AP), evaluated with "
             "pycocotools at the images' 320 px. Configs: `configs/ablation_{fpn,c5_only,finest_no_topdown}.yaml`.",
             "", "| variant | run | params | " + " | ".join(METRICS) + " |", "|---|---|---|" + "---|" * len(METRICS)]
    for v in rows:
        m = v["metrics"]
        lines.append(f"| {v['variant']} | {v['label']} | {v['params'] / 1e3:.0f} k | "
                     + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    if len(fpn) > 1:
        lines.append(f"| fpn | mean of {len(fpn)} | | " + " | ".join(f"{ref[k]:.3f}" for k in METRICS) + " |")
    if ref:
        lines += ["", f"Difference to fpn{' (mean)' if len(fpn) > 1 else ''}, AP points x 100:", "",
                  "| variant | run | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for v in rows:
            if v["variant"] != "fpn":
                lines.append(f"| {v['variant']} | {v['label']} | " + " | ".join(
                    f"{100 * (v['metrics'][k] - ref[k]):+.1f}" for k in METRICS) + " |")
    lines += ["", r.get("notes", ""), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="synthetic dataset dir (train.json, val.json)")
    ap.add_argument("--root", type=Path, default=ROOT / "runs", help="run dirs ROOT/ablation_<variant>")
    ap.add_argument("--run", action="append", default=[], metavar="VARIANT=DIR",
                    help="use this run directory for a variant (repeatable; a variant may have several runs)")
    ap.add_argument("--notes", default="", help="free text appended to the report")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ablation"),
                    help="output stem (STEM.md + STEM.json)")
    a = ap.parse_args(argv)
    given = []
    for item in a.run:
        name, _, path = item.partition("=")
        if name not in VARIANTS or not path:
            ap.error(f"--run {item!r}: expected VARIANT=DIR with VARIANT in {', '.join(VARIANTS)}")
        given.append((name, Path(path)))
    runs = [(v, d) for v in VARIANTS for d in ([d for n, d in given if n == v] or [a.root / f"ablation_{v}"])]

    import keras_fpn  # noqa: F401  (sets KERAS_BACKEND)
    from benchmarks.machine import machine_info
    from benchmarks.report import write_json_md

    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    r = {"benchmark": "fpn_ablation", "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
         "notes": a.notes, "runs": []}
    for name, run_dir in runs:
        metrics = ensure_run(name, run_dir, a.data, log)
        r["runs"].append({"variant": name, "label": f"{run_dir.parent.name}/{run_dir.name}", "run": str(run_dir),
                          "params": params_of(run_dir), "metrics": {k: metrics[k] for k in METRICS},
                          "per_class": metrics.get("per_class")})
    md, _ = write_json_md(a.out, r, render(r))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
