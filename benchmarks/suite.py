"""The performance suite, one function per measurement (``python -m benchmarks`` runs them all).

Per preset of ``keras_fpn.models.presets`` at 320x320 (``retinanet_resnet50_fpn`` is a 640 px
preset: overridden to 320 and said so in the results), batch 16:

``training_throughput``  images/s and step time of ``Model.fit`` on the full training pipeline
                         (the task's ``pipeline``: raccoon images from the
                         project's VOC reader, decode + cache, flip / scale jitter / photometric
                         augmentation, anchor matching, batching), the project's loss and optimizer;
                         steps timed by a callback after warmup steps (the first includes tracing).
``pipeline_throughput``  the same tf.data pipeline alone (is the input the bottleneck?).
``calibrate_bn``         precise BN (``recompute_bn_statistics``) on un-augmented real batches, so the
                         briefly trained model has realistic BN statistics before export.
``keras_latency``        batch-1 Keras forward pass: eager ``model(x)`` (``keras_fpn.compare``'s
                         measurement) and the compiled ``predict_on_batch``.
``export_variant``       ``fpn_export.convert.export_model`` (the ``keras-fpn export`` path: tf_keras
                         twin, post-process op, metadata; int8/int16x8 calibrated on real training
                         images through ``representative_from_config``).
``tflite_latency``       ``fpn-edge bench`` in a fresh TF-free process per (model, threads) on a real
                         image: end-to-end (letterbox + invoke + detections) and invoke-only p50/p90,
                         and that process's own peak RSS (``VmHWM``, see ``benchmarks.edge_child``).

The weights are random (heads) or the MobileNetV2 ImageNet file from ``$KERAS_FPN_DATA/weights``
(backbone), trained for the timed steps only: latency and size are those of the architecture, not
of a useful detector.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from fpn_edge.machine import loadavg, peak_rss_mb, reset_peak_rss, rss_mb

SUITE_SIZE = 320
ALL_MODES = ("fp32", "fp16", "dynamic", "int8", "int16x8")
QUICK_PRESETS = ("retinanet_mobilenetv2_fpn",)
QUICK_MODES = ("fp32", "int8")
SLOW_FACTOR = 2  # a variant slower than min_runs in SLOW_FACTOR x the latency budget gets fewer runs


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one suite run measures and how long (``quick`` / full defaults in ``settings``)."""
    quick: bool
    presets: tuple
    modes: tuple
    threads: tuple = (1, 2)
    batch_size: int = 16
    image_size: int = SUITE_SIZE
    warmup_steps: int = 10          # untimed fit steps (tracing, cache fill: 160 images = 10 batches)
    steps: int = 30                 # timed fit steps
    pipeline_batches: int = 20      # timed batches of the pipeline alone
    keras_runs: int = 30
    tflite_budget_s: float = 20.0   # timed runs per (model, threads) = budget / probe latency, clamped
    tflite_min_runs: int = 20
    tflite_max_runs: int = 200
    tflite_warmup: int = 10
    calibration_images: int = 64
    bn_batches: int = 5
    data_root: str = ""


def default_data_root() -> str:
    """``$KERAS_FPN_DATA``, else the ``shared/data`` folder beside the project checkout (the benchmarks'
    real data; product code has no such default)."""
    return os.environ.get("KERAS_FPN_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


def settings(quick: bool, **overrides) -> Settings:
    """Default settings of a quick or full run, with ``overrides`` (None values ignored)."""
    from keras_fpn.models.presets import PRESETS

    base = dict(quick=quick, presets=tuple(PRESETS), modes=ALL_MODES, data_root=default_data_root())
    if quick:
        base.update(presets=QUICK_PRESETS, modes=QUICK_MODES, warmup_steps=2, steps=3, pipeline_batches=3,
                    keras_runs=5, tflite_budget_s=3.0, tflite_min_runs=10, tflite_max_runs=50,
                    tflite_warmup=3, calibration_images=8, bn_batches=1)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**base)


# --------------------------------------------------------------------------- config and data

