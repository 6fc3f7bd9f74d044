"""How many calibration images does int8 need, and from where? (``export.representative_images``)

    export KERAS_FPN_DATA=/work/shared/data
    python benchmarks/calibration.py RUN [RUN ...] --sizes 8,32,128,512 --seeds 0,1 \
        --json benchmarks/results/calibration.json --md benchmarks/results/calibration.md

For each trained detector run: the AP of the float Keras model and of the fp32 .tflite on the
run's validation split, then post-training int8 exports calibrated with N images
(``--sizes``; capped at the split's size) drawn with each seed from

- ``train``: the training split, through the inference preprocessing (what
  ``keras-fpn export --mode int8`` does), and
- ``val``: the validation split itself: calibration on the very images the AP is measured on,
  an optimistic bound that says how much a better-matched calibration set could still give,
  never a recipe (it leaks the evaluation data).

Each int8 model's AP, AP50, AP75 and its ratio to the fp32 .tflite's AP (conversion losses
excluded: fp32 equals float to ~1e-6) go into the JSON and a markdown table per run, with the
spread over seeds. Every export is written into ``--work`` and deleted after it is measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info, machine_line  # noqa: E402


def _images(dataset, n: int, cfg, seed: int) -> list:
    from fpn_export.tflite import input_normalization
    from keras_fpn.data.pipeline import representative_images

    return list(representative_images(dataset, n, tuple(cfg.model.image_size), input_normalization(cfg.model),
                                      seed=seed))


def _ap(path, dataset, cfg) -> dict:
    from keras_fpn.evaluation.detection import coco_evaluate, tflite_results

    results = tflite_results(path, dataset, threads=2, score_threshold=cfg.model.postprocess.score_threshold)
    m = coco_evaluate(dataset, results, per_class=False)
    return {k: float(m[k]) for k in ("AP", "AP50", "AP75")}


def sweep_run(run_dir, *, sizes, seeds, sources, work: Path, log=print) -> dict:
    """The calibration sweep of one run (see module doc)."""
    from fpn_export.convert import export_model
    from keras_fpn.data.splits import load_eval_split, load_split
    from keras_fpn.evaluation.detection import coco_evaluate, predict_dataset
    from keras_fpn.rundir import open_run

    run = open_run(run_dir)
    cfg = run.config
    val = load_eval_split(cfg, None, None, labels=run.labels, where=str(run_dir))
    train = load_split(cfg.data.train, cfg.data.train_include, cfg.data.strict)
    model = run.build_model(which="best", batch_size=1)
    float_ap = coco_evaluate(val, predict_dataset(model, val, cfg.model), per_class=False)
    fp32 = export_model(run.path, "fp32", out=work / "fp32.tflite", config=cfg, labels=run.labels)
    ref = _ap(fp32, val, cfg)
    log(f"{run_dir}: float AP {float_ap['AP']:.3f}, fp32 .tflite AP {ref['AP']:.3f} "
        f"({len(train)} train / {len(val)} val images)")
    rows = []
    for source in sources:
        pool = train if source == "train" else val
        for n in sizes:
            n_used = min(n, len(pool))
            if rows and any(r["source"] == source and r["images"] == n_used for r in rows):
                continue  # capped to the same count as a smaller size: the same sets
            for seed in seeds:
                t0 = time.time()
                images = _images(pool, n_used, cfg, seed)
                out = work / f"int8_{source}_{n_used}_{seed}.tflite"
                export_model(run.path, "int8", out=out, representative=lambda images=images: iter(images),
                             config=cfg, labels=run.labels)
                ap = _ap(out, val, cfg)
                out.unlink(missing_ok=True)
                row = {"source": source, "images": n_used, "seed": seed, **ap,
                       "AP_ratio": ap["AP"] / ref["AP"] if ref["AP"] > 0 else None, "seconds": time.time() - t0}
                rows.append(row)
                log(f"  {source:5s} N={n_used:4d} seed {seed}: AP {ap['AP']:.3f} AP75 {ap['AP75']:.3f} "
                    f"({100 * row['AP_ratio']:.1f} % of fp32) in {row['seconds']:.0f} s")
    return {"run": str(run_dir), "config": cfg.model.preset, "train_images": len(train), "val_images": len(val),
            "float": {k: float(float_ap[k]) for k in ("AP", "AP50", "AP75")}, "fp32": ref, "int8": rows}


def markdown(results: list, machine: str) -> str:
    lines = ["# int8 calibration: how many images, from where", "",
             "`python benchmarks/calibration.py` (module docstring: method). AP on each run's validation split "
             "through fpn_edge (2 threads); ratio = int8 AP / fp32 .tflite AP; mean +- spread (max - min) over "
             "the seeds (different draws of the N images).", "", f"Machine: {machine}", ""]
    for res in results:
        lines += [f"## {res['run']} ({res['config']}; {res['train_images']} train / {res['val_images']} val images)",
                  "", f"float AP {res['float']['AP']:.3f} (AP75 {res['float']['AP75']:.3f}); fp32 .tflite AP "
                  f"{res['fp32']['AP']:.3f} (AP75 {res['fp32']['AP75']:.3f})", "",
                  "| source | images | seeds | int8 AP | AP vs fp32 | AP75 | AP50 |", "|---|---|---|---|---|---|---|"]
        groups: dict = {}
        for r in res["int8"]:
            groups.setdefault((r["source"], r["images"]), []).append(r)
        for (source, n), rs in groups.items():
            def cell(key, pct=False):
                v = np.array([r[key] for r in rs], float) * (100 if pct else 1)
                spec = ".1f" if pct else ".3f"
                return f"{v.mean():{spec}}{' %' if pct else ''} +- {v.max() - v.min():{spec}}"
            lines.append(f"| {source} | {n} | {len(rs)} | {cell('AP')} | {cell('AP_ratio', True)} | "
                         f"{cell('AP75')} | {cell('AP50')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="trained detector run directories")
    p.add_argument("--sizes", default="8,32,128,512", help="calibration set sizes")
    p.add_argument("--seeds", default="0,1", help="draws per size")
    p.add_argument("--sources", default="train,val", help="train and/or val")
    p.add_argument("--work", help="folder for the exports (default: a temporary one)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the markdown table here")
    args = p.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    sources = [s for s in args.sources.split(",") if s]
    if set(sources) - {"train", "val"}:
        p.error(f"--sources: train and/or val, got {args.sources}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [sweep_run(r, sizes=sizes, seeds=seeds, sources=sources, work=work) for r in args.runs]
    info = machine_info()
    machine = machine_line(info)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "runs": results}, indent=2))
    text = markdown(results, machine)
    if args.md:
        Path(args.md).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
