"""``keras-fpn compare``: what quantization cost, measured the way a device runs it.

For the float Keras model and every exported .tflite variant of a run, on one
validation set: the task's accuracy metrics, their ratio to float, latency
through ``fpn_edge`` (XNNPACK, the given threads), model size, and how much of
the float model's output changed. One flow (``compare_run``) and one report
layout serve both tasks; a ``TaskReport`` says what differs:

* **detection**: COCO metrics (pycocotools), per-class AP, ``AP_ratio``, and
  *changed detections* (below); variants run through ``fpn_edge.Detector``.
* **segmentation** (``model.task: segmentation``): mIoU, pixel accuracy and
  boundary F at ``BOUNDARY_TOLERANCE`` px (``keras_fpn.seg_evaluation``, at the
  original image resolution), per-class IoU and boundary F, ``mIoU_ratio`` and
  ``boundary_F_ratio``, and *changed pixels*: pixels of the original images
  whose class differs from the float Keras model's (the float class maps are
  kept in memory for this, one byte per pixel); variants run through
  ``fpn_edge.Segmenter``.

*Changed detections* (per variant, against the float Keras model): every float
detection with score >= ``CONFIDENT`` (0.3) is paired with the variant's
confident detection of the same class with the highest IoU (a box often
carries several classes, so the same class is looked for first). It is
**moved** when that IoU is in [0.5, ``MOVED_IOU`` = 0.9) (the box moved by
more than ~5 % of its size), **changed class** when no same-class detection
has IoU >= 0.5 but one of another class does, and **lost** otherwise. Confident variant detections that pair
with no float detection are **new**.

Writes ``report.json`` (stable keys: ``REPORT_KEYS`` per detection variant,
``SEG_REPORT_KEYS`` per segmentation variant; top level ``run``, ``task``,
``metric``, ``dataset``, ``cpu``, ``threads``, ``variants``, ``rules``),
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

from keras_fpn.seg_evaluation import BOUNDARY_TOLERANCE

CONFIDENT = 0.3
MATCH_IOU = 0.5
MOVED_IOU = 0.9
REPORT_KEYS = ("variant", "file", "size_bytes", "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
               "AP_ratio", "per_class", "latency_ms_p50", "latency_ms_p90", "threads", "changes")
SEG_REPORT_KEYS = ("variant", "file", "size_bytes", "mIoU", "pixel_accuracy", "boundary_F", "mIoU_ratio",
                   "boundary_F_ratio", "per_class", "latency_ms_p50", "latency_ms_p90", "threads", "changes")
#: class maps kept per TFLite variant for the side-by-side plot
KEPT_MAPS = 3


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [N, 4] vs b [M, 4]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _confident(results: list) -> dict:
    """image_id -> (xyxy boxes, category ids) of detections with score >= CONFIDENT."""
    out = {}
    for r in results:
        if r["score"] >= CONFIDENT:
            x, y, w, h = r["bbox"]
            out.setdefault(r["image_id"], []).append((x, y, x + w, y + h, r["category_id"]))
    return {k: (np.array([v[:4] for v in vals], np.float32), np.array([v[4] for v in vals]))
            for k, vals in out.items()}


def detection_changes(reference: list, variant: list) -> dict:
    """Count lost / changed-class / moved / new confident detections (see module doc)."""
    ref, var = _confident(reference), _confident(variant)
    counts = {"reference": 0, "lost": 0, "changed_class": 0, "moved": 0, "new": 0}
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), int))
    for image_id in set(ref) | set(var):
        (rb, rc), (vb, vc) = ref.get(image_id, empty), var.get(image_id, empty)
        iou = _iou_matrix(rb, vb)
        counts["reference"] += len(rb)
        for i in range(len(rb)):
            same = np.where(vc == rc[i], iou[i], -1.0) if len(vb) else np.zeros(0)
            if len(same) and same.max() >= MATCH_IOU:  # same class first: boxes often carry several classes
                counts["moved"] += int(same.max() < MOVED_IOU)
            elif len(vb) and iou[i].max() >= MATCH_IOU:
                counts["changed_class"] += 1
            else:
                counts["lost"] += 1
        if len(vb):
            counts["new"] += int((iou.max(axis=0, initial=0.0) < MATCH_IOU).sum() if len(rb) else len(vb))
    return counts


def tflite_results(model_path, dataset, *, threads: int | None, score_threshold: float) -> list:
    """Run a .tflite through ``fpn_edge.Detector`` over a dataset; COCO results."""
    from fpn_edge import Detector

    det = Detector.from_file(model_path, threads=threads)
    results = []
    for record in dataset.records:
        for d in det.detect(record.image_path, score_threshold=score_threshold):
            x1, y1, x2, y2 = d.box_xyxy
            results.append({"image_id": int(record.image_id),
                            "category_id": int(dataset.label_map.to_source(d.class_id)),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                            "score": float(d.score)})
    return results


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
        postprocess: what the end-to-end latency includes after ``invoke``.
        method: how the metrics are computed (markdown; ``{rules}`` keys may be used).
        changes_note: what the changes column counts (markdown; ``{rules}`` keys may be used).
        rules: the constants the numbers depend on (``report.json``'s ``rules``).
        side_by_side: what the side-by-side plot shows.
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
    postprocess: str
    method: str
    changes_note: str
    rules: dict
    side_by_side: str


def _detection_keras(model, dataset, cfg):
    from keras_fpn.evaluation import coco_evaluate, predict_dataset

    results = predict_dataset(model, dataset, cfg.model, progress=True)
    return coco_evaluate(dataset, results), results


def _detection_tflite(path, dataset, cfg, threads, reference):
    from keras_fpn.evaluation import coco_evaluate

    results = tflite_results(path, dataset, threads=threads, score_threshold=cfg.model.score_threshold)
    return coco_evaluate(dataset, results), results, detection_changes(reference, results)


def _detection_changes_cell(ch) -> str:
    return f"{ch['lost']} / {ch['changed_class']} / {ch['moved']} / {ch['new']} of {ch['reference']}"


def _kept(pairs, store: dict, limit: int | None = None):
    """Pass ``(record, class map)`` pairs through, keeping the first ``limit`` maps by image id."""
    for record, pred in pairs:
        if limit is None or len(store) < limit:
            store[record.image_id] = pred
        yield record, pred


def _seg_keras(model, dataset, cfg):
    from keras_fpn.seg_evaluation import predict_class_maps, score_class_maps

    maps = {}
    pairs = predict_class_maps(model, dataset, cfg.model, progress=True)
    return score_class_maps(_kept(pairs, maps), dataset.label_map.names, ignore_label=cfg.model.ignore_label), maps


def _seg_tflite(path, dataset, cfg, threads, reference):
    from fpn_export.segmentation import tflite_class_maps
    from keras_fpn.seg_evaluation import score_class_maps

    changes = {"pixels": 0, "changed": 0}

    def compared(pairs):
        for record, pred in pairs:
            ref = reference.get(record.image_id)
            if ref is not None:
                changes["pixels"] += int(ref.size)
                changes["changed"] += int(np.count_nonzero(ref != pred))
            yield record, pred

    maps = {}
    pairs = _kept(compared(tflite_class_maps(path, dataset, threads=threads)), maps, KEPT_MAPS)
    metrics = score_class_maps(pairs, dataset.label_map.names, ignore_label=cfg.model.ignore_label)
    changes["changed_fraction"] = changes["changed"] / changes["pixels"] if changes["pixels"] else None
    return metrics, maps, changes


def _seg_changes_cell(ch) -> str:
    return f"{_fmt(ch['changed_fraction'] * 100 if ch['changed_fraction'] is not None else None, '.2f')} %"


TASKS = {
    "detection": TaskReport(
        task="detection", metric="AP", metrics=("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"),
        ratios=("AP",), keys=REPORT_KEYS,
        table=(("AP", "AP"), ("AP50", "AP50"), ("AP_small", "AP_small"), ("AP_medium", "AP_medium"),
               ("AP_large", "AP_large"), ("AP vs float", "AP_ratio")),
        changes_header="lost / class / moved / new", per_class=(("AP", None),), bars=("AP", "AP50"),
        evaluate_keras=_detection_keras, evaluate_tflite=_detection_tflite,
        format_changes=_detection_changes_cell, postprocess="decode", method="COCO metrics by pycocotools.",
        changes_note="Changed detections: confident (score >= {confident_score}) float detections that the "
                     "variant lost (no box with IoU >= {match_iou}), gave another class, or moved (IoU < "
                     "{moved_iou}); new = confident variant boxes with no float counterpart.",
        rules={"confident_score": CONFIDENT, "match_iou": MATCH_IOU, "moved_iou": MOVED_IOU},
        side_by_side="detections"),
    "segmentation": TaskReport(
        task="segmentation", metric="mIoU", metrics=("mIoU", "pixel_accuracy", "boundary_F"),
        ratios=("mIoU", "boundary_F"), keys=SEG_REPORT_KEYS,
        table=(("mIoU", "mIoU"), ("boundary F", "boundary_F"), ("pixel acc.", "pixel_accuracy"),
               ("mIoU vs float", "mIoU_ratio"), ("BF vs float", "boundary_F_ratio")),
        changes_header="changed pixels", per_class=(("IoU", "IoU"), ("boundary F", "boundary_F")),
        bars=("mIoU", "boundary_F"),
        evaluate_keras=_seg_keras, evaluate_tflite=_seg_tflite,
        format_changes=_seg_changes_cell, postprocess="logits -> class map of the original image",
        method="mIoU over all classes (background included), pixel accuracy and boundary F (BF, "
               "{boundary_tolerance_px} px tolerance) at the original image resolution (keras_fpn.seg_evaluation).",
        changes_note="Changed pixels: the share of the original images' pixels whose class differs from "
                     "the float Keras model's.",
        rules={"boundary_tolerance_px": BOUNDARY_TOLERANCE}, side_by_side="class maps"),
}


def task_report(task: str) -> TaskReport:
    """The ``TaskReport`` of a ``model.task``."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"compare: no report for model.task {task!r} (have {', '.join(TASKS)})") from None