def backbone_weights_file(data_root: str, backbone: str, alpha: float) -> str | None:
    """The shared ImageNet backbone weights file for this backbone, or None (random init)."""
    if backbone != "mobilenetv2":
        return None
    path = Path(data_root) / "weights" / f"mobilenet_v2_{alpha:g}_no_top.weights.h5"
    if not path.is_file() and alpha == 1.0:
        path = Path(data_root) / "weights" / "mobilenet_v2_1.0_no_top.weights.h5"
    return str(path) if path.is_file() else None


def suite_config(preset: str, s: Settings):
    """``(Config, notes)`` for ``preset`` at the suite size on the raccoon data (num_classes still 0)."""
    from keras_fpn.config import config_from_dict
    from keras_fpn.models.presets import PRESETS

    p = PRESETS[preset]
    notes = []
    size = [s.image_size, s.image_size]
    if list(p["image_size"]) != size:
        notes.append(f"image_size overridden {p['image_size'][0]}x{p['image_size'][1]} -> "
                     f"{size[0]}x{size[1]} (the preset's own size is {p['image_size'][0]} px)")
    weights = backbone_weights_file(s.data_root, p["backbone"]["name"], p["backbone"]["alpha"])
    notes.append(f"backbone init: {'ImageNet weights ' + Path(weights).name if weights else 'random'}; "
                 "FPN and heads random")
    raccoon = Path(s.data_root) / "raccoon"
    raw = {"model": {"preset": preset, "image_size": size, "backbone": {"weights": weights}},
           "data": {"train": str(raccoon), "train_include": str(raccoon / "splits" / "train_labels.csv"),
                    "val": str(raccoon), "val_include": str(raccoon / "splits" / "test_labels.csv")},
           "train": {"batch_size": s.batch_size},
           "export": {"representative_images": s.calibration_images}}
    return config_from_dict(raw), notes


def load_data(cfg):
    """``(cfg with num_classes, train set, val set, labels)`` through the project's readers."""
    from keras_fpn.rundir import with_num_classes
    from keras_fpn.data.splits import load_datasets

    if not Path(cfg.data.train).exists():
        raise FileNotFoundError(f"{cfg.data.train}: raccoon data not found (set KERAS_FPN_DATA or --data)")
    train_set, val_set = load_datasets(cfg)
    cfg = with_num_classes(cfg, train_set.label_map.num_classes)
    return cfg, train_set, val_set, list(train_set.label_map.names)


# --------------------------------------------------------------------------- training

def step_stats(seconds, batch_size: int) -> dict:
    """Images/s and step time statistics (ms) of per-step ``seconds``."""
    a = np.asarray(seconds, np.float64)
    return {"images_per_s": float(batch_size * len(a) / a.sum()),
            "step_ms": {"p50": float(np.percentile(a, 50) * 1e3), "p90": float(np.percentile(a, 90) * 1e3),
                        "mean": float(a.mean() * 1e3), "min": float(a.min() * 1e3), "max": float(a.max() * 1e3)}}


def step_timer(keras):
    """A ``fit`` callback recording the time at train begin and at every batch end (``ends``) and
    the last logged loss (``last_loss``). Step ``i`` takes ``ends[i + 1] - ends[i]``, data wait
    included. ``keras`` is passed in so callers without Keras 3 at import (a KerasHub venv) work."""
    class StepTimer(keras.callbacks.Callback):
        last_loss = None

        def on_train_begin(self, logs=None):
            self.ends = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])
    return StepTimer()


