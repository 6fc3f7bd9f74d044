"""The accuracy-budget export (``int8-budget``) beside float and int8 on real runs: AP, AP75, latency, float layers.

    export KERAS_FPN_DATA=/work/shared/data
    python -m benchmarks.budget raccoon=/runs/raccoon:1.0 demo=/runs/demo/run:1.0,0.1 \
        --json benchmarks/results/budget.json --md benchmarks/results/budget.md [--note TEXT]
    python -m benchmarks.budget --render --json ... --md ... --note TEXT   # the markdown again

For every ``NAME=RUN:BUDGET[,BUDGET...]``: ``keras-fpn compare`` of the run with the variants
fp32, int8 and int8-budget (one compare per budget, the fp32 / int8 files reused; every export
finished before any timing: no background export; the variants timed round-robin by compare), on the
run's reported validation set; then the
search log of the int8-budget model (``<stem>_budget.json``: every plan tried on the
calibration-validation split of the training data, the layers kept float). Latency is end to end
through fpn_edge (2 threads, 50 runs, one validation image), on this machine under the load
recorded with each run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def _parse(spec: str) -> tuple:
    name, _, rest = spec.partition("=")
    run, _, budgets = rest.rpartition(":")
    if not name or not run or not budgets:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=RUN:BUDGET[,BUDGET...]")
    return name, Path(run), [float(b) for b in budgets.split(",")]


def measure(name: str, run: Path, budget: float, threads: int = 2, runs: int = 50) -> dict:
    """One compare (fp32, int8, int8-budget at ``budget``) and the int8-budget search log."""
    from keras_fpn.compare.report import compare_run

    out = run / f"compare_budget_{budget:g}"
    t0 = time.time()
    report = compare_run(run, modes=("fp32", "int8", "int8-budget"), out=out, threads=threads, bench_runs=runs,
                         background=False, max_ap_drop=budget, log=lambda *a: None)
    log_path = run / "model_int8-budget_budget.json"
    log = json.loads(log_path.read_text())
    shutil.copy(log_path, out / log_path.name)   # the next budget's export replaces it
    keep = ("variant", "AP", "AP50", "AP75", "AP_ratio", "AP75_ratio", "matched_iou", "latency_ms_p50",
            "latency_ms_p90", "size_bytes")
    return {"name": name, "run": str(run), "max_ap_drop": budget, "seconds": round(time.time() - t0, 1),
            "load_avg": os.getloadavg(), "dataset": report["dataset"], "cpu": report["cpu"],
            "variants": [{k: r.get(k) for k in keep} for r in report["variants"]],
            "search": {k: log[k] for k in ("verdict", "met", "recommend", "reference", "plans", "kept_float",
                                           "kept_float_layers", "full_integer", "max_float")},
            "split": {k: v for k, v in log["split"].items() if k != "files"}}


def _plans_table(plans: list) -> list:
    lines = ["| plan | AP | AP50 | AP75 | drop (% of fp32) | meets | latency p50 (ms) | size (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for p in plans:
        if "error" in p:
            lines.append(f"| {p['plan']} | {p['error']} | | | | no | | |")
            continue
        lines.append(f"| {p['plan']} | {p['AP']:.4f} | {p['AP50']:.4f} | {p['AP75']:.4f} | "
                     f"{p['AP_drop_pct']:.2f} | {'yes' if p['meets'] else 'no'} | {p['latency_ms_p50']:.1f} | "
                     f"{p['size_bytes'] / 1e6:.3f} |")
    return lines


def sweep_markdown(name: str, log: dict) -> list:
    """A search log (``<stem>_budget.json``) of an export with an unreachable budget: the whole ladder."""
    sp = log["split"]
    return [f"## {name}: the ladder (`--max-ap-drop {log['max_ap_drop']:g} --max-float {log['max_float']}`)", "",
            f"Split: {sp['images']} training images (seed {sp['seed']}), reference fp32 TFLite AP "
            f"{log['reference']['AP']:.4f}, {log['reference']['latency_ms_p50']:.1f} ms. {log['verdict']}.", "",
            *_plans_table(log["plans"]), "",
            f"Ranked worst first (kept float in the last plan): {', '.join(log['kept_float_layers'])}.", ""]


def to_markdown(results: list, machine: str, note: str = "", sweeps=()) -> str:
    lines = ["# Accuracy-budget int8 export (`--mode int8 --max-ap-drop PCT`)", "", f"Machine: {machine}", ""]
    lines += [note, ""] if note else []
    for r in results:
        s = r["search"]
        lines += [f"## {r['name']}: budget {r['max_ap_drop']:g} % ({r['run']})", "",
                  f"Validation set: {r['dataset']['source']} ({r['dataset']['images']} images); "
                  f"load average {', '.join(f'{v:.1f}' for v in r['load_avg'])}; {r['seconds']:.0f} s.", "",
                  "| variant | AP | AP50 | AP75 | AP vs float | AP75 vs float | matched IoU | latency p50 / p90 (ms) "
                  "| size (MB) |", "|---|---|---|---|---|---|---|---|---|"]
        pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        for v in r["variants"]:
            size = "–" if not v["size_bytes"] else f"{v['size_bytes'] / 1e6:.2f}"
            iou = "–" if v.get("matched_iou") is None else f"{v['matched_iou']:.3f}"
            lines.append(f"| {v['variant']} | {v['AP']:.3f} | {v['AP50']:.3f} | {v['AP75']:.3f} | {pct(v['AP_ratio'])} | "
                         f"{pct(v.get('AP75_ratio'))} | {iou} | {v['latency_ms_p50']:.1f} / {v['latency_ms_p90']:.1f} | "
                         f"{size} |")
        sp = r["split"]
        lines += ["", f"Search on the calibration-validation split ({sp['images']} training images, seed "
                      f"{sp['seed']}; calibration: {sp['calibration_images']} of the other {sp['calibration_pool']}); "
                      f"reference fp32 TFLite AP {s['reference']['AP']:.4f}. **{s['verdict']}**.", "",
                  *_plans_table(s["plans"])]
        kept = ", ".join(s["kept_float_layers"]) or "none (full integer)"
        lines += ["", f"Layers kept float: {kept}.", ""]
    for name, log in sweeps:
        lines += sweep_markdown(name, log)
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks.machine import machine_info, machine_line
    from fpn_edge.atomic import write_text_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=_parse, metavar="NAME=RUN:BUDGET[,BUDGET...]")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--note", default="", help="a paragraph for the markdown (where the runs come from)")
    ap.add_argument("--render", action="store_true", help="only write --md from the results in --json")
    ap.add_argument("--sweep", action="append", default=[], metavar="NAME=LOG.json",
                    help="also show the search log of an export with an unreachable budget (the whole ladder)")
    args = ap.parse_args(argv)
    sweeps = [(n, json.loads(Path(f).read_text())) for n, _, f in (w.partition("=") for w in args.sweep)]
    if args.render:
        data = json.loads(Path(args.json).read_text())
        write_text_atomic(args.md, to_markdown(data["results"], machine_line(data["machine"]), args.note, sweeps))
        return 0
    machine = machine_info()
    results = []
    for name, run, budgets in args.runs:
        for budget in budgets:
            results.append(measure(name, run, budget))
            print(f"{name} @ {budget:g} %: {results[-1]['search']['verdict']}", flush=True)
            write_text_atomic(args.json, json.dumps({"machine": machine, "results": results}, indent=2))
    write_text_atomic(args.md, to_markdown(results, machine_line(machine), args.note, sweeps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
