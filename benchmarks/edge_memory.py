"""Does fpn_edge leak? Run 10,000 consecutive ``Detector.detect`` calls and watch the RSS.

    python benchmarks/edge_memory.py [MODEL.tflite] [--runs 10000] [--threshold-mb 5]

One ``fpn_edge.Detector`` runs ``--runs`` inferences back to back on real raccoon images
(cycled; ``--input array``: decoded once, what a camera loop passes; ``--input path``: decoded
by ``detect`` every time). ``VmRSS`` is read from ``/proc/self/status`` before loading, after
loading and every ``--sample-every`` runs. Growth = last sample - the sample after ``--warmup``
runs (allocator pools, XNNPACK packing and first-call caches settle in the warmup). Writes
``STEM.json`` + ``STEM.md`` (default ``benchmarks/results/edge_memory``) atomically and exits 1
when the growth exceeds ``--threshold-mb`` (MiB), 2 on bad arguments.

Without MODEL, a small int8 detector (MobileNetV2 0.35, 160 px, random FPN/heads with BN
statistics from real images, score threshold 0.001 so every run returns ~100 detections and
the whole output path is exercised) is exported first, in a child process: this process never
imports TensorFlow (checked and recorded), so its RSS is the edge runtime's.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info, machine_line  # noqa: E402
from fpn_edge.machine import loadavg, peak_rss_mb, rss_mb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMALL_PRESET = "retinanet_mobilenetv2_fpn"
SMALL_OVERRIDES = {"image_size": [160, 160], "backbone": {"alpha": 0.35}, "neck": {"width": 32},
                   "head": {"width": 32, "depth": 2},
                   "postprocess": {"score_threshold": 0.001, "max_detections": 100, "max_detections_per_class": 100}}


def export_small_model(out, mode: str = "int8", data_root: str | None = None) -> Path:
    """Export the small default detector (see the module doc); imports TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras_fpn  # noqa: F401
    from keras_fpn.config import config_from_dict, config_to_dict, deep_merge
    from keras_fpn.models.factory import build_model

    from benchmarks.suite import backbone_weights_file, calibrate_bn, export_variant, load_data, settings, suite_config

    s = settings(True, data_root=data_root, calibration_images=16)
    cfg, _ = suite_config(SMALL_PRESET, s)
    weights = backbone_weights_file(s.data_root, "mobilenetv2", SMALL_OVERRIDES["backbone"]["alpha"])
    raw = config_to_dict(cfg)
    raw["model"] = deep_merge(raw["model"], deep_merge(SMALL_OVERRIDES, {"backbone": {"weights": weights}}))
    cfg, train_set, _, labels = load_data(config_from_dict(raw))
    model = build_model(cfg.model)
    calibrate_bn(model, cfg, train_set, batches=2)
    return Path(export_variant(model, cfg, labels, mode, Path(out))["file"])


def _export_in_child(out: Path, mode: str, data_root: str | None) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--export-small", str(out), "--mode", mode]
    if data_root:
        cmd += ["--data", data_root]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"exporting the small model failed (exit {proc.returncode}): {tail}")


def _images(data_root: str, n: int) -> list:
    """Paths of ``n`` real raccoon images (sorted, fixed)."""
    folder = Path(data_root) / "raccoon" / "images"
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if not paths:
        raise FileNotFoundError(f"{folder}: no images (set KERAS_FPN_DATA or --data)")
    return paths


def memory_run(model, *, runs: int, sample_every: int, warmup: int, threads: int | None, images: list,
               input_kind: str, log=print) -> dict:
    """The measurement: ``runs`` detections, RSS sampled every ``sample_every`` runs."""
    from fpn_edge import Detector

    rss_start = rss_mb()
    det = Detector.from_file(model, threads=threads)
    inputs = [det.load(p) for p in images] if input_kind == "array" else [str(p) for p in images]
    samples = [{"run": 0, "rss_mb": rss_mb(), "block_ms_mean": None, "detections": None}]
    cycle = itertools.cycle(inputs)
    t_block = time.perf_counter()
    n_det = 0
    for i in range(1, runs + 1):
        n_det = len(det.detect(next(cycle)))
        if i % sample_every == 0 or i == runs or i == warmup:
            now = time.perf_counter()
            done = i - samples[-1]["run"]
            samples.append({"run": i, "rss_mb": rss_mb(), "block_ms_mean": (now - t_block) * 1e3 / done,
                            "detections": n_det})
            if i % sample_every == 0 or i == runs:
                log(f"  run {i:6d}: RSS {samples[-1]['rss_mb']:.1f} MiB, {samples[-1]['block_ms_mean']:.1f} ms/run, "
                    f"{n_det} detections")
            t_block = now
    after = next(s for s in samples if s["run"] >= warmup)
    growth = samples[-1]["rss_mb"] - after["rss_mb"]
    return {"model": str(model), "model_size_bytes": Path(model).stat().st_size,
            "delegate": det.delegate, "backend": det.backend, "threads": threads, "runs": runs,
            "sample_every": sample_every, "warmup": warmup, "input": input_kind,
            "images": [str(p) for p in images],
            "rss_mb": {"before_load": rss_start, "after_load": samples[0]["rss_mb"],
                       "after_warmup": after["rss_mb"], "last": samples[-1]["rss_mb"],
                       "max_sample": max(s["rss_mb"] for s in samples), "peak_hwm": peak_rss_mb()},
            "growth_mb": growth, "samples": samples}