# --------------------------------------------------------------------------- the flow


def _ratio(value, reference):
    if value is None or reference is None or not math.isfinite(reference) or reference == 0:
        return None
    return value / reference


def _row(task: TaskReport, variant: str, file, metrics: dict, reference: dict, latency: dict, threads,
         changes) -> dict:
    row = {"variant": variant, "file": str(file) if file else None,
           "size_bytes": os.path.getsize(file) if file else None,
           **{k: metrics[k] for k in task.metrics},
           **{f"{k}_ratio": _ratio(metrics[k], reference[k]) for k in task.ratios},
           "per_class": metrics["per_class"],
           "latency_ms_p50": latency["p50"], "latency_ms_p90": latency["p90"], "threads": threads,
           "changes": changes}
    return {k: row[k] for k in task.keys}


def compare_run(run_dir, *, modes=("fp32", "int8", "qat-int8"), data: str | None = None,
                include: str | None = None, threads: int = 2, out: str | os.PathLike | None = None,
                bench_runs: int = 50, reuse: bool = True, background: bool = True, log=print) -> dict:
    """Measure the float model and every exported variant; write the report.

    Args:
      run_dir: a run directory of ``keras-fpn train`` (a detector or a segmenter).
      modes: export modes to measure (exported into RUN/ unless already there and
        newer than the checkpoint, when ``reuse``).
      data, include: evaluation dataset (default: the run's ``data.val``).
      threads: XNNPACK threads for every TFLite variant.
      out: output folder (default RUN/compare).
      bench_runs: timed runs per variant for latency.
      background: when two or more modes need exporting (and the machine has two or more
        cores), export the slowest (qat-int8 first) in a second process meanwhile
        (``keras_fpn.compare.background``).

    Returns:
      The report dict (also written as report.json).
    """
    from fpn_export.convert import default_output_path
    from keras_fpn.compare.background import BackgroundExport, pick_background
    from keras_fpn.compare.plots import write_plots
    from keras_fpn.rundir import open_run, write_text_atomic
    from keras_fpn.data.splits import load_datasets, load_split

    run = open_run(run_dir)
    cfg = run.config
    task = task_report(cfg.model.task)
    dataset = load_split(data, include, cfg.data.strict) if data else load_datasets(cfg)[1]
    if dataset is None:
        raise ValueError(f"{run_dir}: no data.val in the config; pass --data")
    out = Path(out) if out else run.path / "compare"
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = run.weights("best")
    steps = len(modes) + 2
    paths = {m: default_output_path(run.path, m) for m in modes}
    up_to_date = {m: reuse and p.is_file() and p.stat().st_mtime >= checkpoint.stat().st_mtime
                  for m, p in paths.items()}
    pending = None
    if background and (os.cpu_count() or 1) > 1 and (mode := pick_background([m for m in modes if not up_to_date[m]])):
        pending = BackgroundExport(run.path, mode, out / f"export_{mode}.log")
        log(f"[{modes.index(mode) + 2}/{steps}] export {mode} in a second process (log {pending.log_path})")
    try:
        report, results = _measure(run, cfg, task, dataset, paths, up_to_date, pending, threads=threads,
                                   bench_runs=bench_runs, steps=steps, log=log)
    finally:
        if pending is not None:
            pending.stop()
    log(f"[{steps}/{steps}] report and plots -> {out}")
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    write_text_atomic(out / "report.md", format_report(report))
    write_plots(report, out, task=task, dataset=dataset, results=results, labels=run.labels)
    return report


