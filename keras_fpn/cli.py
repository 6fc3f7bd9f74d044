"""``keras-fpn``: data checks, train, evaluate, predict, export, compare, demo, info.

Each subcommand lives in its own module; this file only wires argparse. User
errors (bad config, missing files, bad data) print one line and exit with 2.
"""
from __future__ import annotations

import argparse
import sys

import keras_fpn  # noqa: F401  (sets KERAS_BACKEND before anything imports Keras)


def _cmd_info(args) -> int:
    """Build a preset (random init, no download) and print its pyramid."""
    import keras

    from keras_fpn.config import config_from_dict
    from keras_fpn.models.detector import build_detector

    cfg = config_from_dict({"model": {"preset": args.preset, "num_classes": args.num_classes,
                                      "backbone": {"weights": None},
                                      **({"image_size": args.image_size} if args.image_size else {})}})
    model = build_detector(cfg.model)
    print(f"{args.preset}: input {cfg.model.image_size[0]}x{cfg.model.image_size[1]}, "
          f"{cfg.model.num_classes} classes, {model.count_params():,} parameters")
    for level in cfg.model.head_levels:
        name = f"fpn_output_P{level}" if level <= 5 else f"fpn_extra_P{level}"
        shape = model.get_layer(name).output.shape
        print(f"  P{level}: stride {2 ** level:>3}  {shape[1]}x{shape[2]}x{shape[3]}  ({name})")
    for out in ("box_deltas", "class_logits"):
        print(f"  output {out}: {tuple(model.output[out].shape)}")
    del keras
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-fpn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="build a preset and print its pyramid levels and outputs")
    p.add_argument("--preset", default="retinanet_mobilenetv2_fpn",
                   choices=["retinanet_mobilenetv2_fpn", "ssd_mobilenetv2_fpnlite", "retinanet_resnet50_fpn"])
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.set_defaults(func=_cmd_info)

    for module, adder in (("keras_fpn.config.cli", "add_config_commands"),
                          ("keras_fpn.data.cli", "add_data_commands"),
                          ("keras_fpn.training.cli", "add_training_commands"),
                          ("fpn_export.cli", "add_export_command"),
                          ("keras_fpn.compare.cli", "add_compare_commands")):
        try:
            mod = __import__(module, fromlist=[adder])
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # that part is not installed in this build
            raise
        getattr(mod, adder)(sub)
    return parser


def _export_errors() -> tuple:
    """``fpn_export``'s one-line errors (a RuntimeError subclass), imported only when something failed."""
    try:
        from fpn_export.errors import ExportError
    except ImportError:  # a build without the export part
        return ()
    return (ExportError,)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, *_export_errors()) as exc:
        if getattr(args, "debug_errors", False):
            raise
        print(f"keras-fpn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
