"""``keras-fpn data`` subcommands: convert, stats, preview, synthetic.

``add_data_commands(subparsers)`` registers them on the top-level parser;
each subparser sets ``func`` to a ``run_*(args) -> int`` exit-code function,
and each ``run_*`` wraps a plain library function that tests call directly.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from fpn_edge.argtypes import nonneg_int, positive_float, positive_int
from fpn_edge.atomic import check_writable
from fpn_edge.preprocess import RESIZE_MODES
from keras_fpn.data.issues import BAD_ACTIONS
from keras_fpn.data.formats import FORMATS, read_dataset
from keras_fpn.data.images import DataError


def _ensure_logging() -> None:
    log = logging.getLogger("keras_fpn.data")
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _image_size(text: str):
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}") from None
    if len(vals) not in (1, 2) or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW (positive), got {text!r}")
    return (vals[0], vals[-1])


def _level(text: str) -> int:
    value = nonneg_int(text)
    if not 2 <= value <= 7:
        raise argparse.ArgumentTypeError(f"pyramid levels are 2..7, got {value}")
    return value


def _read(args):
    return read_dataset(args.dataset, format=args.format, strict=args.strict)


def convert_dataset(src, out, *, to: str = "coco", format=None, strict: bool = False,
                    verify: bool = False) -> dict:
    """Read any supported dataset and write it as COCO JSON (atomically).

    Args:
        src: Dataset path or spec (see ``read_dataset``).
        out: Output .json path.
        to: Target format; only "coco".
        format: Force the source format.
        strict: Stop at the first bad item.
        verify: Decode every image fully and drop undecodable ones (slow).

    Returns:
        {"out", "images", "boxes", "crowd", "skipped" (bad items skipped, dropped or
        clipped), "repaired" (e.g. sizes read from the image)}.
    """
    if to != "coco":
        raise DataError(f"{out}: can only convert to coco, not {to!r}")
    ds = read_dataset(src, format=format, strict=strict)
    refuse_input_as_output(out, src, ds)
    if verify:
        from keras_fpn.data.dataset import verify_images
        ds = verify_images(ds, strict=strict)
    path = ds.write_coco(out)
    bad = sum(i.action in BAD_ACTIONS for i in ds.issues)
    return {"out": path, "images": ds.num_images, "boxes": ds.num_boxes, "crowd": ds.num_crowd,
            "skipped": bad, "repaired": len(ds.issues) - bad}


def refuse_input_as_output(out, src, dataset) -> None:
    """Raise DataError when ``out`` is a file the dataset was read from: the source file (a COCO JSON,
    a TFRecord), one of its images, or an annotation file (``.xml``, ``.txt``) in a source folder."""
    import os

    out = os.path.abspath(os.fspath(out))
    if not os.path.exists(out):
        return
    src_path = os.fspath(src).split(":", 1)[1] if os.fspath(src).split(":", 1)[0] in FORMATS else os.fspath(src)
    inputs = [src_path] + [r.image_path for r in dataset.records]
    if any(os.path.isfile(p) and os.path.samefile(p, out) for p in inputs):
        raise DataError(f"{out}: is an input of the dataset {src}; write the output to another file")
    if os.path.isdir(src_path) and out.lower().endswith((".xml", ".txt")) and \
            os.path.commonpath([os.path.abspath(src_path), out]) == os.path.abspath(src_path):
        raise DataError(f"{out}: is an annotation file of the dataset {src}; write the output to another file")


def run_convert(args) -> int:
    """``data convert``: print a one-line summary."""
    check_writable(args.out)
    _ensure_logging()
    r = convert_dataset(args.src, args.out, to=args.to, format=args.format, strict=args.strict,
                        verify=args.verify)
    print(f"wrote {r['out']}: {r['images']} images, {r['boxes']} boxes, {r['crowd']} crowd; "
          f"{r['skipped']} bad items skipped/dropped/clipped (see warnings), {r['repaired']} repaired")
    return 0


def run_stats(args) -> int:
    """``data stats``: print the report (or JSON with --json)."""
    from keras_fpn.data.stats import compute_stats, format_stats

    if args.min_level > args.max_level:
        raise DataError(f"--min-level {args.min_level} is above --max-level {args.max_level}")
    _ensure_logging()
    stats = compute_stats(_read(args), args.image_size, args.min_level, args.max_level,
                          args.anchor_scale)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0


def run_preview(args) -> int:
    """``data preview``: write the PNG grid."""
    from keras_fpn.data.preview import render_preview

    check_writable(args.out)
    _ensure_logging()
    dataset = _read(args)
    refuse_input_as_output(args.out, args.dataset, dataset)
    path = render_preview(dataset, args.out, num=args.num, augmented=args.augmented,
                          image_size=args.image_size, seed=args.seed, resize=args.resize)
    print(f"wrote {path}")
    return 0


def run_synthetic(args) -> int:
    """``data synthetic``: generate the synthetic COCO dataset."""
    from keras_fpn.data.synthetic import generate_synthetic_coco

    check_writable(args.out_dir, folder=True)
    _ensure_logging()
    r = generate_synthetic_coco(args.out_dir, num_train=args.num_train, num_val=args.num_val,
                                image_size=args.image_size, seed=args.seed,
                                masks=not args.no_masks, workers=args.workers, style=args.style)
    print(f"wrote {r['train']} and {r['val']} in {r['seconds']:.1f} s")
    return 0


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``data convert|stats|preview|synthetic`` on an argparse subparsers object.

    Args:
        subparsers: The object returned by ``parser.add_subparsers()``.

    Returns:
        The ``data`` parser.
    """
    data = subparsers.add_parser("data", help="dataset tools: convert, stats, preview, synthetic")
    sub = data.add_subparsers(dest="data_command", metavar="{convert,stats,preview,synthetic}")
    sub.required = True

    def common(p, src="dataset"):
        p.add_argument(src, help="COCO .json, VOC folder, YOLO folder (images/ + labels/) or .tfrecord")
        p.add_argument("--format", choices=FORMATS, default=None, help="force the input format")
        p.add_argument("--strict", action="store_true",
                       help="stop at the first bad item instead of skipping it with a warning")

    p = sub.add_parser("convert", help="write any dataset as COCO JSON")
    common(p, "src")
    p.add_argument("--to", choices=["coco"], default="coco")
    p.add_argument("--out", required=True, help="output .json file")
    p.add_argument("--verify", action="store_true",
                   help="decode every image (finds truncated files; slow on big datasets)")
    p.set_defaults(func=run_convert)

    p = sub.add_parser("stats", help="counts, COCO size bins, pyramid levels")
    common(p)
    p.add_argument("--image-size", type=_image_size, default=(320, 320), help="N or HxW")
    p.add_argument("--min-level", type=_level, default=3)
    p.add_argument("--max-level", type=_level, default=7)
    p.add_argument("--anchor-scale", type=positive_float, default=4.0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_stats)

    p = sub.add_parser("preview", help="PNG grid of images with boxes and labels")
    common(p)
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--augmented", action="store_true", help="apply training augmentation")
    p.add_argument("--num", type=positive_int, default=16)
    p.add_argument("--image-size", type=_image_size, default=(320, 320), help="N or HxW")
    p.add_argument("--resize", choices=RESIZE_MODES, default=RESIZE_MODES[0],
                   help="the model's model.resize (default letterbox)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_preview)

    p = sub.add_parser("synthetic", help="generate the synthetic shapes COCO dataset")
    p.add_argument("out_dir")
    p.add_argument("--num-train", type=positive_int, default=2000)
    p.add_argument("--num-val", type=nonneg_int, default=200)
    p.add_argument("--image-size", type=positive_int, default=320)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--no-masks", action="store_true")
    p.add_argument("--workers", type=positive_int, default=None)
    p.add_argument("--style", choices=("cluttered", "clean"), default="cluttered",
                   help="cluttered: textured background, sizes scale with --image-size (default); "
                        "clean: smooth background, small objects >= 12 px at any size (the demo's)")
    p.set_defaults(func=run_synthetic)
    return data


def main(argv=None) -> int:
    """Stand-alone entry (``python -m keras_fpn.data.cli stats ...``); DataError -> exit 2."""
    parser = argparse.ArgumentParser(prog="keras-fpn")
    add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
