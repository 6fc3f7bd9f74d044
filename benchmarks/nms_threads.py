"""Detections at 1..8 interpreter threads and post-process latency, before / after the split post-process.

    export KERAS_FPN_DATA=/work/shared/data
    python -m benchmarks.nms_threads RUN_DIR --work /tmp/nmsthr --images 50 \
        --out benchmarks/results/nms_threads

"Before" = one ``TFLite_Detection_PostProcess`` op over all C classes (every
export before the fix; built here with ``classes_per_op=None``), "after" = the
current export (one op per 2 classes + int32 merge, ``fpn_export.postprocess_op``).
Both are exported from the same checkpoint with the same calibration images, so
their networks are identical and only the post-process differs.

1. **Detections**: each validation image (letterboxed by ``fpn_edge``) through the
   plain LiteRT interpreter (no fpn_edge workaround) at 1..8 threads; detections
   with score >= 0.3 per class, and whether all four outputs equal the "before"
   model's 1-thread outputs bit for bit.
2. **Latency**: whole invoke of each model (1 and 2 threads, median over
   images x rounds, before/after interleaved), and the post-process alone: a
   model whose inputs are the box deltas / class logits, fed the raw fp32
   export's outputs on the same images.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

THREADS = tuple(range(1, 9))


def _export_all(run_dir: Path, work: Path, reuse: bool) -> dict:
    import fpn_export.detection as det_export
    from fpn_export.convert import export_model

    paths = {}
    for mode in ("fp32", "int8"):
        for layout in ("before", "after"):
            out = work / f"{layout}_{mode}.tflite"
            if not (reuse and out.exists()):
                saved = det_export._classes_per_op
                if layout == "before":   # the single-op layout of older exports
                    det_export._classes_per_op = lambda mode: None
                try:
                    export_model(run_dir, mode, out=out)
                finally:
                    det_export._classes_per_op = saved
            paths[(layout, mode)] = out
    raw = work / "raw_fp32.tflite"
    if not (reuse and raw.exists()):
        export_model(run_dir, "fp32", out=raw, raw=True)
    paths["raw"] = raw
    return paths


def _plain(path, threads):
    from ai_edge_litert.interpreter import Interpreter

    from fpn_edge.detector import _map_postprocess_outputs

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it, _map_postprocess_outputs(it, it.get_output_details(), str(path))


def _set_input(it, x):
    inp = it.get_input_details()[0]
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), 0, 255).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)


def detections(paths, canvases, labels) -> dict:
    """{mode: {layout: {threads: {"per_class": [...], "total": n, "identical": k}}}}."""
    res = {}
    for mode in ("fp32", "int8"):
        ref_it, ref_map = _plain(paths[("before", mode)], 1)
        refs = []
        for x in canvases:
            _set_input(ref_it, x)
            ref_it.invoke()
            refs.append({k: ref_it.get_tensor(i).copy() for k, i in ref_map.items()})
        res[mode] = {}
        for layout in ("before", "after"):
            res[mode][layout] = {}
            for t in THREADS:
                it, m = _plain(paths[(layout, mode)], t)
                per_class = np.zeros(len(labels), int)
                same = 0
                for x, ref in zip(canvases, refs):
                    _set_input(it, x)
                    it.invoke()
                    out = {k: it.get_tensor(i) for k, i in m.items()}
                    n = int(out["num_detections"][0])
                    keep = out["scores"][0, :n] >= 0.3
                    per_class += np.bincount(out["classes"][0, :n][keep].astype(int), minlength=len(labels))
                    same += all(np.array_equal(out[k], ref[k]) for k in ref)
                res[mode][layout][t] = {"per_class": per_class.tolist(), "total": int(per_class.sum()),
                                        "identical_to_before_1_thread": same}
    return res


def _median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _pp_only_models(run_dir: Path, work: Path) -> dict:
    """fp32 models: inputs box_deltas [1, A, 4] / class_logits [1, A, C] -> the post-process, both layouts."""
    import os
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    from fpn_export.postprocess_op import attach_postprocess, patch_postprocess_options
    from keras_fpn.ops.anchors import model_anchors
    from keras_fpn.rundir import open_run

    cfg = open_run(run_dir).config.model
    anchors = model_anchors(cfg)
    a, c = anchors.shape[0], cfg.num_classes
    d_in = keras.Input((a, 4), batch_size=1, name="box_deltas_in")
    c_in = keras.Input((a, c), batch_size=1, name="class_logits_in")
    m = keras.Model([d_in, c_in], [keras.layers.Reshape((a, 4), name="box_deltas")(d_in),
                                   keras.layers.Reshape((a, c), name="class_logits")(c_in)])
    pp = cfg.postprocess
    out = {}
    for layout, per_op in (("before", None), ("after", 2)):
        model = attach_postprocess(m, anchors, num_classes=c, scale_factors=cfg.anchors.box_scale_factors,
                                   score_threshold=pp.score_threshold, iou_threshold=pp.iou_threshold,
                                   max_detections=pp.max_detections,
                                   max_detections_per_class=pp.max_detections_per_class, classes_per_op=per_op)
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.allow_custom_ops = True
        data = patch_postprocess_options(conv.convert(), model)
        path = work / f"pp_only_{layout}.tflite"
        path.write_bytes(data)
        out[layout] = path
    return out


def latency(paths, pp_paths, canvases, raw_outputs, rounds: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    res = {}
    for threads in (1, 2):
        for mode in ("fp32", "int8"):
            its = {lay: _plain(paths[(lay, mode)], threads)[0] for lay in ("before", "after")}
            acc = {lay: [] for lay in its}
            for x in canvases:
                for lay, it in its.items():
                    _set_input(it, x)
                    acc[lay].append(_median_ms(it.invoke, rounds))
            res[f"invoke_{mode}_{threads}t"] = {lay: float(np.median(v)) for lay, v in acc.items()}
        its = {}
        for lay, p in pp_paths.items():
            it = Interpreter(model_path=str(p), num_threads=threads)
            it.allocate_tensors()
            its[lay] = it
        acc = {lay: [] for lay in its}
        for r in raw_outputs:
            for lay, it in its.items():
                for d in it.get_input_details():
                    it.set_tensor(d["index"], r["box_deltas"] if d["shape"][-1] == 4 else r["class_logits"])
                acc[lay].append(_median_ms(it.invoke, rounds))
        res[f"postprocess_only_{threads}t"] = {lay: float(np.median(v)) for lay, v in acc.items()}
    return res


def main(argv=None) -> int:
    from benchmarks.machine import machine_info, machine_line
    from fpn_edge import Detector

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    paths = _export_all(a.run_dir, a.work, a.reuse)
    pre = Detector.from_file(paths[("after", "fp32")], threads=1)
    from keras_fpn.rundir import open_run
    cfg = open_run(a.run_dir).config
    val = json.loads(Path(cfg.data.val).read_text())
    root = Path(cfg.data.val).parent
    files = [root / im["file_name"] for im in val["images"]][:a.images]
    canvases = [pre.preprocess(pre.load(f))[0].copy() for f in files]
    raw = Detector.from_file(paths["raw"], threads=1)
    raw_outputs = [{k: v.astype(np.float32) for k, v in raw.raw_outputs(x).items()} for x in canvases]
    dets = detections(paths, canvases, pre.labels)
    lat = latency(paths, _pp_only_models(a.run_dir, a.work), canvases[:10], raw_outputs[:10], a.rounds)
    mach = machine_info()
    result = {"machine": mach, "images": len(files), "labels": pre.labels, "detections": dets, "latency_ms": lat}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# Post-process at 1..8 threads: one op (before) vs one op per 2 classes (after)", "",
             machine_line(mach), "",
             f"{len(files)} validation images of the demo run, plain LiteRT interpreter, detections with "
             f"score >= 0.3 per class ({', '.join(pre.labels)}); 'same' = images whose four outputs equal the "
             "before model's 1-thread outputs bit for bit.", "",
             "| mode | threads | before: per class | before total | before same | after: per class | after total | after same |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, d in dets.items():
        for t in THREADS:
            b, f = d["before"][t], d["after"][t]
            lines.append(f"| {mode} | {t} | {b['per_class']} | {b['total']} | {b['identical_to_before_1_thread']} | "
                         f"{f['per_class']} | {f['total']} | {f['identical_to_before_1_thread']} |")
    lines += ["", f"Latency (ms, median over {len(raw_outputs[:10])} images x {a.rounds} rounds):", "",
              "| what | before | after | after - before |", "|---|---|---|---|"]
    for k, v in lat.items():
        lines.append(f"| {k} | {v['before']:.3f} | {v['after']:.3f} | {v['after'] - v['before']:+.3f} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
