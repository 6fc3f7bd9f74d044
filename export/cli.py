"""``keras-fpn export``: the command-line front of ``fpn_export.convert.export_model``.

Wire it into the ``keras-fpn`` parser with ``add_export_command(subparsers)``;
the subcommand stores its handler as ``args.func`` (returns an exit code).
``python -m fpn_export.cli export RUN --mode int8`` runs it standalone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from fpn_edge.argtypes import fraction, nonneg_int, positive_int

__all__ = ["add_export_command", "run_export", "main"]

def add_export_command(subparsers) -> argparse.ArgumentParser:
    """Register ``export RUN --mode MODE [...]`` on an ``argparse`` subparsers object."""
    from fpn_export.modes import MODES, mode_help

    p = subparsers.add_parser(
        "export", help=f"export a trained run to TFLite ({', '.join(MODES)})",
        description="Convert a run's checkpoint to a self-describing .tflite (labels, normalization, "
                    "box coder and NMS settings inside). Default output: RUN/model_<mode>.tflite.")
    p.add_argument("run", help="run directory written by `keras-fpn train`")
    p.add_argument("--mode", required=True, choices=tuple(MODES), help=f"conversion mode ({mode_help()})")
    p.add_argument("--out", help="output .tflite path (default RUN/model_<mode>[_pruneNN][_raw].tflite)")
    p.add_argument("--raw", action="store_true",
                   help="export raw box_deltas/class_logits instead of the TFLite_Detection_PostProcess op")
    p.add_argument("--prune", type=fraction, metavar="SPARSITY",
                   help="magnitude-prune to this sparsity (0..1) with tfmot while fine-tuning "
                        "(export.qat_steps steps); combinable with every mode, qat-int8 included")
    p.add_argument("--report", action="store_true",
                   help="write the Edge TPU op report next to the model (always on for --mode edgetpu)")
    p.add_argument("--debug", action="store_true",
                   help="run TF's QuantizationDebugger (integer modes) and write per-layer error stats")
    p.add_argument("--keep-float", type=nonneg_int, default=0, metavar="N",
                   help="with --debug: keep the N layers with the largest quantization error in float")
    p.add_argument("--max-ap-drop", type=float, metavar="PCT",
                   help="with --mode int8 (or int8-budget): keep the most quantization-sensitive layers float "
                        "until the AP drop vs the fp32 TFLite, on a calibration-validation split of the training "
                        "images, is at most PCT percent of it (int8-budget default 1.0); writes "
                        "RUN/model_int8-budget.tflite and its search log <stem>_budget.json")
    p.add_argument("--max-float", type=positive_int, metavar="N",
                   help="with --max-ap-drop: the most layers the search keeps float (default 32)")
    p.add_argument("--representative", type=positive_int, metavar="N",
                   help="number of calibration images from the training set "
                        "(default: export.representative_images of the run's config)")
    p.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint to export")
    p.add_argument("--via", default="tf_keras", choices=("tf_keras", "keras"),
                   help="convert the tf_keras twin (default: RESIZE_NEAREST_NEIGHBOR upsampling) "
                        "or the Keras 3 model as is (TILE-based upsampling)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="export.KEY=VALUE",
                   help="override an export setting of the run's config, e.g. export.int8_io=int8, "
                        "export.qat_steps=500 (repeatable)")
    p.set_defaults(func=run_export)
    return p


def _apply_overrides(run, overrides):
    from keras_fpn.config import ConfigError, config_from_dict, config_to_dict

    bad = [o for o in overrides if not o.startswith("export.")]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: only export.* settings can be changed at export time")
    cfg = config_from_dict(config_to_dict(run.config), overrides)
    cfg = dataclasses.replace(run.config, export=cfg.export)
    return dataclasses.replace(run, config=cfg)


def run_export(args) -> int:
    """Handler of ``keras-fpn export``; prints the written path and op summary, returns an exit code."""
    from fpn_edge.atomic import check_writable
    from fpn_edge.errors import EdgeError
    from fpn_export.convert import default_output_path, export_model
    from fpn_export.edgetpu import check_edgetpu
    from fpn_export.errors import ExportError
    from fpn_export.flatbuffer import op_counts
    from fpn_export.modes import MODES
    from keras_fpn.config import ConfigError
    from keras_fpn.rundir import RunDirError, open_run

    if args.max_ap_drop is not None and args.mode == "int8":
        args.mode = "int8-budget"   # --mode int8 --max-ap-drop X is the accuracy-budget export
    try:
        if (args.max_ap_drop is not None or args.max_float is not None) and not MODES[args.mode].budget:
            raise ExportError(f"--max-ap-drop / --max-float need --mode int8 (or int8-budget), not {args.mode!r}")
        run = open_run(args.run)
        if args.overrides:
            run = _apply_overrides(run, args.overrides)
        check_writable(args.out or default_output_path(run.path, args.mode, args.raw, args.prune))
        path = export_model(run, args.mode, out=args.out, raw=args.raw, prune=args.prune,
                            representative=args.representative, report=args.report,
                            debug=args.debug, keep_float=args.keep_float, which=args.which, via=args.via,
                            max_ap_drop=args.max_ap_drop, max_float=args.max_float)
    except (ExportError, RunDirError, ConfigError, EdgeError, OSError, ValueError) as exc:
        from keras_fpn.cli import error_line

        print(f"keras-fpn export: error: {error_line(exc)}", file=sys.stderr)
        return 2
    counts = op_counts(path)
    from fpn_edge.metadata import read_metadata

    output = read_metadata(path)[0]["output"]   # postprocess | raw | logits
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, mode {args.mode}, outputs: {output})")
    print("ops: " + json.dumps(counts))
    if args.report or MODES[args.mode].edgetpu:
        rep = check_edgetpu(path)
        print(f"Edge TPU: {rep.num_edgetpu}/{len(rep.ops)} ops mappable; "
              f"{'clean (CPU tail only)' if rep.clean else 'NOT clean'}; report: "
              f"{path.with_name(path.stem + '_edgetpu_report')}.md")
        print(rep.note)
    quant = read_metadata(path)[0].get("quantization")
    if quant and quant.get("budget"):
        print(f"accuracy budget: {quant['budget']['verdict']}; {quant['note']}; "
              f"log: {path.with_name(path.stem + '_budget.json')}")
    if args.debug:
        print(f"quantization debug stats: {path.with_name(path.stem + '_debug')}/layer_stats.csv")
    return 0


def main(argv=None) -> int:
    """Standalone entry: ``python -m fpn_export.cli export RUN --mode MODE``."""
    parser = argparse.ArgumentParser(prog="fpn-export")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