def training_throughput(cfg, train_set, *, warmup: int, steps: int, log=print):
    """Time ``Model.fit`` steps on the full training pipeline. Returns ``(result, model)``.

    The model, losses, optimizer and LR schedule are built as ``keras_fpn.training.train.train``
    builds them (schedule = the start of a ``train.epochs`` run). A callback records the time at
    every batch end; step ``i`` takes ``end[i] - end[i-1]`` (data wait included), the first
    ``warmup`` steps are not counted.
    """
    import keras

    from keras_fpn.models.factory import build_model
    from keras_fpn.tasks import get_task
    from keras_fpn.training.optimizer import build_optimizer

    keras.utils.set_random_seed(cfg.train.seed)
    t0 = time.perf_counter()
    model = build_model(cfg.model)
    build_s = time.perf_counter() - t0
    per_epoch = max(len(train_set) // cfg.train.batch_size, 1)
    task = get_task(cfg.model.task)
    loss, weights = task.losses(cfg)
    model.compile(optimizer=build_optimizer(cfg, per_epoch), loss=loss, loss_weights=weights)
    ds = task.pipeline(cfg, train_set, training=True).repeat()
    timer = step_timer(keras)
    reset_peak_rss()
    rss_before = rss_mb()
    log(f"   fit: {warmup} warmup + {steps} timed steps, batch {cfg.train.batch_size}")
    model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0, shuffle=False)
    step_s = np.diff(timer.ends)
    res = {"batch_size": cfg.train.batch_size, "warmup_steps": warmup, "timed_steps": steps,
           **step_stats(step_s[warmup:], cfg.train.batch_size),
           "first_step_s": float(step_s[0]), "build_s": build_s, "final_loss": timer.last_loss,
           "params": int(model.count_params()),
           "rss_mb": {"before_fit": rss_before, "peak_during_fit": peak_rss_mb()},
           "data_cache": bool(cfg.data.cache), "optimizer": cfg.train.optimizer, "loadavg": loadavg()}
    if timer.last_loss is None or not math.isfinite(timer.last_loss):
        res["warning"] = f"loss is {timer.last_loss}"
    return res, model


def pipeline_throughput(cfg, train_set, *, warmup: int, batches: int) -> dict:
    """Images/s of the training tf.data pipeline alone (same augmentation and matching)."""
    from keras_fpn.tasks import get_task

    it = iter(get_task(cfg.model.task).pipeline(cfg, train_set, training=True).repeat())
    for _ in range(warmup):
        next(it)
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t)
    return {"batches": batches, "warmup_batches": warmup, **step_stats(times, cfg.train.batch_size),
            "loadavg": loadavg()}


def calibrate_bn(model, cfg, train_set, batches: int) -> dict:
    """Precise BN on ``batches`` un-augmented training batches (the ``keras-fpn train`` code path)."""
    from keras_fpn.training.callbacks import recompute_bn_statistics
    from keras_fpn.training.train import precise_bn_batches

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precise_bn_batches=batches))
    t0 = time.perf_counter()
    n = recompute_bn_statistics(model, precise_bn_batches(cfg, train_set))
    bad = [v.path for v in model.weights if not np.all(np.isfinite(np.asarray(v)))]
    res = {"batches": n, "seconds": time.perf_counter() - t0}
    if bad:
        res["warning"] = f"{len(bad)} non-finite weight tensors (first: {bad[0]})"
    return res


# --------------------------------------------------------------------------- Keras inference

def keras_latency(model, image_size, runs: int) -> dict:
    """Batch-1 latency (ms, p50/p90) of the Keras model: eager call and compiled predict."""
    from keras_fpn.compare.report import keras_latency_ms

    eager = keras_latency_ms(model, tuple(image_size), runs=runs)
    x = np.zeros((1, *image_size, 3), np.float32)
    model.predict_on_batch(x)  # traces the predict function
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model.predict_on_batch(x)
        times.append((time.perf_counter() - t) * 1e3)
    compiled = {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}
    return {"eager_ms": eager, "compiled_ms": compiled, "runs": runs, "loadavg": loadavg()}


# --------------------------------------------------------------------------- TFLite

def export_variant(model, cfg, labels, mode: str, out: Path) -> dict:
    """Export ``model`` to ``out`` in ``mode`` with ``fpn_export.convert.export_model``."""
    from fpn_export.convert import export_model
    from fpn_export.modes import MODES

    t0 = time.perf_counter()
    calib = cfg.export.representative_images if MODES[mode].calibrated else None
    path = export_model(model, mode, out=out, config=cfg, labels=labels, representative=calib)
    return {"mode": mode, "file": str(path), "size_bytes": path.stat().st_size,
            "size_mb": path.stat().st_size / 1e6, "export_s": time.perf_counter() - t0,
            "calibration_images": calib}


