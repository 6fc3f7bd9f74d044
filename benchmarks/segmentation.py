"""Segmentation measurements: float vs int8 PTQ vs QAT, boundary fix, final upsample, latency, overlay.

Usage (after training the runs with configs/synthetic_seg_mobilenetv2.yaml)::

    python benchmarks/segmentation.py --runs runs/seg_base runs/seg_c2 --main runs/seg_c2 \
        --out benchmarks/results/segmentation.json --overlay benchmarks/results/segmentation_overlay.png

For every run: Keras float mIoU / boundary F on the val split, with the
trained bilinear x4 upsample and with nearest swapped in (the layer has no
weights). For ``--main``: fp32, int8 (PTQ) and qat-int8 exports through
``keras-fpn export``'s code path, plus int8 with nearest final upsample,
each scored through ``fpn_edge.Segmenter`` on the same val split, with
``fpn_edge.bench`` latency, model size, op counts and the Edge TPU static
check; and an overlay of one val image (``fpn-edge segment``).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def _cpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": platform.processor()}
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    keys = ("Model name", "Architecture", "CPU(s)", "Thread(s) per core", "Flags")
    res = {k: info[k].strip() for k in keys if k in info}
    flags = res.pop("Flags", "").split()
    res["isa"] = [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "vnni"))]
    return res


def _keras_eval(run, dataset, upsample: str) -> dict:
    """Keras float metrics with the given final upsample; boundary F at 1 and 2 px from one prediction pass."""
    import keras

    from keras_fpn.config import replace_dotted
    from keras_fpn.data.masks import rasterize_class_map
    from keras_fpn.evaluation.segmentation import SegmentationMetrics, class_names, predict_class_maps
    from keras_fpn.models.factory import build_model

    mcfg = replace_dotted(run.config, "model.segmentation.final_upsample", upsample).model
    model = build_model(mcfg, ns=keras, backbone_weights=None)
    model.load_weights(run.weights("best"))
    names = class_names(run.labels)
    metrics = {t: SegmentationMetrics(names, tolerance=t) for t in (1, 2)}
    for record, pred in predict_class_maps(model, dataset, mcfg):
        gt = rasterize_class_map(record)
        for m in metrics.values():
            m.update(gt, pred)
    res = metrics[2].result()
    res["boundary_F_1px"] = metrics[1].result()["boundary_F"]
    return res


def _summary(m: dict) -> dict:
    extra = {"boundary_F_1px": round(m["boundary_F_1px"], 4)} if "boundary_F_1px" in m else {}
    return {"mIoU": round(m["mIoU"], 4), "boundary_F": round(m["boundary_F"], 4), **extra,
            "pixel_accuracy": round(m["pixel_accuracy"], 4),
            "per_class_IoU": {k: (None if v["IoU"] is None else round(v["IoU"], 4)) for k, v in m["per_class"].items()}}


def _overlay_panel(run, val, results, out_png: str, index: int = 3) -> dict:
    """``fpn-edge segment`` on one val image; save [image | ground truth | prediction] at 2x."""
    import tempfile

    import numpy as np
    from PIL import Image

    from fpn_edge.cli import main as edge_main
    from fpn_edge.draw import draw_segmentation
    from keras_fpn.data.images import load_image
    from keras_fpn.data.masks import rasterize_class_map
    from keras_fpn.evaluation.segmentation import class_names

    record = val.records[index]
    model = (results["exports"].get("qat-int8") or results["exports"].get("int8")
             or next(iter(results["exports"].values())))["path"]
    with tempfile.TemporaryDirectory() as tmp:
        edge_main(["segment", model, record.image_path, "--out", tmp, "--quiet"])
        pred = Image.open(Path(tmp) / f"{Path(record.image_path).stem}_overlay.png").convert("RGB")
    image = load_image(record.image_path)
    gt = rasterize_class_map(record)
    gt_vis = np.where(gt[..., None] == 255, 255, np.asarray(
        draw_segmentation(image, np.where(gt == 255, 0, gt), class_names(run.labels), legend=False)))
    panel = np.concatenate([image, np.full((image.shape[0], 4, 3), 255, np.uint8), gt_vis.astype(np.uint8),
                            np.full((image.shape[0], 4, 3), 255, np.uint8), np.asarray(pred)], axis=1)
    big = Image.fromarray(panel).resize((panel.shape[1] * 2, panel.shape[0] * 2), Image.NEAREST)
    big.save(out_png, optimize=True)
    return {"image": record.image_path, "model": model, "png": out_png,
            "layout": "original | ground truth (white = ignore) | fpn-edge segment overlay, 2x nearest"}


def _float_control(run, val, out_dir: Path, threads: int) -> dict:
    """The QAT recipe without quantization: fine-tune the float tf_keras twin for the same
    ``export.qat_steps`` (same data, optimizer, LR, frozen BN), then evaluate it in float and
    after int8 PTQ. Separates what QAT gains from quantization-awareness from what it gains
    from the extra training steps."""
    import tf_keras

    from fpn_export.calibration import representative_from_config, train_data_from_config
    from fpn_export.qat import freeze_batch_norm, tf_keras_losses
    from fpn_export.segmentation import export_segmenter
    from keras_fpn.evaluation.segmentation import evaluate_segmentation, evaluate_tflite
    from keras_fpn.models.twin import build_twin

    cfg = run.config
    twin = build_twin(cfg.model, run.build_model(which="best"))
    freeze_batch_norm(twin)
    losses, weights = tf_keras_losses(cfg)
    kwargs = {"clipnorm": float(cfg.train.clipnorm)} if cfg.train.clipnorm else {}
    twin.compile(optimizer=tf_keras.optimizers.Adam(float(cfg.export.qat_learning_rate), **kwargs),
                 loss=losses, loss_weights=weights)
    t0 = time.perf_counter()
    twin.fit(train_data_from_config(cfg).repeat(), steps_per_epoch=cfg.export.qat_steps, epochs=1, verbose=0)
    res = {"steps": cfg.export.qat_steps, "fit_s": round(time.perf_counter() - t0, 1),
           "float": _summary(evaluate_segmentation(twin, val, cfg.model))}
    path = export_segmenter(twin, cfg, run.labels, "int8", out=out_dir / "model_float_ft_int8.tflite",
                            representative=representative_from_config(cfg))
    res["int8"] = _summary(evaluate_tflite(path, val, threads=threads))
    return res


def main(argv=None) -> int:
    import keras_fpn  # noqa: F401

    from fpn_edge.bench import benchmark
    from fpn_export.convert import export_model
    from fpn_export.edgetpu import check_edgetpu
    from fpn_export.flatbuffer import op_counts
    from keras_fpn.evaluation.segmentation import evaluate_tflite
    from keras_fpn.rundir import open_run
    from keras_fpn.data.splits import load_datasets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--main", required=True, help="the run to export and quantize")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overlay", help="write an fpn-edge overlay of one val image here")
    ap.add_argument("--modes", nargs="+", default=["fp32", "int8", "qat-int8", "int8-nearest"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench-runs", type=int, default=50)
    ap.add_argument("--float-control", action="store_true",
                    help="also fine-tune the float twin like QAT (no fake-quant) and PTQ it")
    ap.add_argument("--skip-float", action="store_true", help="skip the Keras float evaluations of --runs")
    args = ap.parse_args(argv)

    prev = Path(args.out)
    results = json.loads(prev.read_text()) if prev.is_file() else {}
    results.update({"cpu": _cpu(), "python": platform.python_version()})
    results.setdefault("float", {})
    results.setdefault("exports", {})
    for r in ([] if args.skip_float else args.runs):
        run = open_run(r)
        _, val = load_datasets(run.config)
        key = Path(r).name
        mc = run.config.model
        results["float"][key] = {
            "variant": {"min_level": mc.neck.min_level, "seg_c2_skip": mc.segmentation.c2_skip},
            "bilinear": _summary(_keras_eval(run, val, "bilinear")),
            "nearest": _summary(_keras_eval(run, val, "nearest"))}
        print(key, json.dumps(results["float"][key])[:400], flush=True)

    run = open_run(args.main)
    _, val = load_datasets(run.config)
    for mode in args.modes:
        t0 = time.perf_counter()
        if mode == "int8-nearest":
            import keras

            from fpn_export.calibration import representative_from_config
            from fpn_export.segmentation import export_segmenter
            from keras_fpn.config import replace_dotted
            from keras_fpn.models.factory import build_model

            cfg = replace_dotted(run.config, "model.segmentation.final_upsample", "nearest")
            model = build_model(cfg.model, ns=keras, batch_size=1, backbone_weights=None)
            model.load_weights(run.weights("best"))
            path = export_segmenter(model, cfg, run.labels, "int8", out=run.path / "model_int8_nearest.tflite",
                                    representative=representative_from_config(cfg))
        else:
            path = export_model(run, mode)
        export_s = time.perf_counter() - t0
        m = evaluate_tflite(path, val, threads=args.threads)
        m["boundary_F_1px"] = evaluate_tflite(path, val, threads=args.threads, tolerance=1)["boundary_F"]
        bench = benchmark(path, threads=args.threads, runs=args.bench_runs, warmup=5)
        rep = check_edgetpu(path)
        results["exports"][mode] = {
            "path": str(path), "bytes": path.stat().st_size, "export_s": round(export_s, 1), **_summary(m),
            "latency_ms": {k: {s: round(v[s], 3) for s in ("p50", "p90", "mean")}
                           for k, v in bench["latency_ms"].items()},
            "ops": op_counts(path),
            "edgetpu": {"clean": rep.clean, "num_edgetpu": rep.num_edgetpu, "num_cpu": rep.num_cpu,
                        "cpu_ops": sorted({v.op for v in rep.cpu_ops})}}
        print(mode, json.dumps(results["exports"][mode])[:500], flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))

    if args.float_control:
        results["float_finetune_control"] = _float_control(run, val, run.path, args.threads)
        print("float control", json.dumps(results["float_finetune_control"])[:600], flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    if args.overlay:
        results["overlay"] = _overlay_panel(run, val, results, args.overlay)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
