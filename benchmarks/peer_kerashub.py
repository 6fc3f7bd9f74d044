"""Peer comparison: KerasHub ``RetinaNetObjectDetector`` vs keras-fpn, same machine, same run.

    python benchmarks/peer_kerashub.py --kerashub-python /path/to/khvenv/bin/python

KerasHub is benchmarked in its own virtual environment (installing ``keras-hub`` pulls
``tensorflow-text`` and the full ``tensorflow`` wheel, which would replace this project's
``tensorflow-cpu``): make one with ``python -m venv khvenv && khvenv/bin/pip install keras-hub
"tensorflow==2.21.*"`` and pass its interpreter. This file runs three ways:

- the driver (project venv): runs each side in a child process, one after the other, then
  times every side's .tflite files with *one* timing function (``ai_edge_litert``, XNNPACK,
  1 and 2 threads, random input, ``invoke`` only) so the runtimes compare like for like;
- ``--child ours``: keras-fpn's ``retinanet_mobilenetv2_fpn`` preset through the project's
  own training pipeline (VOC reader, cache, augmentation, anchor matching in ``tf.data``) and
  exporter (``fpn_export``, raw outputs so both sides end at the head outputs);
  ``--child ours-fpnlite``: the same for ``ssd_mobilenetv2_fpnlite`` (separable convs);
- ``--child kerashub-resnet50`` / ``--child kerashub-mobilenetv3small`` (KerasHub venv; imports
  only TensorFlow, Keras, KerasHub and numpy): ``RetinaNetObjectDetector`` with KerasHub's
  defaults (9 anchors per cell, 4 x 256 head convs, P3-P7), random init (presets cannot be
  downloaded here), trained with ``Model.fit`` where KerasHub matches anchors inside
  ``compute_loss``; converted with the standard ``tf.lite.TFLiteConverter`` recipe a KerasHub
  user would follow (fp32; int8 = full-integer ops, float I/O, calibrated on training images).
  MobileNetV3-small: KerasHub's ``MobileNetBackbone`` has no ``pyramid_outputs``, so the
  ``keras.applications.MobileNetV3Small`` graph is wrapped with one (P3-P5 = the last
  stride-8/16/32 feature maps) — the patch the issue names.

Both sides: 320x320, batch 8, the raccoon training split (160 images, 1 class), random init,
``--warmup-steps`` untimed then ``--steps`` timed ``Model.fit`` steps (step time = time between
batch ends, data wait included). Writes ``benchmarks/results/peer_kerashub.{md,json}``;
``--sides ours-fpnlite --append`` adds a side to an earlier result (each side records its start).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))
#: keras-fpn sides and their presets; ``ours`` is the one the comparison is about.
OUR_PRESETS = {"ours": "retinanet_mobilenetv2_fpn", "ours-fpnlite": "ssd_mobilenetv2_fpnlite"}
KERASHUB_SIDES = ("kerashub-resnet50", "kerashub-mobilenetv3small")
SIDES = (*OUR_PRESETS, *KERASHUB_SIDES)


# --------------------------------------------------------------------------- shared by every child

def _timed(steps: dict, *, first_step_s: float, warmup: int, steps_n: int, batch: int, final_loss) -> dict:
    """The training entry both sides report (flat keys)."""
    return {"images_per_s": steps["images_per_s"], "step_ms_p50": steps["step_ms"]["p50"],
            "step_ms_p90": steps["step_ms"]["p90"], "first_step_s": first_step_s, "warmup_steps": warmup,
            "timed_steps": steps_n, "batch_size": batch, "final_loss": final_loss,
            "loadavg": list(os.getloadavg())}


def _fit_stats(model, ds, *, warmup: int, steps: int, batch: int, keras) -> dict:
    from benchmarks.suite import step_stats, step_timer  # TF-free at import: fine in the KerasHub venv

    timer = step_timer(keras)
    model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    s = np.diff(timer.ends)
    return _timed(step_stats(s[warmup:], batch), first_step_s=float(s[0]), warmup=warmup, steps_n=steps,
                  batch=batch, final_loss=timer.last_loss)


def _forward_latency(fn, x, runs: int) -> dict:
    """Batch-1 latency (ms) of a compiled forward function (``tf.function``)."""
    for _ in range(3):
        fn(x)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(x)
        _ = [np.asarray(v) for v in (out.values() if isinstance(out, dict) else
                                     out if isinstance(out, (list, tuple)) else [out])]
        t.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)), "runs": runs}


# --------------------------------------------------------------------------- KerasHub child

def _raccoon_train(data_root: Path, size: int):
    """Raccoon training split resized to ``size`` (stretch): uint8 images, yxyx pixel boxes (-1 padded)."""
    import tensorflow as tf

    rows = {}
    with open(data_root / "raccoon" / "splits" / "train_labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["filename"], []).append(r)
    names = sorted(rows)
    most = max(len(v) for v in rows.values())
    images = np.zeros((len(names), size, size, 3), np.uint8)
    boxes = np.zeros((len(names), most, 4), np.float32)
    labels = -np.ones((len(names), most), np.float32)
    for i, name in enumerate(names):
        im = tf.io.decode_image(tf.io.read_file(str(data_root / "raccoon" / "images" / name)), channels=3,
                                expand_animations=False)
        h, w = int(im.shape[0]), int(im.shape[1])
        images[i] = np.asarray(tf.cast(tf.round(tf.image.resize(im, (size, size))), tf.uint8))
        for j, r in enumerate(rows[name]):
            sy, sx = size / h, size / w
            boxes[i, j] = [float(r["ymin"]) * sy, float(r["xmin"]) * sx, float(r["ymax"]) * sy, float(r["xmax"]) * sx]
            labels[i, j] = 0
    return images, boxes, labels


def _mobilenetv3small_encoder(keras, size: int):
    """``keras.applications.MobileNetV3Small`` with the ``pyramid_outputs`` KerasHub's RetinaNet needs."""
    base = keras.applications.MobileNetV3Small(input_shape=(size, size, 3), include_top=False, weights=None,
                                               include_preprocessing=False)
    last = {}
    for layer in base.layers:  # the last output of each stride (activations, after the residual add)
        shape = layer.output.shape
        if len(shape) == 4 and shape[1]:
            stride = size // shape[1]
            if stride in (8, 16, 32):
                last[stride] = layer.output
    encoder = keras.Model(base.inputs, [last[8], last[16], last[32]], name="mobilenetv3small_encoder")
    encoder.pyramid_outputs = {"P3": last[8], "P4": last[16], "P5": last[32]}
    return encoder