def _measure(run, cfg, task, dataset, paths, up_to_date, pending, *, threads, bench_runs, steps, log):
    """The report's rows (float model first) and each variant's raw results, exporting as needed
    (``paths``: mode -> .tflite path, in report order)."""
    from fpn_edge.bench import benchmark, cpu_name
    from fpn_export.convert import export_model

    checkpoint = run.weights("best")
    log(f"[1/{steps}] float Keras model on {len(dataset)} images")
    model = run.build_model(which="best", batch_size=1)
    float_metrics, float_results = task.evaluate_keras(model, dataset, cfg)
    rows = [_row(task, "float (Keras)", checkpoint, float_metrics, float_metrics,
                 keras_latency_ms(model, cfg.model.image_size, runs=min(bench_runs, 20), traced=True),
                 None, None)]
    results = {"float (Keras)": float_results}
    by_mode = {}
    # the background export's mode last: the others are measured while it runs
    modes = list(paths)
    for mode in sorted(modes, key=lambda m: pending is not None and m == pending.mode):
        step = f"[{modes.index(mode) + 2}/{steps}]"
        path = paths[mode]
        if pending is not None and pending.mode == mode:
            log(f"{step} waiting for the {mode} export")
            pending.wait()
        elif not up_to_date[mode]:
            log(f"{step} export {mode}")
            path = export_model(run.path, mode)
        log(f"{step} {mode}: {path.name} through fpn_edge ({threads} threads)")
        metrics, res, changes = task.evaluate_tflite(path, dataset, cfg, threads, float_results)
        bench = benchmark(path, threads=threads, runs=bench_runs, warmup=5,
                          image=dataset.records[0].image_path)
        latency = bench["latency_ms"].get("end_to_end", bench["latency_ms"]["invoke"])
        by_mode[mode] = _row(task, mode, path, metrics, float_metrics, latency, threads, changes)
        results[mode] = res
    rows += [by_mode[m] for m in modes]
    report = {"run": str(run.path), "task": task.task, "metric": task.metric,
              "dataset": {"source": str(dataset.source), "images": len(dataset)},
              "cpu": cpu_name(), "threads": threads, "variants": rows,
              "rules": dict(task.rules)}
    return report, results


