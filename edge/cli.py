"""``fpn-edge``: run keras-fpn TFLite detectors and segmenters without TensorFlow.

Commands::

    fpn-edge detect MODEL.tflite INPUT... --out DIR [--threshold T] [--max-detections N]
                    [--threads N] [--delegate SPEC] [--no-images] [--max-frames N] [--quiet]
    fpn-edge segment MODEL.tflite IMAGE... --out DIR [--alpha A] [--threads N] [--delegate SPEC]
                    [--quiet]
    fpn-edge bench  MODEL.tflite [--threads N] [--runs N] [--warmup N] [--delegate SPEC]
                    [--image PATH] [--json] [--out FILE]
    fpn-edge info   MODEL.tflite [--json]   (both metadata kinds: keras-fpn and standard TFLite)

``detect`` takes image files and directories (and, when OpenCV is installed,
video files and camera indices such as ``0``). It writes ``DIR/detections.json``
(atomically) and an annotated copy of each image in DIR. ``segment`` takes image
files and directories and writes, per image, ``<stem>_overlay.png`` (class
colours blended over the image, with a legend), ``<stem>_mask.png`` (the class
map: a palette PNG whose pixel values are the class ids) and
``DIR/segmentation.json`` (labels, and per image the files and the fraction of
pixels of each class). User errors (a bad argument, model, input or output
path) print one line ``fpn-edge: error: ...`` and exit with status 2; the output
folder (and bench's ``--out``) is checked writable before anything runs. An
input image that cannot be decoded is one error line and an ``errors`` entry in
the JSON, the other inputs go on, and the exit status is 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fpn_edge.argtypes import nonneg_int, positive_int, unit_interval
from fpn_edge.atomic import atomic_path, check_writable, write_json_atomic
from fpn_edge.errors import EdgeError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
PROG = "fpn-edge"


def _log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def _save_image(path: Path, pil_image) -> None:
    """Save a JPEG (quality 92) or, for any other suffix, a PNG, atomically."""
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        pil_image.save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))


def _cv2_or_fail(what: str):
    try:
        import cv2
    except ImportError:
        raise EdgeError(f"{what}: video and camera input need OpenCV: "
                        "pip install opencv-python-headless  (or keras-fpn[video])") from None
    return cv2


def _expand_inputs(inputs: list) -> list:
    """-> [(kind, source)] with kind 'image' | 'video' | 'camera'; directories expanded (sorted)."""
    items = []
    for raw in inputs:
        if raw.isdigit() and not Path(raw).exists():
            items.append(("camera", raw))
            continue
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise EdgeError(f"{p}: no image files in directory ({', '.join(sorted(IMAGE_EXTS))})")
            items.extend(("image", f) for f in files)
        elif not p.exists():
            raise EdgeError(f"{p}: input not found")
        elif p.suffix.lower() in VIDEO_EXTS:
            items.append(("video", p))
        else:
            items.append(("image", p))  # unknown extensions: let Pillow decide
    return items


def _annotated_path(out_dir: Path, src: Path, used: set) -> Path:
    ext = ".jpg" if src.suffix.lower() in (".jpg", ".jpeg") else ".png"
    stem = src.stem
    cand = out_dir / f"{stem}{ext}"
    n = 1
    while cand.resolve() in used or cand.resolve() == src.resolve():
        cand = out_dir / f"{stem}_det{'' if n == 1 else n}{ext}"
        n += 1
    used.add(cand.resolve())
    return cand


def _run_video(det, kind, src, out_dir: Path, args, used: set) -> dict:
    from fpn_edge.draw import draw_detections
    import numpy as np

    cv2 = _cv2_or_fail(str(src))
    cap = cv2.VideoCapture(int(src) if kind == "camera" else str(src))
    if not cap.isOpened():
        raise EdgeError(f"{src}: cannot open {'camera' if kind == 'camera' else 'video file'}")
    writer, frames, out_path = None, [], None
    name = f"camera{src}" if kind == "camera" else Path(src).stem
    try:
        i = 0
        while args.max_frames is None or i < args.max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            rgb = np.ascontiguousarray(frame[:, :, ::-1])
            t0 = time.perf_counter()
            dets = det.detect(rgb, score_threshold=args.threshold, max_detections=args.max_detections)
            ms = (time.perf_counter() - t0) * 1e3
            frames.append({"frame": i, "detections": [d.to_dict() for d in dets]})
            if not args.no_images:
                if writer is None:
                    out_path = out_dir / f"{name}_det.mp4"
                    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
                    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (rgb.shape[1], rgb.shape[0]))
                ann = np.asarray(draw_detections(rgb, dets))
                writer.write(np.ascontiguousarray(ann[:, :, ::-1]))
            _log(f"[{name} frame {i}] {len(dets)} detections ({ms:.1f} ms)", args.quiet)
            i += 1
    except KeyboardInterrupt:
        _log(f"[{name}] interrupted after {len(frames)} frames", args.quiet)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    entry = {"file": str(src), "kind": kind, "frames": frames}
    if out_path is not None:
        entry["annotated"] = out_path.name
    return entry


def _start(runner_class, args) -> tuple:
    """``(runner, inputs, output folder)`` of a detect / segment command: the model and the inputs
    are checked first, then the folder is created and checked writable, before any image is run."""
    runner = runner_class.from_file(args.model, threads=args.threads, delegate=args.delegate)
    items = _expand_inputs(args.inputs)
    out_dir = check_writable(args.out, folder=True)
    return runner, items, out_dir


def _each_input(items: list, run_one, quiet: bool) -> tuple[list, list]:
    """Run ``run_one(kind, src) -> (entry, log text or None)`` on every input; an ``EdgeError``
    is one error line and an ``errors`` entry, and the batch goes on. Returns ``(entries, errors)``."""
    results, errors = [], []
    for n, (kind, src) in enumerate(items, 1):
        try:
            entry, text = run_one(kind, src)
        except EdgeError as e:
            _error(str(e))
            errors.append({"file": str(src), "error": str(e)})
            continue
        results.append(entry)
        if text is not None:
            _log(f"[{n}/{len(items)}] {src}: {text}", quiet)
    return results, errors


def cmd_detect(args) -> int:
    from fpn_edge.detector import Detector
    from fpn_edge.draw import draw_detections

    det, items, out_dir = _start(Detector, args)
    _log(f"{args.model}: {det.output_kind} model, input {det.input_size[0]}x{det.input_size[1]} "
         f"{det.input_dtype.name}, {det.delegate}; {len(items)} input(s)", args.quiet)
    used = set()

    def one(kind, src):
        if kind != "image":
            return _run_video(det, kind, src, out_dir, args, used), None
        img = det.load(src)
        t0 = time.perf_counter()
        dets = det.detect(img, score_threshold=args.threshold, max_detections=args.max_detections)
        ms = (time.perf_counter() - t0) * 1e3
        entry = {"file": str(src), "width": int(img.shape[1]), "height": int(img.shape[0]),
                 "detections": [d.to_dict() for d in dets]}
        if not args.no_images:
            ann_path = _annotated_path(out_dir, Path(src), used)
            _save_image(ann_path, draw_detections(img, dets))
            entry["annotated"] = ann_path.name
        return entry, f"{len(dets)} detections ({ms:.1f} ms)"

    results, errors = _each_input(items, one, args.quiet)
    report = {"model": str(args.model), "output_kind": det.output_kind, "delegate": det.delegate,
              "labels": det.labels, "score_threshold": args.threshold,
              "box_format": {"box_xyxy": "x1, y1, x2, y2 in original image pixels",
                             "box_yxyx": "ymin, xmin, ymax, xmax normalized to the original image"},
              "images": results, "errors": errors}
    out_json = out_dir / "detections.json"
    write_json_atomic(out_json, report)
    _log(f"wrote {out_json} ({len(results)} input(s), {len(errors)} error(s))", args.quiet)
    return 2 if errors else 0


def _unique_stem(stem: str, used: set) -> str:
    n, cand = 1, stem
    while cand in used:
        n += 1
        cand = f"{stem}_{n}"
    used.add(cand)
    return cand


def cmd_segment(args) -> int:
    from PIL import Image

    from fpn_edge.draw import draw_segmentation, segmentation_palette
    from fpn_edge.segmenter import Segmenter, class_fractions

    seg, items, out_dir = _start(Segmenter, args)
    _log(f"{args.model}: segmentation model, input {seg.input_size[0]}x{seg.input_size[1]} "
         f"{seg.input_dtype.name}, {len(seg.labels)} labels, {seg.delegate}; {len(items)} input(s)", args.quiet)
    palette = segmentation_palette(len(seg.labels), seg.background_id)
    flat_palette = palette.reshape(-1).tolist() + [0] * (768 - palette.size)
    used = set()

    def one(kind, src):
        if kind != "image":
            raise EdgeError(f"{src}: fpn-edge segment takes image files and directories (not {kind} input)")
        img = seg.load(src)
        t0 = time.perf_counter()
        class_map = seg.segment(img)
        ms = (time.perf_counter() - t0) * 1e3
        stem = _unique_stem(Path(src).stem, used)
        overlay_path, mask_path = out_dir / f"{stem}_overlay.png", out_dir / f"{stem}_mask.png"
        _save_image(overlay_path, draw_segmentation(img, class_map, seg.labels,
                                                    background_id=seg.background_id, alpha=args.alpha))
        mask = Image.fromarray(class_map, mode="P")
        mask.putpalette(flat_palette)
        _save_image(mask_path, mask)
        fractions = class_fractions(class_map, seg.labels)
        top = ", ".join(f"{k} {v:.1%}" for k, v in list(fractions.items())[:4])
        return ({"file": str(src), "width": int(img.shape[1]), "height": int(img.shape[0]),
                 "overlay": overlay_path.name, "mask": mask_path.name, "class_fractions": fractions},
                f"{top} ({ms:.1f} ms)")

    results, errors = _each_input(items, one, args.quiet)
    report = {"model": str(args.model), "delegate": seg.delegate, "labels": seg.labels,
              "background_id": seg.background_id,
              "mask_format": "palette PNG, pixel value = class id (index into labels), original image size",
              "images": results, "errors": errors}
    out_json = out_dir / "segmentation.json"
    write_json_atomic(out_json, report)
    _log(f"wrote {out_json} ({len(results)} image(s), {len(errors)} error(s))", args.quiet)
    return 2 if errors else 0


def _fmt_stats(s: dict) -> str:
    return (f"p50 {s['p50']:.2f}  p90 {s['p90']:.2f}  p99 {s['p99']:.2f}  mean {s['mean']:.2f}  "
            f"(min {s['min']:.2f}, max {s['max']:.2f}) ms")


def cmd_bench(args) -> int:
    from fpn_edge.bench import benchmark

    total = args.warmup + args.runs
    step = max(1, total // 10)

    def progress(done, tot):
        if not args.quiet and (done % step == 0 or done == tot) and not args.json:
            _log(f"  {done}/{tot}")

    if args.out:
        check_writable(args.out)  # before the run, not after it
    res = benchmark(args.model, threads=args.threads, delegate=args.delegate, runs=args.runs,
                    warmup=args.warmup, image=args.image, progress=progress)
    if args.out:
        write_json_atomic(Path(args.out), res)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    lat = res["latency_ms"]
    lines = [f"model       {res['model']} ({res['model_size_bytes'] / 1e6:.2f} MB, "
             f"input {res['input']['shape']} {res['input']['dtype']}, output {res['output_kind']})",
             f"runtime     {res['backend']}, {res['delegate']}",
             f"cpu         {res['cpu']} ({res['machine']}; {' '.join(res['cpu_flags']) or 'flags unknown'}; "
             f"int8 dot product: {'yes' if res['int8_dot_product'] else 'no'})",
             f"runs        {res['runs']} (+{res['warmup']} warmup)",
             f"invoke      {_fmt_stats(lat['invoke'])}"]
    if "end_to_end" in lat:
        lines.append(f"end-to-end  {_fmt_stats(lat['end_to_end'])}")
    lines.append(f"throughput  {res['throughput_fps']:.1f} images/s")
    if res["peak_rss_mb"] is not None:
        lines.append(f"peak RSS    {res['peak_rss_mb']:.1f} MiB")
    print("\n".join(lines))
    return 0


def cmd_info(args) -> int:
    from fpn_edge.interpreter import describe_model
    from fpn_edge.metadata import quantization_summary, read_metadata
    from fpn_edge.runner import runner_class
    from fpn_edge.standard_metadata import describe_standard_metadata, read_standard_metadata

    info = describe_model(args.model)
    try:
        meta, anchors = read_metadata(args.model)
        info["metadata"] = meta
        info["anchors"] = None if anchors is None else {"count": int(anchors.shape[0])}
    except EdgeError as e:
        info["metadata"] = None
        info["metadata_error"] = str(e)
    try:
        info["standard_metadata"] = read_standard_metadata(args.model)
    except EdgeError as e:
        info["standard_metadata"] = None
        info["standard_metadata_error"] = str(e)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    def tensor_line(t):
        q = t.get("quantization")
        if q is None:
            qs = "float"
        elif "scale" in q:
            qs = f"scale={q['scale']:.6g} zero_point={q['zero_point']}"
        else:
            qs = f"per-axis({q['axis']}) {len(q['scales'])} scales"
        return f"  {t['name']:<40} {str(t['shape']):<18} {t['dtype']:<8} {qs}"

    out = [f"model    {info['path']} ({info['size_bytes']} bytes, {info['backend']})", "inputs:"]
    out += [tensor_line(t) for t in info["inputs"]]
    out.append("outputs:")
    out += [tensor_line(t) for t in info["outputs"]]
    if info["ops"] is not None:
        counts = {}
        for op in info["ops"]:
            counts[op] = counts.get(op, 0) + 1
        out.append(f"ops ({len(info['ops'])}): " + ", ".join(f"{k} x{v}" for k, v in counts.items()))
    if info.get("standard_metadata_error"):
        out.append(f"standard metadata: unreadable ({info['standard_metadata_error']})")
    else:
        out += describe_standard_metadata(info["standard_metadata"])
    meta = info["metadata"]
    if meta is None:
        out.append(f"metadata: none ({info['metadata_error']})")
    else:
        norm = meta["input"]["normalization"]
        out += [f"task     {meta['task']}",
                f"output   {meta['output']}",
                f"input    {meta['input']['height']}x{meta['input']['width']}, {norm['channel_order']}, "
                f"mean {norm['mean']}, std {norm['std']}, resize {meta['input'].get('resize', 'letterbox')}",
                f"labels   ({len(meta['labels'])}) {', '.join(meta['labels'])}"]
        out += runner_class(meta["task"]).describe_meta(meta)
        if quantization_summary(meta):
            out.append(f"quant    {quantization_summary(meta)}")
        if info["anchors"]:
            out.append(f"anchors  {info['anchors']['count']}")
        if meta.get("config"):
            out.append("config:")
            out += ["  " + line for line in json.dumps(meta["config"], indent=2).splitlines()]
    print("\n".join(out))
    return 0


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line ``fpn-edge CMD: error: ...`` and exit status 2, like every user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run keras-fpn TFLite detectors and segmenters (no TensorFlow needed).")
    sub = p.add_subparsers(dest="command", required=True)

    def runtime_args(sp):
        sp.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: interpreter's)")
        sp.add_argument("--delegate", default="cpu",
                        help="cpu | edgetpu[:DEVICE] | gpu:/path/lib.so | /path/delegate.so (default cpu)")

    d = sub.add_parser("detect", help="detect objects in images / directories / videos")
    d.add_argument("model")
    d.add_argument("inputs", nargs="+", metavar="INPUT")
    d.add_argument("--out", required=True, help="output directory (detections.json + annotated images)")
    d.add_argument("--threshold", type=unit_interval, default=None, help="score threshold in [0, 1] (default: model's)")
    d.add_argument("--max-detections", type=positive_int, default=None)
    d.add_argument("--no-images", action="store_true", help="write only detections.json")
    d.add_argument("--max-frames", type=positive_int, default=None, help="video/camera: stop after N frames")
    d.add_argument("--quiet", action="store_true")
    runtime_args(d)
    d.set_defaults(func=cmd_detect)

    g = sub.add_parser("segment", help="semantic segmentation of images: colour overlay + class-map PNGs")
    g.add_argument("model")
    g.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or directories")
    g.add_argument("--out", required=True, help="output directory (overlays, masks, segmentation.json)")
    g.add_argument("--alpha", type=unit_interval, default=0.55, help="opacity of the class colours in [0, 1] (default 0.55)")
    g.add_argument("--quiet", action="store_true")
    runtime_args(g)
    g.set_defaults(func=cmd_segment)

    b = sub.add_parser("bench", help="latency benchmark")
    b.add_argument("model")
    b.add_argument("--runs", type=positive_int, default=100)
    b.add_argument("--warmup", type=nonneg_int, default=10)
    b.add_argument("--image", default=None, help="image to run on (default: random 640x480)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("--out", default=None, help="also write the JSON result to this file")
    b.add_argument("--quiet", action="store_true")
    runtime_args(b)
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="inputs, outputs, ops, labels and config of a model")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeError as e:
        _error(" ".join(str(e).split()))
        return 2
    except OSError as e:  # an output that cannot be written (full disk, read-only folder)
        _error(f"{e.filename}: {e.strerror}" if e.filename is not None and e.strerror else " ".join(str(e).split()))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
