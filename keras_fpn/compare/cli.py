"""``keras-fpn compare`` and ``keras-fpn demo``."""
from __future__ import annotations

import argparse

from fpn_edge.argtypes import positive_int


def _modes(text: str) -> tuple:
    """``--modes``: comma-separated export modes, each known, at least one."""
    from fpn_export.errors import ExportError
    from fpn_export.modes import get_mode

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes:
        raise argparse.ArgumentTypeError("no export mode given")
    try:
        for mode in modes:
            get_mode(mode)
    except ExportError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return modes


def _cmd_compare(args) -> int:
    from keras_fpn.compare.report import compare_run, headline_table

    modes = args.modes
    report = compare_run(args.run, modes=modes, data=args.data, include=args.include, threads=args.threads,
                         out=args.out, bench_runs=args.runs, reuse=not args.no_reuse,
                         max_ap_drop=args.max_ap_drop)
    print(headline_table(report))
    return 0


def _cmd_demo(args) -> int:
    from fpn_edge.atomic import check_writable
    from keras_fpn.compare.demo import run_demo

    check_writable(args.out, folder=True)
    run_demo(args.out, fast=args.fast, threads=args.threads)
    return 0


def add_compare_commands(sub) -> None:
    from fpn_export.modes import COMPARE_DEFAULT, MODES

    p = sub.add_parser("compare", help="accuracy, latency and size of the float model vs its quantized exports",
                       description="Export (or reuse) each variant, run it through fpn_edge on the val set, and "
                                   "write report.md / report.json / plots.")
    p.add_argument("run", help="run directory of `keras-fpn train`")
    p.add_argument("--modes", type=_modes, default=COMPARE_DEFAULT,
                   help=f"comma-separated export modes ({', '.join(MODES)})")
    p.add_argument("--data", help="evaluation dataset (default: the run's data.val)")
    p.add_argument("--include", help="only these images (txt list or csv with a filename column); "
                                      "default: data.val_include when comparing on data.val")
    p.add_argument("--threads", type=positive_int, default=2, help="XNNPACK threads (default 2)")
    p.add_argument("--runs", type=positive_int, default=100, help="timed runs per variant (default 100)")
    p.add_argument("--out", help="output folder (default RUN/compare)")
    p.add_argument("--no-reuse", action="store_true", help="re-export even if the .tflite is up to date")
    p.add_argument("--max-ap-drop", type=float, metavar="PCT",
                   help="the int8-budget variant's accuracy budget, percent of the fp32 AP (default 1.0)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("demo", help="end to end offline: synthetic data, train, export, edge runtime, report")
    p.add_argument("--out", default="demo_out", help="output folder (default ./demo_out)")
    p.add_argument("--fast", action="store_true", help="a short version: 400 + 60 images, 100 steps, sanity-level "
                                                          "accuracy (~2 min on 2 CPU cores; the default: ~9 min)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.set_defaults(func=_cmd_demo)