def _edge_bench(path, threads: int, runs: int, warmup: int, image) -> dict:
    """``fpn-edge bench`` in a fresh process (TF never imported there); its JSON result plus the
    process's own peak RSS (``benchmarks.edge_child``: ``VmHWM``, not the inherited ``ru_maxrss``)."""
    with tempfile.TemporaryDirectory(prefix="fpn_bench_") as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "benchmarks.edge_child", "bench", str(path), "--threads", str(threads),
               "--runs", str(runs), "--warmup", str(warmup), "--out", str(out), "--quiet"]
        if image is not None:
            cmd += ["--image", str(image)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0 or not out.is_file():
            text = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if not ln.startswith("INFO:")]
            raise RuntimeError(f"fpn-edge bench exited {proc.returncode}: {' | '.join(text[-3:])}")
        return json.loads(out.read_text())


def tflite_latency(path, threads: int, *, image=None, budget_s: float, min_runs: int, max_runs: int,
                   warmup: int) -> dict:
    """Latency p50/p90 (end-to-end and invoke) and peak RSS of ``path`` through ``fpn_edge``.

    A 2-run probe sets the number of timed runs to ``budget_s / latency`` clamped to
    [``min_runs``, ``max_runs``]. A model so slow that ``min_runs`` would take more than
    ``SLOW_FACTOR x budget_s`` (int16x8 runs reference kernels: 2.6 s per inference for the
    MobileNetV2 RetinaNet at 320 px, far more for ResNet50) gets ``SLOW_FACTOR x budget_s`` worth
    of runs (at least 3) and one warmup run instead; the result records the run count.
    """
    probe = _edge_bench(path, threads, runs=2, warmup=1, image=image)
    probe_ms = probe["latency_ms"].get("end_to_end", probe["latency_ms"]["invoke"])["p50"]
    runs = int(min(max(budget_s * 1e3 / max(probe_ms, 1e-3), min_runs), max_runs))
    if probe_ms * runs > SLOW_FACTOR * budget_s * 1e3:
        runs, warmup = max(3, int(SLOW_FACTOR * budget_s * 1e3 / probe_ms)), 1
    b = _edge_bench(path, threads, runs=runs, warmup=warmup, image=image)
    lat = b["latency_ms"]
    pick = lambda d: {"p50": d["p50"], "p90": d["p90"], "mean": d["mean"]}  # noqa: E731
    return {"threads": threads, "runs": runs, "warmup": warmup,
            "end_to_end_ms": pick(lat["end_to_end"]) if "end_to_end" in lat else None,
            "invoke_ms": pick(lat["invoke"]), "peak_rss_mb": b.get("vm_hwm_mb"),
            "ru_maxrss_mb": b["peak_rss_mb"], "rss_mb": b["rss_mb"],
            "tensorflow_imported": b.get("tensorflow_imported"), "backend": b["backend"], "delegate": b["delegate"],
            "input": b["input"], "loadavg": loadavg()}


# --------------------------------------------------------------------------- one preset

