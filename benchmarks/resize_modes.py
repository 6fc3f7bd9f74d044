"""model.resize on real photos: COCO AP of a letterbox-trained and a stretch-trained detector, each fed both ways.

    export KERAS_FPN_DATA=/path/to/shared/data
    for m in letterbox stretch; do
      keras-fpn train configs/raccoon_retinanet_mobilenetv2_320.yaml --run-dir runs/resize_$m \\
        --set model.resize=$m --set train.epochs=12 --set train.eval_every=0
    done
    python benchmarks/resize_modes.py --run letterbox=runs/resize_letterbox --run stretch=runs/resize_stretch
    # repeat --run per mode for more seeds (--set train.seed=1): the table adds the mean per mode

For each run the best checkpoint is evaluated (pycocotools, the run's held-out split) with the
preprocessing it was trained with, and with the other one: a letterbox model fed stretched images is
what MediaPipe / the TFLite Task Library do to it (they stretch every image to the input size), a
stretch model fed letterboxed images is what fpn-edge did before ``input.resize``. Writes
``benchmarks/results/resize_modes.{md,json}`` and each run's resolved config (data paths written as
``${KERAS_FPN_DATA}``) as ``benchmarks/results/resize_modes/<run dir name>.yaml``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))
MODES = ("letterbox", "stretch")
METRICS = ("AP", "AP50", "AP75", "AP_medium", "AP_large")


def evaluate_run(run_dir: Path, log) -> dict:
    """``{fed mode: metrics}`` of a run's best checkpoint, plus its trained mode and the val images' shapes."""
    from keras_fpn.data.splits import load_eval_split
    from keras_fpn.evaluation.detection import coco_evaluate, predict_dataset
    from keras_fpn.rundir import open_run

    run = open_run(run_dir)
    cfg = run.config
    dataset = load_eval_split(cfg, labels=run.labels, where=str(run_dir))
    model = run.build_model(which="best", batch_size=1)
    out = {"trained": cfg.model.resize, "images": len(dataset),
           "aspect_w_over_h": sorted(round(r.width / r.height, 3) for r in dataset.records), "fed": {}}
    for fed in MODES:
        t0 = time.time()
        model_cfg = dataclasses.replace(cfg.model, resize=fed)
        metrics = coco_evaluate(dataset, predict_dataset(model, dataset, model_cfg), per_class=False)
        out["fed"][fed] = {k: float(metrics[k]) for k in METRICS}
        log(f"{run_dir}: trained {cfg.model.resize}, fed {fed}: AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f} "
            f"({time.time() - t0:.0f} s)")
    return out


def write_config(run_dir: Path, dest: Path) -> None:
    """The run's resolved config.yaml with the data folder written as ``${KERAS_FPN_DATA}``."""
    from fpn_edge.atomic import write_text_atomic

    text = (run_dir / "config.yaml").read_text()
    data = os.environ.get("KERAS_FPN_DATA")
    if data:
        text = text.replace(str(Path(data).resolve()), "${KERAS_FPN_DATA}").replace(data, "${KERAS_FPN_DATA}")
    write_text_atomic(dest, text)


def mean_metrics(runs: list, fed: str) -> dict:
    """The mean of each metric over the runs of one mode, fed ``fed``."""
    return {k: sum(run["fed"][fed][k] for run in runs) / len(runs) for k in METRICS}


def render(r: dict) -> str:
    from benchmarks.machine import machine_line

    lines = ["# Letterbox vs stretch (`model.resize`) on the raccoon photos", "",
             f"{r['date']}, {machine_line(r['machine'])}.", "", r["budget"], "",
             "| trained with | run | fed with | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for mode in MODES:
        runs = r["runs"][mode]
        rows = [(run["label"], fed, run["fed"][fed]) for fed in MODES for run in runs]
        if len(runs) > 1:
            rows += [(f"mean of {len(runs)}", fed, mean_metrics(runs, fed)) for fed in MODES]
        for label, fed, m in rows:
            mark = "**" if fed == mode else ""
            lines.append(f"| {mode} | {label} | {mark}{fed}{mark} | "
                         + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    aspects = r["runs"][MODES[0]][0]["aspect_w_over_h"]
    lines += ["", f"Held-out images: {len(aspects)}, width / height from {aspects[0]} to {aspects[-1]} "
              f"(median {aspects[len(aspects) // 2]}); {sum(abs(a - 1) > 0.05 for a in aspects)} of them are "
              "not square within 5 %.", "", r.get("notes", ""), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], metavar="MODE=DIR", required=True,
                    help="a run directory trained with model.resize MODE (repeatable; each mode at least once)")
    ap.add_argument("--budget", default="", help="how the runs were trained (one line for the report)")
    ap.add_argument("--notes", default="", help="free text appended to the report")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "resize_modes"),
                    help="output stem (STEM.md + STEM.json; configs in STEM/)")
    a = ap.parse_args(argv)
    runs = {}
    for item in a.run:
        mode, _, path = item.partition("=")
        runs.setdefault(mode, []).append(Path(path))
    if sorted(runs) != sorted(MODES):
        ap.error(f"--run needs runs of each mode ({', '.join(MODES)}), got {sorted(runs)}")
    from benchmarks.machine import machine_info
    from fpn_edge.atomic import write_text_atomic

    out = Path(a.out)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "budget": a.budget, "notes": a.notes,
              "runs": {}}
    out.mkdir(parents=True, exist_ok=True)
    for mode in MODES:
        for run_dir in runs[mode]:
            res = evaluate_run(run_dir, print)
            if res["trained"] != mode:
                ap.error(f"{run_dir}: trained with model.resize {res['trained']}, not {mode}")
            res["label"] = run_dir.name
            result["runs"].setdefault(mode, []).append(res)
            write_config(run_dir, out / f"{run_dir.name}.yaml")
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=2))
    write_text_atomic(out.with_suffix(".md"), render(result))
    print(f"-> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