def render(r: dict) -> str:
    m = r["rss_mb"]
    verdict = "PASS" if r["passed"] else "FAIL"
    lines = [f"# fpn_edge memory over {r['runs']:,} consecutive inferences", "",
             f"**{verdict}**: RSS growth after warmup = **{r['growth_mb']:+.2f} MiB** "
             f"(last sample - sample after {r['warmup']} runs; threshold {r['threshold_mb']:g} MiB).", "",
             f"- Model: `{r['model']}` ({r['model_size_bytes'] / 1e6:.2f} MB, {r.get('model_note', 'given')})",
             f"- Runtime: {r['backend']}, {r['delegate']}; input: {r['input']} "
             f"({len(r['images'])} raccoon images cycled)",
             f"- Machine: {r['machine_line']}; load average {r['loadavg_start']} -> {r['loadavg_end']}",
             f"- TensorFlow imported in this process: {r['tensorflow_imported']}",
             f"- RSS (MiB): before load {m['before_load']:.1f}, after load {m['after_load']:.1f}, "
             f"after warmup {m['after_warmup']:.1f}, last {m['last']:.1f}, max sample {m['max_sample']:.1f}, "
             f"peak (VmHWM) {m['peak_hwm']:.1f}",
             f"- Took {r['seconds']:.0f} s; `{' '.join(r['command'])}`", "",
             "| run | RSS (MiB) | vs after warmup (MiB) | mean ms/run since previous sample | detections |",
             "|---|---|---|---|---|"]
    for s in r["samples"]:
        lines.append(f"| {s['run']} | {s['rss_mb']:.1f} | {s['rss_mb'] - m['after_warmup']:+.2f} | "
                     + ("—" if s["block_ms_mean"] is None else f"{s['block_ms_mean']:.1f}")
                     + f" | {'—' if s['detections'] is None else s['detections']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="benchmarks/edge_memory.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help=".tflite with keras-fpn metadata (default: export a small int8 model)")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--sample-every", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=None, help="runs before the reference sample (default --sample-every, at most half the runs)")
    ap.add_argument("--threshold-mb", type=float, default=5.0, help="max allowed growth, MiB (default 5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input", choices=("array", "path"), default="array",
                    help="pass decoded arrays (default) or file paths (decode every run)")
    ap.add_argument("--images", type=int, default=8, help="number of raccoon images to cycle (default 8)")
    ap.add_argument("--mode", default="int8", help="mode of the default small model (default int8)")
    ap.add_argument("--data", default=None, help="data root holding raccoon/ (default $KERAS_FPN_DATA)")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/edge_memory)")
    ap.add_argument("--keep-model", default=None, help="save the default small model here")
    ap.add_argument("--export-small", default=None, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(args.sample_every, args.runs // 2)
    if args.runs < 1 or args.sample_every < 1 or not 0 <= args.warmup < args.runs or args.images < 1:
        ap.error("need runs >= 1, sample-every >= 1, 0 <= warmup < runs, images >= 1")
    return args


def _data_root(arg: str | None) -> str:
    if arg:
        return arg
    if "KERAS_FPN_DATA" in os.environ:
        return os.environ["KERAS_FPN_DATA"]
    return str(Path(__file__).resolve().parents[2] / "shared" / "data")  # keras_fpn.config's default


def main(argv=None) -> int:
    args = parse_args(argv)
    data_root = _data_root(args.data)
    if args.export_small:
        export_small_model(args.export_small, args.mode, data_root)
        return 0
    from benchmarks.report import write_json_md

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    load0 = loadavg()
    tmp = None
    note = "given"
    try:
        if args.model:
            model = Path(args.model)
            if not model.is_file():
                print(f"error: {model}: not found", file=sys.stderr)
                return 2
        else:
            model = Path(args.keep_model) if args.keep_model else \
                Path(tempfile.mkdtemp(prefix="fpn_edge_mem_")) / f"small_{args.mode}.tflite"
            tmp = None if args.keep_model else model.parent
            log(f"exporting the small {args.mode} model -> {model} (child process)")
            _export_in_child(model, args.mode, args.data)
            note = f"default small model: MobileNetV2 0.35 160 px, width 32, {args.mode}"
        log(f"{args.runs} runs of {model}, RSS every {args.sample_every}")
        res = memory_run(model, runs=args.runs, sample_every=args.sample_every, warmup=args.warmup,
                         threads=args.threads, images=_images(data_root, args.images), input_kind=args.input,
                         log=log)
    finally:
        if tmp is not None:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    res.update({"model_note": note, "threshold_mb": args.threshold_mb,
                "passed": res["growth_mb"] <= args.threshold_mb,
                "tensorflow_imported": "tensorflow" in sys.modules, "machine": machine_info(),
                "loadavg_start": load0, "loadavg_end": loadavg(), "seconds": time.perf_counter() - t0,
                "command": [Path(sys.executable).name] + sys.argv,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    res["machine_line"] = machine_line(res["machine"])
    md, js = write_json_md(args.out or RESULTS / "edge_memory", res, render(res))
    log(f"growth {res['growth_mb']:+.2f} MiB (threshold {args.threshold_mb:g}): "
        f"{'PASS' if res['passed'] else 'FAIL'} -> {md}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
