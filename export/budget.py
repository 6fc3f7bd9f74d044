"""Accuracy-budget int8 export (``keras-fpn export RUN --mode int8 --max-ap-drop 1.0``): keep the most
quantization-sensitive layers float until int8 loses at most the given share of the float AP.

The measure is a **calibration-validation split** carved from the training data
(``calibration_validation_split``): ``split_images`` (default 48) training images drawn with a fixed
seed, never calibrated on, never from the reported validation set (any training image that is also
in ``data.val`` / ``data.val_include`` is left out first). The calibration images are then drawn from
the rest of the training set. Every plan is an ``int8`` export of the same graph, calibrated on the
same images, run through ``fpn_edge.Detector`` on the split; AP is COCO AP by pycocotools.

The reference is the **fp32 TFLite** export, not the Keras model: it runs through the same
fpn_edge pipeline and the same ``TFLite_Detection_PostProcess`` op as every int8 plan, so the drop
is what quantization costs. The Keras model's NMS differs from the op's (see DESIGN.md), a
difference no quantization plan can win back.

The search (``search_plans``): the full int8 model first (0 layers float); when its drop
``100 * (1 - AP / AP_fp32)`` exceeds ``max_ap_drop`` (percent), the layers are ranked by the
QuantizationDebugger's ``rmse_over_scale`` (``fpn_export.debug``: the error each layer adds, in
quantization steps) and the N worst are kept float for N = 1, 2, 4, 8 ... up to ``max_float``, then
N is bisected between the last plan that missed and the first that held (this assumes the drop
shrinks with N; every tried plan is reported). When no plan holds, whole-model int16x8 is measured
too, and the export says so in one line and recommends QAT (``--mode qat-int8``); it writes the plan
with the highest AP then. A model with a layer kept float is **not full integer**: float32 I/O,
QUANTIZE / DEQUANTIZE around the float layers, not for the Edge TPU.

Written: the chosen model at ``out`` with a ``quantization`` entry in its ``fpn_meta.json``
(``fpn_edge.metadata``), and the export log ``<stem>_budget.json`` beside it (the split, the
reference, every plan with AP / AP50 / AP75 / drop / size / latency through fpn_edge on this
machine, the layers kept float).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from fpn_export.errors import ExportError

logger = logging.getLogger("fpn_export")

__all__ = ["DEFAULT_MAX_AP_DROP", "DEFAULT_SPLIT_IMAGES", "DEFAULT_MAX_FLOAT", "SPLIT_SEED",
           "calibration_validation_split", "layer_of", "search_plans", "export_budget", "recorded_budget"]

#: percent of the fp32 AP the int8-budget export may lose by default
DEFAULT_MAX_AP_DROP = 1.0
#: training images held out for the calibration-validation split
DEFAULT_SPLIT_IMAGES = 48
#: the most layers the search keeps float (ladder 1, 2, 4, ... up to this)
DEFAULT_MAX_FLOAT = 32
#: seed of the split's draw (the calibration draw keeps the exporter's own seed 0)
SPLIT_SEED = 26
#: the search needs at least this many images on each side of the split
MIN_IMAGES = 4


def calibration_validation_split(config, images: int = DEFAULT_SPLIT_IMAGES, seed: int = SPLIT_SEED) -> tuple:
    """``(calibration pool, calibration-validation split)``: two disjoint ``DetectionDataset`` of ``data.train``.

    Training images that are also in the validation set (``data.val`` with ``data.val_include``, by
    resolved path) are in neither. ``images`` records drawn with ``seed`` form the split (fewer when
    the training set is small: at most half of it); the pool is the rest, in its own order.
    Undecodable split images are dropped (``drop_undecodable``). Deterministic for a config.
    """
    from fpn_export.calibration import _train_split
    from keras_fpn.data.dataset import drop_undecodable
    from keras_fpn.data.splits import load_split

    ds = _train_split(config, "the calibration-validation split needs training images")
    val = set()
    if config.data.val:
        val = {str(Path(r.image_path).resolve())
               for r in load_split(config.data.val, config.data.val_include, config.data.strict).records}
    free = [i for i, r in enumerate(ds.records) if str(Path(r.image_path).resolve()) not in val]
    k = min(int(images), len(free) // 2)
    if k < MIN_IMAGES:
        raise ExportError(f"{config.data.train}: {len(free)} training images outside the validation set; "
                          f"the accuracy budget needs at least {2 * MIN_IMAGES} (half calibration, half its check)")
    order = np.random.default_rng(seed).permutation(np.asarray(free))
    held = set(int(i) for i in order[:k])
    split = drop_undecodable(ds.subset(sorted(held)), config.data.strict)
    pool = ds.subset([i for i in free if i not in held])
    return pool, split


def layer_of(tensor_name: str) -> str:
    """The Keras layer a (fused) TFLite tensor name comes from: the layer of its convolution when the
    name lists several ops (``m/re_lu/Relu;m/Conv/BatchNorm/...;m/Conv/Conv2D1`` -> ``Conv``)."""
    parts = [p.split("/") for p in tensor_name.split(";") if "/" in p]
    if not parts:
        return tensor_name
    conv = [p for p in parts if p[-1].lower().startswith(("conv2d", "depthwise"))]
    return (conv or parts)[0][1]


def search_plans(measure: Callable[[int], dict], max_float: int) -> tuple:
    """The budget search over N = layers kept float; ``measure(N)`` returns a dict with ``meets`` (bool).

    N = 0, then 1, 2, 4, ... (the last rung is ``max_float`` itself), then bisection between the
    largest N that missed and the smallest that held. Returns ``(chosen N or None, {N: result})``
    in the order tried.
    """
    tried = {}

    def run(n):
        if n not in tried:
            tried[n] = measure(n)
        return tried[n]["meets"]

    if run(0):
        return 0, tried
    lo, hi, n = 0, None, 1
    while n <= max_float:
        if run(n):
            hi = n
            break
        lo = n
        n = max_float if n < max_float < 2 * n else 2 * n
    if hi is None:
        return None, tried
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid):
            hi = mid
        else:
            lo = mid
    return hi, tried


def _evaluate(path, split, config, threads: int, bench_runs: int) -> dict:
    """AP / AP50 / AP75 on the split, size, end-to-end latency through fpn_edge (p50, ms)."""
    from fpn_edge.bench import benchmark
    from keras_fpn.evaluation.detection import coco_evaluate, tflite_results

    res = tflite_results(path, split, threads=threads, score_threshold=config.model.postprocess.score_threshold)
    m = coco_evaluate(split, res, per_class=False)
    bench = benchmark(path, threads=threads, runs=bench_runs, warmup=3, image=split.records[0].image_path)
    lat = bench["latency_ms"].get("end_to_end", bench["latency_ms"]["invoke"])
    return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "size_bytes": Path(path).stat().st_size,
            "latency_ms_p50": lat["p50"]}


def _int16x8_plan(export, split, config, threads, bench_runs, ref_ap, max_ap_drop) -> dict:
    """The whole model in int16x8 as one more candidate (a converter cannot mix int8 and int16 per layer);
    an export that fails is recorded with its one-line reason."""
    plan = {"plan": "int16x8 (whole model)", "kept_float": None, "full_integer": False, "meets": False}
    try:
        plan.update(_evaluate(export("int16x8", "int16x8"), split, config, threads, bench_runs))
    except ExportError as exc:
        return dict(plan, error=f"export failed ({str(exc)[:200]})")
    plan["AP_drop_pct"] = _drop(plan["AP"], ref_ap)
    plan["meets"] = plan["AP_drop_pct"] <= max_ap_drop
    return plan


def _drop(ap: float, reference: float) -> float:
    """AP drop in percent of the reference (0 when the reference is 0 and so is the AP)."""
    if reference <= 0:
        return 0.0 if ap >= reference else math.inf
    return 100.0 * (1.0 - ap / reference)


def recorded_budget(path) -> Optional[float]:
    """The ``max_ap_drop`` an int8-budget .tflite was searched for (None: not such a model)."""
    from fpn_edge.errors import EdgeError
    from fpn_edge.metadata import read_metadata

    try:
        meta = read_metadata(path)[0]
    except EdgeError:
        return None
    return (meta.get("quantization") or {}).get("budget", {}).get("max_ap_drop")


def export_budget(model, config, labels, *, out, max_ap_drop: float = DEFAULT_MAX_AP_DROP,
                  split_images: int = DEFAULT_SPLIT_IMAGES, max_float: int = DEFAULT_MAX_FLOAT,
                  representative: Optional[int] = None, raw: bool = False, threads: int = 2,
                  bench_runs: int = 30, via: str = "tf_keras", log=logger.info) -> Path:
    """Search the int8 plan that meets ``max_ap_drop`` and write it to ``out`` (module docstring).

    Args:
        model: the trained Keras 3 detector (or its tf_keras twin), batch 1.
        config, labels: the run's config and class names.
        out: the .tflite to write; the log goes to ``<stem>_budget.json`` beside it.
        max_ap_drop: the allowed AP drop, percent of the fp32 TFLite AP on the split.
        split_images: size of the calibration-validation split.
        max_float: the most layers the search keeps float.
        representative: number of calibration images (default ``export.representative_images``),
            drawn from the training images outside the split.
        raw, via: as ``fpn_export.detection.export_detector``.
        threads, bench_runs: fpn_edge threads and timed runs per plan.

    Returns:
        The written path.
    """
    from fpn_edge.atomic import write_text_atomic
    from fpn_edge.metadata import read_metadata, strip_metadata
    from fpn_export.debug import ranking
    from fpn_export.tflite import input_normalization, write_export
    from keras_fpn.data.pipeline import representative_images
    from keras_fpn.tasks import get_task

    metric = get_task(config.model.task).report.metric
    if metric != "AP":   # the budget is a drop of COCO AP: tasks measured by another metric have none
        raise ExportError(f"--max-ap-drop measures COCO AP; a {config.model.task} model is measured by {metric}")
    if not math.isfinite(float(max_ap_drop)):
        raise ExportError(f"--max-ap-drop must be a finite number of percent, got {max_ap_drop}")
    if representative is not None and not isinstance(representative, int):
        raise ExportError("the accuracy budget draws its own calibration images (outside its split): "
                          "pass their number, not images")
    if int(max_float) < 1:
        raise ExportError(f"--max-float must be >= 1, got {max_float}")
    out = Path(out)
    pool, split = calibration_validation_split(config, split_images)
    n_cal = int(config.export.representative_images if representative is None else representative)
    calib = list(representative_images(pool, n_cal, tuple(config.model.image_size),
                                       input_normalization(config.model), seed=0))
    if via == "tf_keras":
        from fpn_export.qat import graph_to_convert

        model = graph_to_convert(model, config, via=via)[0]   # the twin once, for every plan
    exporter = get_task(config.model.task).export
    work = Path(tempfile.mkdtemp(prefix=".budget_", dir=out.parent))
    split_info = {"source": str(split.source), "images": len(split), "seed": SPLIT_SEED,
                  "calibration_images": len(calib), "calibration_pool": len(pool),
                  "files": [Path(r.image_path).name for r in split.records],
                  "rule": "training images outside data.val, drawn with the seed; disjoint from the calibration "
                          "images, which are drawn from the rest of the training set"}

    def export(mode, name, **kw):
        return exporter(model, config, labels, mode, out=work / f"{name}.tflite", representative=calib,
                        raw=raw, via=via, **kw)

    try:
        log(f"budget: fp32 reference on the calibration-validation split ({len(split)} training images)")
        reference = _evaluate(export("fp32", "fp32"), split, config, threads, bench_runs)
        ref_ap = reference["AP"]
        names: list = []
        paths = {}

        cache = {}

        def measure(n):
            if n in cache:
                return cache[n]
            if n == 0:
                paths[0] = export("int8", "plan_0", debug=True, keep_float=0)
                names.extend(ranking(work / "plan_0_debug" / "layer_stats.json", max_float))
            else:
                paths[n] = export("int8", f"plan_{n}", debug=True, keep_float=names[:n])
            r = _evaluate(paths[n], split, config, threads, bench_runs)
            r.update(kept_float=n, full_integer=n == 0, AP_drop_pct=_drop(r["AP"], ref_ap))
            r["meets"] = r["AP_drop_pct"] <= max_ap_drop
            log(f"budget: {n} layers float: AP {r['AP']:.4f} (drop {r['AP_drop_pct']:.2f} %, "
                f"budget {max_ap_drop:g} %), {r['latency_ms_p50']:.1f} ms, {r['size_bytes'] / 1e6:.2f} MB")
            cache[n] = r
            return r

        measure(0)   # the full int8 model, and the debugger's ranking
        chosen, tried = search_plans(measure, min(int(max_float), len(names)))
        plans = [dict(r, plan=f"int8, {n} float") for n, r in tried.items()]
        int16 = None
        if chosen is None:
            int16 = _int16x8_plan(export, split, config, threads, bench_runs, ref_ap, max_ap_drop)
            plans.append(int16)
        pick = chosen if chosen is not None else max((p for p in plans if p["kept_float"] is not None),
                                                     key=lambda p: p["AP"])["kept_float"]
        kept = names[:pick]
        if chosen is not None:
            verdict = (f"budget met: {pick} of {len(names)} ranked layers kept float, AP drop "
                       f"{tried[pick]['AP_drop_pct']:.2f} % <= {max_ap_drop:g} %")
            advice = None
        else:
            best = tried[pick]
            if "error" in int16:
                alt = f"whole-model int16x8: {int16['error']}"
            else:
                alt = (f"whole-model int16x8: drop {int16['AP_drop_pct']:.2f} %, {int16['latency_ms_p50']:.1f} ms"
                       + (" - it holds: --mode int16x8" if int16["meets"] else ""))
            verdict = (f"no int8 plan meets the {max_ap_drop:g} % budget (best: {pick} layers float, drop "
                       f"{best['AP_drop_pct']:.2f} %; {alt}): use quantization-aware training, --mode qat-int8")
            advice = "qat-int8"
        log(f"budget: {verdict}")
        budget = {"max_ap_drop": float(max_ap_drop), "met": chosen is not None, "verdict": verdict,
                  "recommend": advice, "metric": "COCO AP (pycocotools) through fpn_edge",
                  "reference": dict(reference, variant="fp32 TFLite"), "split": split_info,
                  "ranking": "QuantizationDebugger rmse_over_scale, worst first", "max_float": int(max_float),
                  "chosen": dict(tried[pick], plan=f"int8, {pick} float"), "plans": plans, "threads": threads}
        quantization = {"full_integer": pick == 0, "kept_float": kept,
                        "kept_float_layers": [layer_of(t) for t in kept],
                        "note": ("full-integer int8" if pick == 0 else
                                 f"{pick} layers kept float: not a full-integer model (float32 I/O; "
                                 "not for the Edge TPU)"),
                        "budget": {k: v for k, v in budget.items() if k != "split"} | {
                            "split": {k: v for k, v in split_info.items() if k != "files"}}}
        meta, anchors = read_metadata(paths[pick])
        # the plan's debug files were in the work folder: the ranking is in the log instead
        meta["export"] = {k: v for k, v in meta["export"].items() if k != "debug"} | {
            "mode": "int8-budget", "keep_float": pick}
        meta["quantization"] = quantization
        # the standard TFLite metadata (fpn_export.interop) is written again from this meta, like the archive
        path = write_export(strip_metadata(paths[pick].read_bytes()), meta, out, anchors=anchors)
        write_text_atomic(out.with_name(out.stem + "_budget.json"), json.dumps(
            {"model": str(path), "size_bytes": path.stat().st_size, "full_integer": pick == 0,
             "kept_float": kept, "kept_float_layers": [layer_of(t) for t in kept], "ranked_layers": names,
             **budget}, indent=2, default=float))
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)
