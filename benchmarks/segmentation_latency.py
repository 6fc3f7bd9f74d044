"""Latency of the exported segmenters with fpn_edge.bench, interleaved rounds (shared CPU: take the best round).

    python benchmarks/segmentation_latency.py RUN [RUN...] --out benchmarks/results/segmentation_latency.json
"""
import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from fpn_edge.bench import benchmark
    from keras_fpn.rundir import open_run
    from keras_fpn.data.splits import load_datasets

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="run dirs holding model_<mode>.tflite (the first gives the image)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", nargs="+", default=["fp32", "int8", "qat-int8"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=100, help="timed runs per benchmark")
    args = ap.parse_args(argv)
    _, val = load_datasets(open_run(args.runs[0]).config)
    image = val.records[3].image_path
    res = {}
    for rnd in range(args.rounds):
        for threads in (1, 2):
            for img_name, img in (("val_128x128", image), ("random_640x480", None)):
                for run_dir, mode in ((d, m) for d in args.runs for m in args.modes):
                    path = Path(run_dir) / f"model_{mode}.tflite"
                    if not path.is_file():
                        continue
                    b = benchmark(path, threads=threads, runs=args.repeats, warmup=10, image=img)
                    key = f"{Path(run_dir).name}/{mode}/threads{threads}/{img_name}"
                    lat = {k: round(v["p50"], 3) for k, v in b["latency_ms"].items()}
                    best = res.setdefault(key, {"rounds": []})
                    best["rounds"].append(lat)
                    best["best_p50"] = {k: min(x[k] for x in best["rounds"]) for k in lat}
                    res["_cpu"] = b["cpu"]
        print(f"round {rnd + 1} done", flush=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        if not k.startswith("_"):
            print(k, v["best_p50"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
