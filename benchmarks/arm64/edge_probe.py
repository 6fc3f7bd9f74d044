"""Probe of the edge runtime, run unchanged on x86 and inside the emulated arm64 root.

Needs only what ``keras-fpn[edge]`` installs (fpn_edge, numpy, Pillow, ai-edge-litert):

    python edge_probe.py env OUT.json
        Python/numpy/Pillow/ai-edge-litert versions, the machine, and whether
        ``import tensorflow`` works (it must not on a device install). Also saves
        numpy's float32 ``exp`` of a fixed grid to OUT.exp.npy: fpn_edge's decode of
        raw models uses it, and its last bits depend on the CPU's SIMD code path.

    python edge_probe.py dump MODEL.tflite OUT.npz IMAGE... [--threads N]
        Runs each image through fpn_edge's Detector (same load/letterbox/
        quantize path as ``fpn-edge detect``) and saves, per image, the input
        tensor as fed to the interpreter, every output tensor as the
        interpreter returned it (int8/uint8 stay integers, no dequantizing),
        and the decoded detections at full float precision. Tensor names,
        dtypes and quantization go to OUT.json beside OUT.npz.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import io
import json
import platform
import sys
from pathlib import Path

import numpy as np


def _version(dist: str):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cmd_env(args) -> int:
    try:
        import tensorflow  # noqa: F401
        tf = {"importable": True, "version": getattr(tensorflow, "__version__", "?")}
    except ImportError as e:
        tf = {"importable": False, "error": f"{type(e).__name__}: {e}"}
    info = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": _version("pillow"),
        "ai_edge_litert": _version("ai-edge-litert"),
        "keras_fpn": _version("keras-fpn"),
        "tensorflow": tf,
        "fpn_edge_file": __import__("fpn_edge").__file__,
        "installed": sorted(f"{d.metadata['Name']}=={d.version}" for d in md.distributions()),
    }
    from fpn_edge.atomic import write_bytes_atomic, write_text_atomic
    write_text_atomic(args.out, json.dumps(info, indent=2) + "\n")
    buf = io.BytesIO()
    np.save(buf, np.exp(np.linspace(-20, 5, 100001, dtype=np.float32)))
    write_bytes_atomic(Path(args.out).with_suffix(".exp.npy"), buf.getvalue())
    print(json.dumps({k: info[k] for k in ("machine", "python", "numpy", "pillow", "ai_edge_litert",
                                           "tensorflow")}))
    return 0


def _detail(d: dict) -> dict:
    scale, zp = d.get("quantization", (0.0, 0))
    return {"name": d["name"], "index": int(d["index"]), "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zp)}


def cmd_dump(args) -> int:
    from fpn_edge.atomic import write_bytes_atomic, write_text_atomic
    from fpn_edge.detector import Detector

    det = Detector.from_file(args.model, threads=args.threads)
    interp = det.interpreter
    inp = interp.get_input_details()[0]
    outs = interp.get_output_details()
    arrays, images = {}, []
    for i, path in enumerate(args.images):
        info = det.run(path)  # load + letterbox + normalize + quantize + invoke
        arrays[f"in_{i}"] = np.array(interp.get_tensor(inp["index"]))
        for j, d in enumerate(outs):
            arrays[f"out_{i}_{j}"] = np.array(interp.get_tensor(d["index"]))
        dets = det.postprocess(info)
        images.append({"file": Path(path).name,
                       "detections": [{"class_id": d.class_id, "score": float(d.score),
                                       "box_xyxy": [float(v) for v in d.box_xyxy]} for d in dets]})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(args.out, buf.getvalue())
    # which output is which (boxes/scores/... or box_deltas/class_logits), as fpn_edge mapped them
    role = {int(i): k for k, i in (getattr(det, "_out_map", None) or {}).items()}
    outputs = [{**_detail(d), "role": role.get(int(d["index"]))} for d in outs]
    meta = {"model": str(args.model), "output_kind": det.output_kind, "delegate": det.delegate,
            "machine": platform.machine(), "input": _detail(inp), "outputs": outputs,
            "images": images}
    write_text_atomic(Path(args.out).with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    print(f"{platform.machine()}: {args.model}: {len(images)} images, "
          f"{sum(len(im['detections']) for im in images)} detections", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("out")
    e.set_defaults(func=cmd_env)
    d = sub.add_parser("dump")
    d.add_argument("model")
    d.add_argument("out")
    d.add_argument("images", nargs="+")
    d.add_argument("--threads", type=int, default=None)
    d.set_defaults(func=cmd_dump)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