def _part(container: dict, key: str, fn: Callable, log, save: Callable):
    """Run one measurement; store its result (or its error) as ``container[key]``, then save."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # one failing part must not lose the others
        first = str(exc).splitlines()[0] if str(exc) else ""
        log(f"   {key}: FAILED {type(exc).__name__}: {first}")
        container[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                          "traceback": traceback.format_exc()[-4000:]}
        save()
        return None
    container[key] = out
    log(f"   {key}: {time.perf_counter() - t0:.0f} s")
    save()
    return out


def run_preset(preset: str, s: Settings, work_dir: Path, *, machine: str, save: Callable, log=print) -> dict:
    """Every measurement of one preset; ``save(result)`` is called after each part."""
    import gc

    import keras

    res = {"preset": preset, "machine": machine, "image_size": [s.image_size, s.image_size],
           "batch_size": s.batch_size}
    sv = lambda: save(res)  # noqa: E731
    cfg, notes = suite_config(preset, s)
    res["notes"] = notes
    cfg, train_set, val_set, labels = load_data(cfg)
    res["data"] = {"train_images": len(train_set), "val_images": len(val_set) if val_set else 0,
                   "classes": labels, "source": cfg.data.train}
    image = (val_set or train_set).records[0].image_path
    res["bench_image"] = image

    trained = {}

    def train():
        out, trained["model"] = training_throughput(cfg, train_set, warmup=s.warmup_steps, steps=s.steps,
                                                    log=log)
        log(f"   training: {out['images_per_s']:.2f} images/s, step p50 {out['step_ms']['p50']:.0f} ms")
        return out

    _part(res, "training", train, log, sv)
    _part(res, "pipeline", lambda: pipeline_throughput(cfg, train_set, warmup=min(s.warmup_steps, 10),
                                                       batches=s.pipeline_batches), log, sv)
    model = trained.pop("model", None)
    if model is None:  # training failed: still measure the architecture
        from keras_fpn.models.factory import build_model
        model = build_model(cfg.model)
    _part(res, "bn_calibration", lambda: calibrate_bn(model, cfg, train_set, s.bn_batches), log, sv)
    _part(res, "keras_latency", lambda: keras_latency(model, tuple(cfg.model.image_size), s.keras_runs),
          log, sv)

    res["tflite"] = {}
    for mode in s.modes:
        entry = res["tflite"][mode] = {}
        path = work_dir / f"{preset}_{s.image_size}_{mode}.tflite"
        if _part(entry, "export", lambda: export_variant(model, cfg, labels, mode, path), log, sv) is None:
            continue
        entry["latency"] = {}
        for t in s.threads:
            lat = _part(entry["latency"], f"threads{t}", lambda: tflite_latency(
                path, t, image=image, budget_s=s.tflite_budget_s, min_runs=s.tflite_min_runs,
                max_runs=s.tflite_max_runs, warmup=s.tflite_warmup), log, sv)
            if lat is not None:
                e2e = lat["end_to_end_ms"] or lat["invoke_ms"]
                log(f"   {mode}, {t} thread(s): p50 {e2e['p50']:.1f} ms, p90 {e2e['p90']:.1f} ms, "
                    f"{lat['runs']} runs, peak RSS {lat['peak_rss_mb']:.0f} MB")
    model = None  # free it before the next preset
    keras.backend.clear_session()
    gc.collect()
    return res


def run_suite(s: Settings, *, work_dir: Path, machine: dict, save: Callable, log=print) -> dict:
    """All presets; ``save(results)`` after each part. Returns the results dict."""
    from benchmarks.machine import machine_line

    results = {"suite": "keras-fpn performance suite", "quick": s.quick,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
               "settings": dataclasses.asdict(s), "loadavg_start": loadavg(), "presets": {}}
    line = machine_line(machine)
    t0 = time.perf_counter()
    for preset in s.presets:
        log(f"== {preset} ({s.image_size} px, batch {s.batch_size})")

        def save_preset(r, preset=preset):
            results["presets"][preset] = r
            save(results)
        try:
            run_preset(preset, s, work_dir, machine=line, save=save_preset, log=log)
        except Exception as exc:
            log(f"   {preset}: FAILED {type(exc).__name__}: {exc}")
            results["presets"].setdefault(preset, {"preset": preset})["error"] = f"{type(exc).__name__}: {exc}"
            results["presets"][preset]["traceback"] = traceback.format_exc()[-4000:]
    results["seconds"] = time.perf_counter() - t0
    results["loadavg_end"] = loadavg()
    save(results)
    return results


def count_errors(results: dict) -> int:
    """Number of failed parts anywhere in ``results``."""
    def walk(d):
        if isinstance(d, dict):
            return int("error" in d) + sum(walk(v) for k, v in d.items() if k != "error")
        return 0
    return walk(results.get("presets", {}))

