"""PNG plots of a compare report (matplotlib, Agg backend), for either task (``report.TaskReport``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SIDE_BY_SIDE_IMAGES = 3


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".tmp_{path.name}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    tmp.replace(path)


def plot_files(task) -> list:
    """``[(title, file name)]`` of the plots ``write_plots`` writes for a task, the side-by-side last.

    Detection: ap_per_variant, ap_vs_latency, ap_vs_size, per_class_ap;
    segmentation: miou_per_variant, miou_vs_latency, miou_vs_size, per_class_iou; then side_by_side.
    """
    m, stem = task.metric, task.metric.lower()
    per_class = task.per_class[0][0]
    return [(f"{m} per variant", f"{stem}_per_variant.png"), (f"{m} vs latency", f"{stem}_vs_latency.png"),
            (f"{m} vs size", f"{stem}_vs_size.png"), (f"per-class {per_class}", f"per_class_{per_class.lower()}.png"),
            (f"float vs int8 {task.side_by_side}", "side_by_side.png")]


def _bar(plt, variants, metrics, path):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [v["variant"] for v in variants]
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        off = (k - (len(metrics) - 1) / 2) * width
        ax.bar(np.arange(len(names)) + off, [v[metric] or 0 for v in variants], width=width, label=metric)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Accuracy per variant")
    _save(fig, path)
    plt.close(fig)


def label_offsets(points, xspan: float, yspan: float, step: int = 11) -> list:
    """Vertical offsets (in points) of the scatter labels: a label whose point lies within 30 % of
    ``xspan`` (about a label's width) and 6 % of ``yspan`` of an earlier point's goes one ``step``
    above that label."""
    offsets = []
    for i, (x, y) in enumerate(points):
        taken = {offsets[j] for j in range(i)
                 if abs(points[j][0] - x) < 0.3 * xspan and abs(points[j][1] - y) < 0.06 * yspan}
        off = 5
        while off in taken:
            off += step
        offsets.append(off)
    return offsets


def _scatter(plt, variants, metric, key, label, path):
    """Metric vs latency or size; each point names its variant and its ratio to float (labels in the
    point's color, stacked where points are close). The y axis spans at least 10 % below the lowest
    value, so a 1 % difference does not fill the plot."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    points, names = [], []
    for v in variants:
        x = v[key] / 1e6 if key == "size_bytes" and v[key] is not None else v[key]
        if x is None:
            continue
        ratio = v.get(f"{metric}_ratio")
        points.append((x, v[metric]))
        names.append(v["variant"] + (f" ({100 * ratio:.1f} %)" if ratio is not None else ""))
    ys = [y for _, y in points]
    low = 0.9 * min(ys) if ys and min(ys) > 0 else None
    if low is not None:
        ax.set_ylim(low, 1.03 * max(ys))
    xs = [x for x, _ in points]
    xspan = (max(xs) - min(xs)) or 1.0 if xs else 1.0
    yspan = (1.03 * max(ys) - low) if low is not None else 1.0
    for (x, y), name, dy in zip(points, names, label_offsets(points, xspan, yspan)):
        color = ax.scatter(x, y, s=40).get_facecolor()[0]
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, dy), fontsize=8, color=color)
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def _per_class(plt, variants, metric, key, path):
    from keras_fpn.compare.report import per_class_value

    names = list(variants[0]["per_class"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 3.5))
    width = 0.8 / len(variants)
    for k, v in enumerate(variants):
        values = [per_class_value(v["per_class"][n], key) for n in names]
        ax.bar(np.arange(len(names)) + (k - (len(variants) - 1) / 2) * width,
               [max(x, 0) if x is not None else 0 for x in values], width=width, label=v["variant"])
    ax.set_xticks(np.arange(len(names)), names, rotation=30 if len(names) > 6 else 0)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"Per-class {metric} before / after quantization")
    _save(fig, path)
    plt.close(fig)


def _class_legend(fig, labels):
    from matplotlib.patches import Patch

    from fpn_edge.draw import segmentation_palette
    from keras_fpn.evaluation.segmentation import class_names

    names = class_names(labels)
    palette = segmentation_palette(len(names))
    fig.legend(handles=[Patch(color=palette[k] / 255.0, label=n) for k, n in enumerate(names) if k],
               loc="lower center", ncol=min(6, len(names) - 1), fontsize=8)


def _side_by_side(plt, report, task, path, dataset, results, labels):
    from keras_fpn.data.images import load_image

    from fpn_export.modes import MODES

    quantized = [v["variant"] for v in report["variants"]
                 if v["variant"] in MODES and MODES[v["variant"]].full_integer]
    right = quantized[0] if quantized else report["variants"][-1]["variant"]
    records = dataset.records[:SIDE_BY_SIDE_IMAGES]
    fig, axes = plt.subplots(len(records), 2, figsize=(8, 4 * len(records)), squeeze=False)
    for row, record in zip(axes, records):
        image = load_image(record.image_path)
        for ax, variant in zip(row, ("float (Keras)", right)):
            drawn, what = task.draw(image, record, results[variant], dataset, labels)
            ax.imshow(drawn)
            ax.set_title(f"{variant}: {what}", fontsize=9)
            ax.axis("off")
    if task.class_legend:
        _class_legend(fig, labels)
    _save(fig, path)
    plt.close(fig)


def write_plots(report: dict, out: Path, *, task, dataset, results: dict, labels) -> None:
    """Write the PNGs of ``plot_files(task)`` into ``out``.

    ``results`` maps a variant to what ``task.evaluate_*`` returned: COCO
    results (detection) or ``{image_id: class map}`` (segmentation).
    """
    plt = _plt()
    variants = report["variants"]
    files = [out / f for _, f in plot_files(task)]
    m = task.metric
    _bar(plt, variants, task.bars, files[0])
    _scatter(plt, variants, m, "latency_ms_p50", "latency p50 (ms, end to end)", files[1])
    _scatter(plt, variants, m, "size_bytes", "model size (MB)", files[2])
    name, key = task.per_class[0]
    _per_class(plt, variants, name, key, files[3])
    _side_by_side(plt, report, task, files[4], dataset, results, labels)
