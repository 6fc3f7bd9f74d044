"""PNG plots of a compare report (matplotlib, Agg backend)."""
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


def _bar_ap(plt, variants, out):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [v["variant"] for v in variants]
    for k, (metric, off) in enumerate((("AP", -0.2), ("AP50", 0.2))):
        ax.bar(np.arange(len(names)) + off, [v[metric] for v in variants], width=0.4, label=metric)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("COCO metric")
    ax.legend()
    ax.set_title("Accuracy per variant")
    _save(fig, out / "ap_per_variant.png")
    plt.close(fig)


def _scatter(plt, variants, out, key, label, filename):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for v in variants:
        x = v[key] / 1e6 if key == "size_bytes" else v[key]
        if x is None:
            continue
        ax.scatter(x, v["AP"], s=40)
        ax.annotate(v["variant"], (x, v["AP"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("COCO AP")
    ax.grid(alpha=0.3)
    _save(fig, out / filename)
    plt.close(fig)


def _per_class(plt, variants, out):
    names = list(variants[0]["per_class"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 3.5))
    width = 0.8 / len(variants)
    for k, v in enumerate(variants):
        ax.bar(np.arange(len(names)) + (k - (len(variants) - 1) / 2) * width,
               [max(v["per_class"][n], 0) for n in names], width=width, label=v["variant"])
    ax.set_xticks(np.arange(len(names)), names, rotation=30 if len(names) > 6 else 0)
    ax.set_ylabel("AP")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Per-class AP before / after quantization")
    _save(fig, out / "per_class_ap.png")
    plt.close(fig)


def _side_by_side(plt, report, out, dataset, results, labels):
    from fpn_edge.draw import draw_detections
    from keras_fpn.data.images import load_image

    quantized = [v["variant"] for v in report["variants"] if "int8" in v["variant"]]
    right = quantized[0] if quantized else report["variants"][-1]["variant"]
    records = dataset.records[:SIDE_BY_SIDE_IMAGES]
    fig, axes = plt.subplots(len(records), 2, figsize=(8, 4 * len(records)), squeeze=False)
    for row, record in zip(axes, records):
        image = load_image(record.image_path)
        for ax, variant in zip(row, ("float (Keras)", right)):
            dets = [{"box_xyxy": [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]],
                     "class_id": dataset.label_map.from_source(r["category_id"]),
                     "label": labels[dataset.label_map.from_source(r["category_id"])], "score": r["score"]}
                    for r in results[variant] if r["image_id"] == record.image_id and r["score"] >= 0.3]
            ax.imshow(draw_detections(image, dets))
            ax.set_title(f"{variant}: {len(dets)} detections (score >= 0.3)", fontsize=9)
            ax.axis("off")
    _save(fig, out / "side_by_side.png")
    plt.close(fig)


def write_plots(report: dict, out: Path, *, dataset, results: dict, labels) -> None:
    """Write ap_per_variant, ap_vs_latency, ap_vs_size, per_class_ap and side_by_side PNGs."""
    plt = _plt()
    variants = report["variants"]
    _bar_ap(plt, variants, out)
    _scatter(plt, variants, out, "latency_ms_p50", "latency p50 (ms, end to end)", "ap_vs_latency.png")
    _scatter(plt, variants, out, "size_bytes", "model size (MB)", "ap_vs_size.png")
    _per_class(plt, variants, out)
    _side_by_side(plt, report, out, dataset, results, labels)
