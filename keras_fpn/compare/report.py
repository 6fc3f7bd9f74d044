"""``keras-fpn compare``: what quantization cost, measured the way a device runs it.

For the float Keras model and every exported .tflite variant of a run, on one
validation set: the task's accuracy metrics, their ratio to float, latency
through ``fpn_edge`` (XNNPACK, the given threads), model size, and how much of
the float model's output changed. One flow (``compare_run``) and one report
layout serve every task; the task's ``TaskReport`` (``Task.report``:
``keras_fpn.compare.detection``, ``keras_fpn.compare.segmentation``) says what
is measured and how it is shown.

Writes ``report.json`` (stable keys: the task report's ``keys`` per variant; top level ``run``, ``task``,
``metric``, ``dataset``, ``cpu``, ``threads``, ``latency_method``, ``variants``, ``rules``),
``report.md`` and the plots of ``plots.py`` into the output folder.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fpn_export.modes import COMPARE_DEFAULT
from keras_fpn.tasks import get_task


def keras_latency_ms(model, image_size, runs: int = 20, *, traced: bool = False) -> dict:
    """p50/p90 latency of one batch-1 Keras forward pass (model only).

    ``traced``: time a ``tf.function`` of the call (traced once, untimed)
    instead of the eager call. Eager Keras dispatches op by op: on the 64 px
    test segmenter an eager call took ~1 s against ~20 ms traced (2 loaded
    cores), which measures Python rather than the model; ``compare_run``
    reports the traced number.
    """
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False)) if traced else \
        (lambda x: model(x, training=False))
    x = tf.zeros((1, *image_size, 3), tf.float32)
    forward(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        forward(x)
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


# --------------------------------------------------------------------------- per task


@dataclass(frozen=True)
class TaskReport:
    """What ``compare_run`` measures and reports for one ``model.task``.

    Attributes:
        task: the ``model.task`` value.
        metric: the headline metric (plots).
        metrics: the metric keys copied into every row.
        ratios: metrics also reported as a ratio to float (row key ``<metric>_ratio``).
        keys: the keys of a row, in order.
        table: ``(header, row key)`` columns of the headline table before latency and size
            (keys ending in ``_ratio`` are shown in percent).
        changes_header: headline column of ``format_changes``.
        per_class: ``(metric name, key in a per_class entry or None for the entry itself)``,
            one per-class table each (the first one is plotted).
        bars: the metrics of the bar plot.
        evaluate_keras: ``(model, dataset, config) -> (metrics, results)``.
        evaluate_tflite: ``(path, dataset, config, threads, float results) -> (metrics, results, changes)``.
        format_changes: a row's ``changes`` -> headline cell.
        draw: ``(image, record, a variant's results, dataset, labels) -> (drawn image, caption)``
            for the side-by-side plot.
        class_legend: the side-by-side plot has a legend of class colours.
        postprocess: what the end-to-end latency includes after ``invoke``.
        method: how the metrics are computed (markdown; ``{rules}`` keys may be used).
        changes_note: what the changes column counts (markdown; ``{rules}`` keys may be used).
        rules: the constants the numbers depend on (``report.json``'s ``rules``).
        side_by_side: what the side-by-side plot shows.
        sections: ``report -> markdown lines`` of the task's own tables after the per-class ones.
    """

    task: str
    metric: str
    metrics: tuple
    ratios: tuple
    keys: tuple
    table: tuple
    changes_header: str
    per_class: tuple
    bars: tuple
    evaluate_keras: Callable
    evaluate_tflite: Callable
    format_changes: Callable
    draw: Callable
    class_legend: bool
    postprocess: str
    method: str
    changes_note: str
    rules: dict
    side_by_side: str
    sections: Callable = lambda report: []


# --------------------------------------------------------------------------- the flow


def _ratio(value, reference):
    if value is None or reference is None or not math.isfinite(reference) or reference == 0:
        return None
    return value / reference


def _row(task: TaskReport, variant: str, file, metrics: dict, reference: dict, latency: dict, threads,
         changes) -> dict:
    row = {"variant": variant, "file": str(file) if file else None,
           "size_bytes": os.path.getsize(file) if file else None,
           **{k: metrics.get(k) for k in task.metrics},
           **{f"{k}_ratio": _ratio(metrics[k], reference[k]) for k in task.ratios},
           "per_class": metrics["per_class"],
           "latency_ms_p50": latency["p50"], "latency_ms_p90": latency["p90"], "threads": threads,
           "changes": changes}
    return {k: row[k] for k in task.keys}


def compare_run(run_dir, *, modes=COMPARE_DEFAULT, data: str | None = None,
                include: str | None = None, threads: int = 2, out: str | os.PathLike | None = None,
                bench_runs: int = 50, reuse: bool = True, background: bool = True, max_ap_drop: float | None = None,
                log=print) -> dict:
    """Measure the float model and every exported variant; write the report.

    Args:
      run_dir: a run directory of ``keras-fpn train`` (a detector or a segmenter).
      modes: export modes to measure (exported into RUN/ unless already there and
        newer than the checkpoint, when ``reuse``).
      data, include: evaluation dataset and include list (default: the run's ``data.val`` and
        ``data.val_include``), without the images that cannot be decoded
        (``keras_fpn.data.splits.load_eval_split``).
      threads: XNNPACK threads for every TFLite variant.
      out: output folder (default RUN/compare).
      bench_runs: timed runs per variant for latency.
      background: when two or more modes need exporting (and the machine has two or more
        cores), export the slowest (qat-int8 first) in a second process meanwhile
        (``keras_fpn.compare.background``).
      max_ap_drop: the ``int8-budget`` variant's budget (percent of the fp32 AP; default
        ``fpn_export.budget.DEFAULT_MAX_AP_DROP``); a file searched for another budget is re-exported.

    Returns:
      The report dict (also written as report.json).
    """
    from fpn_edge.atomic import check_writable, write_text_atomic
    from fpn_export.convert import default_output_path
    from keras_fpn.compare.background import BackgroundExport, pick_background
    from keras_fpn.compare.plots import write_plots
    from keras_fpn.data.splits import load_eval_split
    from keras_fpn.rundir import open_run
    from keras_fpn.training.checkpoints import verify_checkpoint

    run = open_run(run_dir)
    cfg = run.config
    task = get_task(cfg.model.task).report
    checkpoint = verify_checkpoint(run.weights("best"))
    dataset = load_eval_split(cfg, data, include, labels=run.labels, where=str(run_dir))
    out = check_writable(Path(out) if out else run.path / "compare", folder=True)
    steps = len(modes) + 2
    paths = {m: default_output_path(run.path, m) for m in modes}
    up_to_date = {m: reuse and p.is_file() and p.stat().st_mtime >= checkpoint.stat().st_mtime
                  for m, p in paths.items()}
    budget_args = _budget_args(modes, paths, up_to_date, max_ap_drop)
    pending = None
    if background and (os.cpu_count() or 1) > 1 and (mode := pick_background([m for m in modes if not up_to_date[m]])):
        pending = BackgroundExport(run.path, mode, out / f"export_{mode}.log", budget_args.get(mode, {}))
        log(f"[{modes.index(mode) + 2}/{steps}] export {mode} in a second process (log {pending.log_path})")
    try:
        report, results = _measure(run, cfg, task, dataset, paths, up_to_date, pending, threads=threads,
                                   bench_runs=bench_runs, steps=steps, budget_args=budget_args, log=log)
    finally:
        if pending is not None:
            pending.stop()
    log(f"[{steps}/{steps}] report and plots -> {out}")
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    write_text_atomic(out / "report.md", format_report(report))
    write_plots(report, out, task=task, dataset=dataset, results=results, labels=run.labels)
    return report


def _budget_args(modes, paths, up_to_date, max_ap_drop) -> dict:
    """``{mode: export_model keywords}`` of the accuracy-budget modes; marks a file searched for another
    budget as out of date (in ``up_to_date``)."""
    from fpn_export import budget
    from fpn_export.modes import get_mode

    drop = budget.DEFAULT_MAX_AP_DROP if max_ap_drop is None else float(max_ap_drop)
    out = {}
    for m in modes:
        if get_mode(m).budget:
            out[m] = {"max_ap_drop": drop}
            up_to_date[m] = up_to_date[m] and budget.recorded_budget(paths[m]) == drop
    return out


def _measure(run, cfg, task, dataset, paths, up_to_date, pending, *, threads, bench_runs, steps, budget_args,
             log):
    """The report's rows (float model first) and each variant's raw results, exporting as needed
    (``paths``: mode -> .tflite path, in report order).

    Accuracy is measured as each variant is ready (a background export may still run);
    latency only after every export finished, all variants round-robin
    (``fpn_edge.bench.interleaved_latency``), so that no variant is timed while an export
    or another variant's evaluation shares the cores, and a load that comes and goes
    hits all alike."""
    from fpn_edge.bench import interleaved_latency
    from fpn_edge.machine import cpu_name
    from fpn_export.convert import export_model

    checkpoint = run.weights("best")
    log(f"[1/{steps}] float Keras model on {len(dataset)} images")
    model = run.build_model(which="best", batch_size=1)
    float_metrics, float_results = task.evaluate_keras(model, dataset, cfg)
    results = {"float (Keras)": float_results}
    measured = {}
    # the background export's mode last: the others are evaluated while it runs
    modes = list(paths)
    for mode in sorted(modes, key=lambda m: pending is not None and m == pending.mode):
        step = f"[{modes.index(mode) + 2}/{steps}]"
        path = paths[mode]
        if pending is not None and pending.mode == mode:
            log(f"{step} waiting for the {mode} export")
            pending.wait()
        elif not up_to_date[mode]:
            log(f"{step} export {mode}")
            path = export_model(run.path, mode, **budget_args.get(mode, {}))
        log(f"{step} {mode}: {path.name} through fpn_edge ({threads} threads)")
        metrics, res, changes = task.evaluate_tflite(path, dataset, cfg, threads, float_results)
        measured[mode] = (path, metrics, changes)
        results[mode] = res
    load_before = _load_average()
    log(f"latency: {len(modes)} variants round-robin, {bench_runs} runs each ({threads} threads)")
    timing = interleaved_latency([measured[m][0] for m in modes], threads=threads, runs=bench_runs, warmup=5,
                                 image=dataset.records[0].image_path)
    keras_latency = keras_latency_ms(model, cfg.model.image_size, runs=min(bench_runs, 20), traced=True)
    rows = [_row(task, "float (Keras)", checkpoint, float_metrics, float_metrics, keras_latency, None, None)]
    for mode in modes:
        path, metrics, changes = measured[mode]
        latency = timing[str(path)]
        rows.append(_row(task, mode, path, metrics, float_metrics, latency.get("end_to_end", latency["invoke"]),
                         threads, changes))
    report = {"run": str(run.path), "task": task.task, "metric": task.metric,
              "dataset": {"source": str(dataset.source), "images": len(dataset)}, "resize": cfg.model.resize,
              "cpu": cpu_name(), "threads": threads,
              "latency_method": {"order": "round-robin after every export", "runs": bench_runs, "warmup": 5,
                                 "load_average_1min": [load_before, _load_average()]},
              "variants": rows, "rules": dict(task.rules)}
    return report, results


def _load_average():
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# --------------------------------------------------------------------------- markdown


def fmt(v, spec=".3f") -> str:
    """A number for the tables (``–`` for None / NaN)."""
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def _cell(row: dict, key: str) -> str:
    v = row[key]
    return f"{fmt(v * 100 if v is not None else None, '.1f')} %" if key.endswith("_ratio") else fmt(v)


def headline_table(report: dict) -> str:
    """The markdown table a person reads first."""
    task = get_task(report["task"]).report
    headers = [h for h, _ in task.table]
    lines = ["| variant | " + " | ".join(headers) + f" | latency p50 / p90 (ms) | size (MB) | {task.changes_header} |",
             "|---|" + "---|" * (len(headers) + 3)]
    for r in report["variants"]:
        changes = task.format_changes(r["changes"]) if r["changes"] else "reference"
        size = fmt(r["size_bytes"] / 1e6, ".2f") if r["size_bytes"] else "–"
        lat = f"{fmt(r['latency_ms_p50'], '.1f')} / {fmt(r['latency_ms_p90'], '.1f')}"
        if r["threads"] is None:
            lat += " (Keras, TF)"
        cells = [_cell(r, key) for _, key in task.table]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {lat} | {size} | {changes} |")
    return "\n".join(lines)


def per_class_value(entry, key):
    """A per-class table's number: the entry itself (detection AP) or ``entry[key]`` (segmentation)."""
    if key is None or entry is None:
        return entry
    return entry.get(key)


def _per_class_table(variants: list, key) -> list:
    names = list(variants[0]["per_class"])
    lines = ["| class | " + " | ".join(r["variant"] for r in variants) + " |",
             "|---|" + "---|" * len(variants)]
    lines += [f"| {n} | " + " | ".join(fmt(per_class_value(r["per_class"].get(n), key)) for r in variants) + " |"
              for n in names]
    return lines


def format_report(report: dict) -> str:
    from keras_fpn.compare.plots import plot_files

    task = get_task(report["task"]).report
    per_class = []
    for name, key in task.per_class:
        per_class += [f"## Per-class {name}", "", *_per_class_table(report["variants"], key), ""]
    files = plot_files(task)
    images = " ".join(f"![{title}]({file})" for title, file in files[:-1])
    rules = report.get("rules", task.rules)
    timing = report.get("latency_method")
    how = (f" Latency was timed after every export had finished, the variants round-robin ({timing['runs']} "
           f"rounds after {timing['warmup']} untimed), so that a changing load hits all alike; 1-minute load "
           f"average {fmt(timing['load_average_1min'][0], '.2f')} before and "
           f"{fmt(timing['load_average_1min'][1], '.2f')} after.") if timing else ""
    before = (f"Validation set: {report['dataset']['source']} ({report['dataset']['images']} images), "
              f"model input {report.get('resize', 'letterbox')} (`model.resize`). "
              f"CPU: {report['cpu']}. TFLite variants run through fpn_edge (XNNPACK, {report['threads']} threads); "
              f"latency is end to end per image (preprocess + invoke + {task.postprocess}); the float Keras "
              "row times the model alone (tf.function, TensorFlow)." + how + " " + task.method.format(**rules))
    after = task.changes_note.format(**rules)
    return "\n".join([
        f"# Quantization report: {report['run']}", "",
        before, "",
        headline_table(report), "",
        after, "",
        *per_class,
        *task.sections(report),
        "## Plots", "",
        images, "",
        f"![{files[-1][0]}]({files[-1][1]})", ""])