# --------------------------------------------------------------------------- markdown


def _fmt(v, spec=".3f"):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def _cell(row: dict, key: str) -> str:
    v = row[key]
    return f"{_fmt(v * 100 if v is not None else None, '.1f')} %" if key.endswith("_ratio") else _fmt(v)


def headline_table(report: dict) -> str:
    """The markdown table a person reads first."""
    task = task_report(report.get("task", "detection"))
    headers = [h for h, _ in task.table]
    lines = ["| variant | " + " | ".join(headers) + f" | latency p50 / p90 (ms) | size (MB) | {task.changes_header} |",
             "|---|" + "---|" * (len(headers) + 3)]
    for r in report["variants"]:
        changes = task.format_changes(r["changes"]) if r["changes"] else "reference"
        size = _fmt(r["size_bytes"] / 1e6, ".2f") if r["size_bytes"] else "–"
        lat = f"{_fmt(r['latency_ms_p50'], '.1f')} / {_fmt(r['latency_ms_p90'], '.1f')}"
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
    lines += [f"| {n} | " + " | ".join(_fmt(per_class_value(r["per_class"].get(n), key)) for r in variants) + " |"
              for n in names]
    return lines


def format_report(report: dict) -> str:
    from keras_fpn.compare.plots import plot_files

    task = task_report(report.get("task", "detection"))
    per_class = []
    for name, key in task.per_class:
        per_class += [f"## Per-class {name}", "", *_per_class_table(report["variants"], key), ""]
    files = plot_files(task)
    images = " ".join(f"![{title}]({file})" for title, file in files[:-1])
    rules = report.get("rules", task.rules)
    before = (f"Validation set: {report['dataset']['source']} ({report['dataset']['images']} images). "
              f"CPU: {report['cpu']}. TFLite variants run through fpn_edge (XNNPACK, {report['threads']} threads); "
              f"latency is end to end per image (preprocess + invoke + {task.postprocess}); the float Keras "
              "row times the model alone (tf.function, TensorFlow). " + task.method.format(**rules))
    after = task.changes_note.format(**rules)
    return "\n".join([
        f"# Quantization report: {report['run']}", "",
        before, "",
        headline_table(report), "",
        after, "",
        *per_class,
        "## Plots", "",
        images, "",
        f"![{files[-1][0]}]({files[-1][1]})", ""])
