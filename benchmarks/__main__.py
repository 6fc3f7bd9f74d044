"""``python -m benchmarks``: the keras-fpn performance suite (run from the repository root).

    python -m benchmarks --quick                      # a few min: retinanet_mobilenetv2_fpn, fp32 + int8
    python -m benchmarks                              # every preset, fp32/fp16/dynamic/int8/int16x8
    python -m benchmarks --presets ssd_mobilenetv2_fpnlite --threads 1,2,4 --out /tmp/ssd

Writes ``STEM.md`` and ``STEM.json`` (default ``benchmarks/results/suite``, quick mode
``benchmarks/results/suite_quick`` so a quick check never overwrites a full run), atomically,
after every measurement: a killed run leaves its finished parts. Exits 1 when a part failed
(the error is in the results), 2 on bad arguments. See ``benchmarks/suite.py`` for what each
part measures and ``benchmarks/README.md`` for runtimes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _csv(kind):
    def parse(text: str):
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return tuple(kind(v) for v in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad value in {text!r}") from None
    return parse


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="retinanet_mobilenetv2_fpn only, 2+3 fit steps, fp32 + int8, short latency runs")
    ap.add_argument("--out", default=None,
                    help="output stem: writes STEM.md + STEM.json (default benchmarks/results/suite, "
                         "or suite_quick with --quick)")
    ap.add_argument("--presets", type=_csv(str), default=None, help="comma-separated presets (default: all)")
    ap.add_argument("--modes", type=_csv(str), default=None,
                    help="comma-separated export modes (default fp32,fp16,dynamic,int8,int16x8; quick fp32,int8)")
    ap.add_argument("--threads", type=_csv(int), default=None,
                    help="TFLite thread counts for fpn_edge latency (default 1,2)")
    ap.add_argument("--steps", type=int, default=None, help="timed fit steps (default 30, quick 3)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="untimed fit steps (default 10, quick 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default 16)")
    ap.add_argument("--image-size", type=int, default=None, help="input size, px (default 320)")
    ap.add_argument("--data", default=None, help="data root holding raccoon/ and weights/ (default $KERAS_FPN_DATA)")
    ap.add_argument("--work-dir", default=None, help="keep the exported .tflite files here (default: a temp dir)")
    ap.add_argument("--tf-threads", type=int, default=None,
                    help="TensorFlow intra-op threads for training / Keras latency (default: TF's choice)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras_fpn  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
    from fpn_export.modes import MODES
    from keras_fpn.models.presets import PRESETS

    from benchmarks.machine import machine_info
    from benchmarks.report import output_paths, render_suite, write_json_md
    from benchmarks.suite import count_errors, run_suite, settings

    bad = [p for p in args.presets or () if p not in PRESETS]
    bad += [m for m in args.modes or () if m not in MODES or m in ("qat-int8", "edgetpu")]
    bad += [str(t) for t in args.threads or () if t < 1]
    if bad:
        print(f"error: unknown/unsupported value(s) {', '.join(bad)} (presets: {', '.join(PRESETS)}; "
              "modes: fp32, fp16, dynamic, int8, int16x8; threads >= 1)", file=sys.stderr)
        return 2
    s = settings(args.quick, presets=args.presets, modes=args.modes, threads=args.threads, steps=args.steps,
                 warmup_steps=args.warmup_steps, batch_size=args.batch_size, image_size=args.image_size,
                 data_root=args.data)
    if s.steps < 1 or s.warmup_steps < 0 or s.batch_size < 1:
        print("error: need --steps >= 1, --warmup-steps >= 0, --batch-size >= 1", file=sys.stderr)
        return 2
    if s.image_size % 32:
        print(f"error: --image-size {s.image_size} must be divisible by 32", file=sys.stderr)
        return 2
    if not (Path(s.data_root) / "raccoon").is_dir():
        print(f"error: {s.data_root}/raccoon not found (set KERAS_FPN_DATA or --data)", file=sys.stderr)
        return 2
    if args.tf_threads:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.tf_threads)
    out = args.out or str(RESULTS / ("suite_quick" if s.quick else "suite"))
    md, js = output_paths(out)
    machine = machine_info()
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    log(f"suite ({'quick' if s.quick else 'full'}): presets {', '.join(s.presets)}; modes {', '.join(s.modes)}; "
        f"threads {s.threads}; -> {md}, {js}")
    save = lambda results: write_json_md(out, results, render_suite(results))  # noqa: E731

    keep = args.work_dir is not None
    work = Path(args.work_dir) if keep else Path(tempfile.mkdtemp(prefix="fpn_suite_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = run_suite(s, work_dir=work, machine=machine, save=save, log=log)
    finally:
        if not keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    errors = count_errors(results)
    log(f"done in {results['seconds'] / 60:.1f} min, {errors} failed part(s): {md}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
