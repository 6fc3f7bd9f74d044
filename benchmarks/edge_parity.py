"""Do `fpn-edge detect` and `keras-fpn predict` give the same detections?

Runs ``keras-fpn predict RUN IMAGES`` (the float Keras model, TF decode + NMS)
and ``fpn-edge detect MODEL IMAGES`` (the exported .tflite through the TF-free
runner) on the same images, pairs every predicted detection with the edge
detection of the same class whose box is closest (max abs coordinate
difference, original-image pixels) and records, per model file:

- detections in each (score >= --threshold) and how many found no partner
  within --box-tol px (``unmatched``), per side;
- max / mean |box difference| in px and max |score difference| over pairs;
- whether the issue's bar holds: boxes within 1 px, same classes, scores
  within 0.01 (asked of fp32; int8 files report their differences).

Detections whose score is within ``--score-margin`` of the threshold are
left out of the unmatched counts (the other side may put them just under it).

Usage:
    python benchmarks/edge_parity.py RUN MODEL.tflite [MODEL2.tflite ...] --images DIR_OR_FILES \
        [--out benchmarks/results/edge_parity]   # writes .md + .json (atomic)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fpn_edge.atomic import write_text_atomic


def _predict_dets(run: str, images: list, out: Path, threshold: float) -> dict:
    subprocess.run(["keras-fpn", "predict", run, *images, "--out", str(out), "--threshold", str(threshold)],
                   check=True, stdout=subprocess.DEVNULL)
    data = json.loads((out / "detections.json").read_text())
    return {name: entry["detections"] for name, entry in data.items()}


def _edge_dets(model: str, images: list, out: Path, threshold: float) -> dict:
    subprocess.run(["fpn-edge", "detect", model, *images, "--out", str(out), "--threshold", str(threshold),
                    "--no-images", "--quiet"], check=True)
    data = json.loads((out / "detections.json").read_text())
    return {Path(e["file"]).name: e["detections"] for e in data["images"]}


def compare_detections(reference: dict, other: dict, *, threshold: float, score_margin: float,
                       box_tol: float) -> dict:
    """Pair detections image by image (same class, closest box) and measure the differences."""
    box_diffs, score_diffs = [], []
    stats = {"reference": 0, "other": 0, "unmatched_reference": 0, "unmatched_other": 0}
    for name in sorted(set(reference) | set(other)):
        ref = [d for d in reference.get(name, []) if d["score"] >= threshold]
        oth = [d for d in other.get(name, []) if d["score"] >= threshold]
        stats["reference"] += len(ref)
        stats["other"] += len(oth)
        used = set()
        for d in sorted(ref, key=lambda d: -d["score"]):
            best, best_diff = None, np.inf
            for j, e in enumerate(oth):
                if j in used or e["class_id"] != d["class_id"]:
                    continue
                diff = float(np.max(np.abs(np.subtract(d["box_xyxy"], e["box_xyxy"]))))
                if diff < best_diff:
                    best, best_diff = j, diff
            if best is None or best_diff > box_tol:
                stats["unmatched_reference"] += int(d["score"] >= threshold + score_margin)
                continue
            used.add(best)
            box_diffs.append(best_diff)
            score_diffs.append(abs(d["score"] - oth[best]["score"]))
        stats["unmatched_other"] += sum(1 for j, e in enumerate(oth)
                                        if j not in used and e["score"] >= threshold + score_margin)
    stats["pairs"] = len(box_diffs)
    stats["box_px_max"] = float(max(box_diffs, default=0.0))
    stats["box_px_mean"] = float(np.mean(box_diffs)) if box_diffs else 0.0
    stats["score_max"] = float(max(score_diffs, default=0.0))
    stats["within_1px_0.01"] = bool(stats["unmatched_reference"] == 0 and stats["unmatched_other"] == 0
                                    and stats["box_px_max"] <= 1.0 and stats["score_max"] <= 0.01)
    return stats


def _images(items: list) -> list:
    out = []
    for item in items:
        p = Path(item)
        out += sorted(str(q) for q in p.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png")) \
            if p.is_dir() else [str(p)]
    return out


def _include(images: list, include: str | None) -> list:
    if not include:
        return images
    text = Path(include).read_text().splitlines()
    names = {line.split(",")[0].strip() for line in text[1:] if line.strip()} if include.endswith(".csv") \
        else {line.strip() for line in text if line.strip()}
    return [i for i in images if Path(i).name in names]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run directory of keras-fpn train")
    ap.add_argument("models", nargs="+", help=".tflite files exported from that run")
    ap.add_argument("--images", nargs="+", required=True, help="image files or folders")
    ap.add_argument("--include", help="only these file names (txt list, or csv with the name first)")
    ap.add_argument("--threshold", type=float, default=0.3, help="score threshold on both sides (0.3)")
    ap.add_argument("--score-margin", type=float, default=0.02)
    ap.add_argument("--box-tol", type=float, default=20.0, help="px; farther = unmatched")
    ap.add_argument("--out", default="benchmarks/results/edge_parity", help="output stem (.md/.json)")
    args = ap.parse_args(argv)

    images = _include(_images(args.images), args.include)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        ref = _predict_dets(args.run, images, Path(tmp) / "predict", args.threshold / 2)
        rows = []
        for model in args.models:
            other = _edge_dets(model, images, Path(tmp) / Path(model).stem, args.threshold / 2)
            stats = compare_detections(ref, other, threshold=args.threshold, score_margin=args.score_margin,
                                       box_tol=args.box_tol)
            rows.append({"model": model, "size_bytes": os.path.getsize(model), **stats})
            print(f"{Path(model).name}: {stats}", file=sys.stderr)
    report = {"run": args.run, "images": len(images), "threshold": args.threshold,
              "score_margin": args.score_margin, "seconds": time.time() - started, "models": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    lines = [f"# fpn-edge detect vs keras-fpn predict ({len(images)} images, score >= {args.threshold})", "",
             f"Run: `{args.run}`. Reference: the float Keras model (`keras-fpn predict`, TF decode + NMS). "
             "Each reference detection is paired with the same-class edge detection with the closest box "
             f"(max abs coordinate difference, original-image px). Detections within {args.score_margin} of the "
             "threshold are not counted as unmatched.", "",
             "| model | detections predict / edge | unmatched predict / edge | box diff max / mean (px) | "
             "score diff max | within 1 px and 0.01 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['model']).name} | {r['reference']} / {r['other']} | {r['unmatched_reference']} / "
                     f"{r['unmatched_other']} | {r['box_px_max']:.3f} / {r['box_px_mean']:.3f} | "
                     f"{r['score_max']:.4f} | {'yes' if r['within_1px_0.01'] else 'no'} |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
