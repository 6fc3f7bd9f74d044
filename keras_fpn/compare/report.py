"""``keras-fpn compare``: what quantization cost, measured the way a device runs it.

For the float Keras model and every exported .tflite variant of a run, on one
validation set: COCO metrics (pycocotools), per-class AP, the AP ratio to
float, latency through ``fpn_edge`` (XNNPACK, the given threads), model size,
and how many confident float detections changed.

*Changed detections* (per variant, against the float Keras model): every float
detection with score >= ``CONFIDENT`` (0.3) is paired with the variant's
confident detection of the same class with the highest IoU (a box often
carries several classes, so the same class is looked for first). It is
**moved** when that IoU is in [0.5, ``MOVED_IOU`` = 0.9) (the box moved by
more than ~5 % of its size), **changed class** when no same-class detection
has IoU >= 0.5 but one of another class does, and **lost** otherwise. Confident variant detections that pair
with no float detection are **new**.

Writes ``report.json`` (stable keys, see ``REPORT_KEYS``), ``report.md`` and
the plots of ``plots.py`` into the output folder.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

CONFIDENT = 0.3
MATCH_IOU = 0.5
MOVED_IOU = 0.9
REPORT_KEYS = ("variant", "file", "size_bytes", "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
               "AP_ratio", "per_class", "latency_ms_p50", "latency_ms_p90", "threads", "changes")


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


def keras_latency_ms(model, image_size, runs: int = 20) -> dict:
    """p50/p90 latency of one batch-1 Keras forward pass (model only)."""
    x = np.zeros((1, *image_size, 3), np.float32)
    model(x, training=False)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(x, training=False)
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


def _row(variant: str, file, metrics: dict, float_ap: float | None, latency: dict, threads, changes) -> dict:
    size = os.path.getsize(file) if file else None
    ratio = (metrics["AP"] / float_ap) if float_ap else None
    return {"variant": variant, "file": str(file) if file else None, "size_bytes": size,
            **{k: metrics[k] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")},
            "AP_ratio": ratio, "per_class": metrics["per_class"],
            "latency_ms_p50": latency["p50"], "latency_ms_p90": latency["p90"], "threads": threads,
            "changes": changes}


def compare_run(run_dir, *, modes=("fp32", "int8", "qat-int8"), data: str | None = None,
                include: str | None = None, threads: int = 2, out: str | os.PathLike | None = None,
                bench_runs: int = 50, reuse: bool = True, log=print) -> dict:
    """Measure the float model and every exported variant; write the report.

    Args:
      run_dir: a run directory of ``keras-fpn train``.
      modes: export modes to measure (exported into RUN/ unless already there and
        newer than the checkpoint, when ``reuse``).
      data, include: evaluation dataset (default: the run's ``data.val``).
      threads: XNNPACK threads for every TFLite variant.
      out: output folder (default RUN/compare).
      bench_runs: timed runs per variant for latency.

    Returns:
      The report dict (also written as report.json).
    """
    from fpn_edge.bench import benchmark, cpu_name
    from fpn_export.convert import default_output_path, export_model
    from keras_fpn.compare.plots import write_plots
    from keras_fpn.evaluation import coco_evaluate, predict_dataset
    from keras_fpn.rundir import open_run, write_text_atomic
    from keras_fpn.training.train import load_datasets, load_split

    run = open_run(run_dir)
    cfg = run.config
    dataset = load_split(data, include, cfg.data.strict) if data else load_datasets(cfg)[1]
    if dataset is None:
        raise ValueError(f"{run_dir}: no data.val in the config; pass --data")
    out = Path(out) if out else run.path / "compare"
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = run.weights("best")

    log(f"[1/{len(modes) + 2}] float Keras model on {len(dataset)} images")
    model = run.build_model(which="best", batch_size=1)
    float_results = predict_dataset(model, dataset, cfg.model, progress=True)
    float_metrics = coco_evaluate(dataset, float_results)
    rows = [_row("float (Keras)", checkpoint, float_metrics, float_metrics["AP"],
                 keras_latency_ms(model, cfg.model.image_size), None, None)]
    results = {"float (Keras)": float_results}
    for i, mode in enumerate(modes):
        path = default_output_path(run.path, mode)
        if not (reuse and path.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime):
            log(f"[{i + 2}/{len(modes) + 2}] export {mode}")
            path = export_model(run.path, mode)
        log(f"[{i + 2}/{len(modes) + 2}] {mode}: {path.name} through fpn_edge ({threads} threads)")
        res = tflite_results(path, dataset, threads=threads, score_threshold=cfg.model.score_threshold)
        metrics = coco_evaluate(dataset, res)
        bench = benchmark(path, threads=threads, runs=bench_runs, warmup=5,
                          image=dataset.records[0].image_path)
        latency = bench["latency_ms"].get("end_to_end", bench["latency_ms"]["invoke"])
        rows.append(_row(mode, path, metrics, float_metrics["AP"], latency, threads,
                         detection_changes(float_results, res)))
        results[mode] = res
    report = {"run": str(run.path), "dataset": {"source": str(dataset.source), "images": len(dataset)},
              "cpu": cpu_name(), "threads": threads, "variants": rows,
              "rules": {"confident_score": CONFIDENT, "match_iou": MATCH_IOU, "moved_iou": MOVED_IOU}}
    log(f"[{len(modes) + 2}/{len(modes) + 2}] report and plots -> {out}")
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    write_text_atomic(out / "report.md", format_report(report))
    write_plots(report, out, dataset=dataset, results=results, labels=run.labels)
    return report


def _fmt(v, spec=".3f"):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def headline_table(report: dict) -> str:
    """The markdown table a person reads first."""
    lines = ["| variant | AP | AP50 | AP_small | AP_medium | AP_large | AP vs float | latency p50 / p90 (ms) | size (MB) | lost / class / moved / new |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        ch = r["changes"]
        changes = f"{ch['lost']} / {ch['changed_class']} / {ch['moved']} / {ch['new']} of {ch['reference']}" if ch else "reference"
        size = _fmt(r["size_bytes"] / 1e6, ".2f") if r["size_bytes"] else "–"
        lat = f"{_fmt(r['latency_ms_p50'], '.1f')} / {_fmt(r['latency_ms_p90'], '.1f')}"
        if r["threads"] is None:
            lat += " (Keras, TF)"
        lines.append(f"| {r['variant']} | {_fmt(r['AP'])} | {_fmt(r['AP50'])} | {_fmt(r['AP_small'])} | "
                     f"{_fmt(r['AP_medium'])} | {_fmt(r['AP_large'])} | {_fmt(r['AP_ratio'] * 100, '.1f')} % | "
                     f"{lat} | {size} | {changes} |")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    names = list(report["variants"][0]["per_class"])
    per_class = ["| class | " + " | ".join(r["variant"] for r in report["variants"]) + " |",
                 "|---|" + "---|" * len(report["variants"])]
    per_class += [f"| {n} | " + " | ".join(_fmt(r["per_class"].get(n)) for r in report["variants"]) + " |"
                  for n in names]
    return "\n".join([
        f"# Quantization report: {report['run']}", "",
        f"Validation set: {report['dataset']['source']} ({report['dataset']['images']} images). "
        f"CPU: {report['cpu']}. TFLite variants run through fpn_edge (XNNPACK, {report['threads']} threads); "
        "latency is end to end per image (preprocess + invoke + decode). COCO metrics by pycocotools.", "",
        headline_table(report), "",
        f"Changed detections: confident (score >= {CONFIDENT}) float detections that the variant lost "
        f"(no box with IoU >= {MATCH_IOU}), gave another class, or moved (IoU < {MOVED_IOU}); "
        "new = confident variant boxes with no float counterpart.", "",
        "## Per-class AP", "", *per_class, "",
        "## Plots", "",
        "![AP per variant](ap_per_variant.png) ![AP vs latency](ap_vs_latency.png) "
        "![AP vs size](ap_vs_size.png) ![per-class AP](per_class_ap.png)", "",
        "![float vs int8 detections](side_by_side.png)", ""])
