"""``keras-fpn``: data checks, train, evaluate, predict, export, compare, demo, info.

Each subcommand lives in its own module; this file only wires argparse. User
errors (bad config, missing files, bad data) print one line and exit with 2.
"""
from __future__ import annotations

import argparse
import sys

import keras_fpn  # sets KERAS_BACKEND before anything imports Keras


def _cmd_info(args) -> int:
    """Build a preset (random init, no download) and print its pyramid."""
    from keras_fpn.config import config_from_dict
    from keras_fpn.models.factory import build_model

    cfg = config_from_dict({"model": {"preset": args.preset, "num_classes": args.num_classes,
                                      "backbone": {"weights": None},
                                      **({"image_size": args.image_size} if args.image_size else {})}})
    model = build_model(cfg.model)
    print(f"{args.preset}: input {cfg.model.image_size[0]}x{cfg.model.image_size[1]}, "
          f"{cfg.model.num_classes} classes, {model.count_params():,} parameters")
    for level in cfg.model.head_levels:
        name = f"fpn_output_P{level}" if level <= 5 else f"fpn_extra_P{level}"
        shape = model.get_layer(name).output.shape
        print(f"  P{level}: stride {2 ** level:>3}  {shape[1]}x{shape[2]}x{shape[3]}  ({name})")
    for out, tensor in model.output.items():
        print(f"  output {out}: {tuple(tensor.shape)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-fpn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"keras-fpn {keras_fpn.__version__}")
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


def _usage_errors_one_line(parser: argparse.ArgumentParser) -> None:
    """A bad argument is one line ``PROG: error: ...`` (exit 2), on every subcommand's parser too."""
    def error(message, parser=parser):
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _usage_errors_one_line(sub)


def error_line(exc: BaseException) -> str:
    """A user error as one line: an OSError as ``FILE: reason``, any message's line breaks folded."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None) -> int:
    from fpn_edge.errors import EdgeError

    parser = build_parser()
    _usage_errors_one_line(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, EdgeError, *_export_errors()) as exc:
        if getattr(args, "debug_errors", False):
            raise
        verb = " ".join(v for v in (args.command, getattr(args, "data_command", None),
                                    getattr(args, "configs_command", None)) if v)
        print(f"keras-fpn {verb}: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