def _kerashub_model(side: str, size: int):
    import keras
    import keras_hub

    if side == "kerashub-resnet50":
        encoder = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
            stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
            use_pre_activation=False, image_shape=(size, size, 3))
        use_p5 = False
    else:
        encoder = _mobilenetv3small_encoder(keras, size)
        use_p5 = True
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=7, use_p5=use_p5,
                                                  image_shape=(size, size, 3))
    model = keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=1, bounding_box_format="yxyx")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), box_loss="auto", classification_loss="auto")
    return model


def _tflite_convert(tf, model, saved_dir: Path, mode: str, calib) -> bytes:
    """The Keras 3 converter recipe: ``model.export`` (SavedModel, the forward pass: head outputs,
    no NMS), then ``TFLiteConverter.from_saved_model``."""
    if not saved_dir.is_dir():
        model.export(str(saved_dir), format="tf_saved_model", verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_dir))
    if mode == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([c[None]] for c in calib)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return conv.convert()


def child_kerashub(side: str, a) -> dict:
    import keras
    import keras_hub
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    images, boxes, labels = _raccoon_train(Path(a.data), a.image_size)
    t0 = time.perf_counter()
    model = _kerashub_model(side, a.image_size)
    res = {"side": side, "library": f"keras-hub {keras_hub.__version__}", "build_s": time.perf_counter() - t0,
           "params": int(model.count_params())}

    def augment(img, y):  # decode is done; KerasHub itself has no detection augmentation: flip only
        flip = tf.random.uniform([]) < 0.5
        img = tf.cast(img, tf.float32)
        img = tf.where(flip, img[:, ::-1], img)
        b = y["boxes"]
        b = tf.where(flip, tf.stack([b[:, 0], a.image_size - b[:, 3], b[:, 2], a.image_size - b[:, 1]], -1), b)
        return img, {"boxes": b, "labels": y["labels"]}
    ds = (tf.data.Dataset.from_tensor_slices((images, {"boxes": boxes, "labels": labels}))
          .shuffle(len(images), seed=0).repeat().map(augment, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(a.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    res["training"] = _fit_stats(model, ds, warmup=a.warmup_steps, steps=a.steps, batch=a.batch_size, keras=keras)
    fwd = tf.function(lambda x: model(x, training=False))
    res["keras_latency_ms"] = _forward_latency(fwd, tf.zeros([1, a.image_size, a.image_size, 3]), a.keras_runs)
    calib = images[: a.calibration_images].astype(np.float32)
    res["tflite"] = {}
    for mode in ("fp32", "int8"):
        t0 = time.perf_counter()
        data = _tflite_convert(tf, model, Path(a.work_dir) / f"{side}_saved_model", mode, calib)
        path = Path(a.work_dir) / f"{side}_{mode}.tflite"
        path.write_bytes(data)
        res["tflite"][mode] = {"file": str(path), "size_mb": len(data) / 1e6, "export_s": time.perf_counter() - t0}
    return res


# --------------------------------------------------------------------------- keras-fpn child

def child_ours(side: str, a) -> dict:
    import tensorflow as tf

    from benchmarks.suite import load_data, settings, suite_config, training_throughput
    from fpn_export.convert import export_model

    preset = OUR_PRESETS[side]
    s = settings(False, presets=(preset,), batch_size=a.batch_size, image_size=a.image_size,
                 data_root=a.data, calibration_images=a.calibration_images)
    cfg, notes = suite_config(preset, s)
    # random init on both sides: the speed of the architectures, not of pretrained weights
    from keras_fpn.config import replace_dotted

    cfg = replace_dotted(cfg, "model.backbone.weights", None)
    cfg, train_set, _val, labels = load_data(cfg)
    train, model = training_throughput(cfg, train_set, warmup=a.warmup_steps, steps=a.steps, log=lambda m: None)
    res = {"side": side, "library": "keras-fpn", "preset": preset,
           "params": train.pop("params"), "build_s": train.pop("build_s")}
    res["training"] = _timed(train, first_step_s=train["first_step_s"], warmup=a.warmup_steps, steps_n=a.steps,
                             batch=a.batch_size, final_loss=train["final_loss"])
    fwd = tf.function(lambda x: model(x, training=False))
    res["keras_latency_ms"] = _forward_latency(fwd, tf.zeros([1, a.image_size, a.image_size, 3]), a.keras_runs)
    res["tflite"] = {}
    for mode in ("fp32", "int8"):
        path = Path(a.work_dir) / f"{side}_{mode}_raw.tflite"
        t0 = time.perf_counter()
        export_model(model, mode, out=path, raw=True, config=cfg, labels=labels,
                     representative=a.calibration_images if mode == "int8" else None)
        res["tflite"][mode] = {"file": str(path), "size_mb": path.stat().st_size / 1e6,
                               "export_s": time.perf_counter() - t0, "note": "fpn_export, --raw"}
    return res


# --------------------------------------------------------------------------- driver

def invoke_latency(path, threads: int, runs: int) -> dict:
    """Invoke-only latency (ms) of a .tflite with ai_edge_litert (XNNPACK), random input."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        dt = np.dtype(d["dtype"])
        x = (rng.integers(0, 255, d["shape"], endpoint=True).astype(dt) if np.issubdtype(dt, np.integer)
             else rng.uniform(0, 255, d["shape"]).astype(dt))
        it.set_tensor(d["index"], x)
    for _ in range(5):
        it.invoke()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        t.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)), "runs": runs,
            "loadavg": list(os.getloadavg())}


def _run_child(python: str, side: str, a, work: Path, log) -> dict:
    out = work / f"{side}.json"
    cmd = [python, str(Path(__file__).resolve()), "--child", side, "--out-json", str(out), "--work-dir", str(work),
           "--data", a.data, "--steps", str(a.steps), "--warmup-steps", str(a.warmup_steps),
           "--batch-size", str(a.batch_size), "--image-size", str(a.image_size),
           "--calibration-images", str(a.calibration_images), "--keras-runs", str(a.keras_runs)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0 or not out.is_file():
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-5:]
        log(f"   {side}: FAILED (exit {proc.returncode}): {' | '.join(tail)}")
        return {"side": side, "error": f"exit {proc.returncode}: " + "\n".join(tail)}
    res = json.loads(out.read_text())
    res["child_seconds"] = time.perf_counter() - t0
    return res


def render(r: dict) -> str:
    from benchmarks.machine import machine_line

    sides = r["sides"]
    ours = [n for n in OUR_PRESETS if "training" in sides.get(n, {})]
    lines = ["# Peer comparison: KerasHub RetinaNet vs keras-fpn", "",
             f"Machine: {machine_line(r['machine'])}. {r['date']}. Both sides at {r['image_size']}x{r['image_size']}, "
             f"batch {r['batch_size']}, random init, raccoon training split; {r['warmup_steps']} warmup + "
             f"{r['steps']} timed `Model.fit` steps each, run one after the other in separate processes. "
             "TFLite timed by the same function for every file (ai_edge_litert, XNNPACK, invoke only, "
             "raw head outputs on both sides).", "",
             "| model | params | train img/s | step p50 (ms) | Keras fwd p50 (ms) | TFLite fp32 p50 1 / 2 thr (ms) "
             f"| TFLite int8 p50 1 / 2 thr (ms) | fp32 / int8 size (MB) | train img/s: {' / '.join(ours)} ÷ this |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in sides.items():
        if "error" in s:
            lines.append(f"| {name} | error: {s['error'].splitlines()[-1][:150]} |||||||")
            continue
        t, lat = s["training"], s.get("tflite_latency", {})

        def cell(mode):
            d = lat.get(mode, {})
            return " / ".join(f"{d[k]['p50']:.1f}" if k in d else "—" for k in ("threads1", "threads2"))
        ratio = "—" if name in OUR_PRESETS or not ours else " / ".join(
            f"{sides[o]['training']['images_per_s'] / t['images_per_s']:.2f}x" for o in ours)
        label = f"{name} ({s.get('preset', s['library'])})"
        lines.append(f"| {label} | {s['params'] / 1e6:.2f} M | {t['images_per_s']:.2f} | {t['step_ms_p50']:.0f} | "
                     f"{s['keras_latency_ms']['p50']:.1f} | {cell('fp32')} | {cell('int8')} | "
                     f"{s['tflite']['fp32']['size_mb']:.1f} / {s['tflite']['int8']['size_mb']:.1f} | {ratio} |")
    done = [(n, s) for n, s in sides.items() if "training" in s]
    lines += ["", "Load average (1 min) at each side's training end: " + ", ".join(
        f"{n} {s['training']['loadavg'][0]:.2f}" for n, s in done) + ".",
        "Run start per side: " + ", ".join(f"{n} {s.get('date', r['date'])}" for n, s in done) + ".", ""]
    lines += [r.get("notes", ""), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kerashub-python", default=os.environ.get("KERAS_HUB_PYTHON"),
                    help="python of a venv with keras-hub installed (default $KERAS_HUB_PYTHON)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {', '.join(SIDES)}")
    ap.add_argument("--data", default=os.environ.get("KERAS_FPN_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--calibration-images", type=int, default=32)
    ap.add_argument("--keras-runs", type=int, default=20)
    ap.add_argument("--tflite-runs", type=int, default=50)
    ap.add_argument("--out", default=str(RESULTS / "peer_kerashub"), help="output stem (STEM.md + STEM.json)")
    ap.add_argument("--work-dir", default=None, help="keep the .tflite files here (default: a temp dir)")
    ap.add_argument("--append", action="store_true",
                    help="keep the sides already in STEM.json and add these (each side records its own "
                         "date and load average)")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--out-json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        res = child_ours(a.child, a) if a.child in OUR_PRESETS else child_kerashub(a.child, a)
        Path(a.out_json).write_text(json.dumps(res, indent=2))
        return 0

    import tempfile

    from benchmarks.machine import machine_info
    from benchmarks.report import output_paths, write_json_md

    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    bad = [s for s in sides if s not in SIDES]
    if bad:
        print(f"error: unknown side(s) {', '.join(bad)} (choose from {', '.join(SIDES)})", file=sys.stderr)
        return 2
    if any(s in KERASHUB_SIDES for s in sides) and not (a.kerashub_python and Path(a.kerashub_python).is_file()):
        print("error: --kerashub-python (or $KERAS_HUB_PYTHON) must name the python of a venv with keras-hub",
              file=sys.stderr)
        return 2
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="fpn_peer_"))
    work.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    r = {"benchmark": "peer_kerashub", "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_info(),
         "image_size": a.image_size, "batch_size": a.batch_size, "steps": a.steps, "warmup_steps": a.warmup_steps,
         "tflite_runs": a.tflite_runs, "sides": {},
         "notes": "KerasHub MobileNetV3-small: keras.applications.MobileNetV3Small wrapped with pyramid_outputs "
                  "(KerasHub's MobileNetBackbone has none). KerasHub TFLite: model.export (SavedModel of the "
                  "forward pass) -> TFLiteConverter.from_saved_model (fp32; int8 = TFLITE_BUILTINS_INT8, "
                  "float I/O). Ours: fpn_export --raw (tf_keras "
                  "twin; int8 with uint8 I/O)."}
    previous = output_paths(a.out)[1]
    if a.append and previous.is_file():
        prev = json.loads(previous.read_text())
        r["sides"] = {k: {"date": prev["date"], **v} for k, v in prev["sides"].items() if k not in sides}
    save = lambda: write_json_md(a.out, r, render(r))  # noqa: E731
    for side in sides:
        log(f"== {side}: train {a.warmup_steps}+{a.steps} steps, Keras latency, TFLite fp32/int8")
        python = sys.executable if side in OUR_PRESETS else a.kerashub_python
        started = time.strftime("%Y-%m-%d %H:%M %Z")
        res = r["sides"][side] = _run_child(python, side, a, work, log)
        res["date"] = started
        if "error" not in res:
            log(f"   {side}: {res['training']['images_per_s']:.2f} img/s, {res['params'] / 1e6:.2f} M params")
            res["tflite_latency"] = {}
            for mode, info in res["tflite"].items():
                res["tflite_latency"][mode] = {f"threads{t}": invoke_latency(info["file"], t, a.tflite_runs)
                                               for t in (1, 2)}
                log(f"   {side} {mode}: " + ", ".join(f"{k} {v['p50']:.1f} ms"
                                                     for k, v in res["tflite_latency"][mode].items()))
        save()
    md, _ = save()
    log(f"wrote {md}")
    return int(any("error" in s for s in r["sides"].values()))


if __name__ == "__main__":
    sys.exit(main())
