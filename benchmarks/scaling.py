"""Training throughput under ``train.strategy`` / ``train.mixed_precision``: images/s for 1, 2, ...
replicas and for float16 / bfloat16 mixed precision (``keras_fpn.training.distribute``).

    python benchmarks/scaling.py                          # CPU: 1 and 2 replicas on logical CPU devices
    python benchmarks/scaling.py --gpus --replicas 1,2,4,8 --batch-size 64 --out /tmp/scaling_gpu

Each variant runs in a fresh process (TensorFlow's logical devices and Keras' dtype policy are
fixed when TensorFlow starts) and times ``Model.fit`` steps of the demo model
(``configs/synthetic_retinanet_mobilenetv3small.yaml``: MobileNetV3-Small FPN, 160 px) on
generated synthetic images, built exactly as ``keras-fpn train`` builds it
(``keras_fpn.training.train.new_model`` / ``compile_model``: synchronized BN and the
global-gradient optimizer with several replicas, loss scaling for float16). The batch is the
global batch (each replica gets batch / replicas). A callback times every step after the warmup
(data wait included); images/s = timed images / timed seconds.

On a CPU the replicas are logical devices that share the same cores: they measure what the
strategy costs (the split, the all-reduces of gradients and BN statistics), not a speed-up.
Writes ``STEM.md`` and ``STEM.json`` (default ``benchmarks/results/scaling``) with the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic_retinanet_mobilenetv3small.yaml"
CPU_NOTE = """Replicas are logical CPU devices sharing these cores: the 2-replica rows show what the
strategy costs (the batch split, the all-reduces of gradients and of the synchronized BN statistics),
not a speed-up. Mixed precision pays on GPUs with float16/bfloat16 units (tensor cores). x86 CPUs
have no float16 arithmetic (slower than float32); bfloat16 runs natively where the flags list
avx512_bf16 or amx (oneDNN). "first step" includes tracing. The load average
is that of the shared machine when the variant finished: one measurement per variant on a shared
machine, so only differences well above 15 % mean something."""
GPU_COMMAND = ("python benchmarks/scaling.py --gpus --replicas 1,2,4,8 --precisions float32,float16,bfloat16 "
               "--batch-size 64 --out benchmarks/results/scaling_gpu")


def child(spec: dict) -> dict:
    """One variant, in this (fresh) process: ``spec`` = replicas, precision, gpus, batch_size,
    warmup, steps, data; returns the timing."""
    import tensorflow as tf

    if not spec["gpus"] and spec["replicas"] > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * spec["replicas"])
    import keras
    import numpy as np

    from benchmarks.suite import step_stats, step_timer
    from keras_fpn.config import load_config
    from keras_fpn.data.splits import load_datasets
    from keras_fpn.rundir import with_num_classes
    from keras_fpn.tasks import get_task
    from keras_fpn.training import distribute
    from keras_fpn.training.train import compile_model, new_model

    kind = "gpu" if spec["gpus"] else "cpu"
    sets = [f"data.train={spec['data']}/train.json", f"data.val={spec['data']}/val.json",
            f"train.batch_size={spec['batch_size']}",
            f"train.mixed_precision={'false' if spec['precision'] == 'float32' else spec['precision']}"]
    if spec["replicas"] > 1:
        devices = ", ".join(f"/{kind}:{i}" for i in range(spec["replicas"]))
        sets += ["train.strategy=mirrored", f"train.devices=[{devices}]"]
    cfg = load_config(CONFIG, sets)
    place = distribute.placement(cfg.train)
    train_set, _ = load_datasets(cfg)
    cfg = with_num_classes(cfg, train_set.label_map.num_classes)
    ds = get_task(cfg.model.task).pipeline(cfg, train_set, training=True).repeat()
    if place.distributed:
        ds = distribute.distribute_options(ds)
    timer = step_timer(keras)
    with distribute.precision_policy(cfg.train.mixed_precision):
        keras.utils.set_random_seed(0)
        model = new_model(cfg, place, ds.element_spec)
        compile_model(model, cfg, place, ds, max(len(train_set) // cfg.train.batch_size, 1))
        model.fit(ds, epochs=1, steps_per_epoch=spec["warmup"] + spec["steps"], callbacks=[timer], verbose=0,
                  shuffle=False)
    step_s = np.diff(timer.ends)
    return {**spec, "device": kind, "strategy": cfg.train.strategy, "replicas_in_sync": place.replicas,
            "per_replica_batch": cfg.train.batch_size // place.replicas,
            **step_stats(step_s[spec["warmup"]:], cfg.train.batch_size), "first_step_s": float(step_s[0]),
            "final_loss": timer.last_loss, "loadavg": [round(v, 2) for v in os.getloadavg()]}


def _table(results: list) -> str:
    base = {r["precision"]: r["images_per_s"] for r in results if r.get("replicas") == 1 and "images_per_s" in r}
    rows = ["| replicas | precision | per-replica batch | images/s | step p50 ms | step p90 ms | vs 1 replica "
            "float32 | first step s | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['replicas']} | {r['precision']} | | error: {r['error'][:80]} | | | | | |")
            continue
        ratio = r["images_per_s"] / base["float32"] if "float32" in base else float("nan")
        rows.append(f"| {r['replicas']} | {r['precision']} | {r['per_replica_batch']} | {r['images_per_s']:.1f} | "
                    f"{r['step_ms']['p50']:.0f} | {r['step_ms']['p90']:.0f} | {ratio:.2f}x | "
                    f"{r['first_step_s']:.1f} | {r['loadavg'][0]} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", action="store_true", help="replicas are GPUs (default: logical CPU devices)")
    p.add_argument("--replicas", default="1,2", help="comma-separated replica counts (default 1,2)")
    p.add_argument("--precisions", default="float32,float16,bfloat16")
    p.add_argument("--mixed-replicas", default="1,2",
                   help="replica counts that also run the mixed precisions (default 1,2)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (default 16)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=256, help="synthetic training images (default 256)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling"), help="STEM of .md / .json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0

    sys.path.insert(0, str(ROOT))
    from benchmarks.machine import machine_info, machine_line
    from keras_fpn.data.synthetic import generate_synthetic_coco
    from keras_fpn.rundir import write_text_atomic

    work = Path(tempfile.mkdtemp(prefix="fpn_scaling_"))
    generate_synthetic_coco(work / "data", num_train=a.images, num_val=8, image_size=160, seed=0, masks=False,
                            style="clean")
    mixed = {int(v) for v in a.mixed_replicas.split(",")}
    variants = [(int(n), prec) for n in a.replicas.split(",") for prec in a.precisions.split(",")
                if prec == "float32" or int(n) in mixed]
    results, started = [], time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    for replicas, precision in variants:
        spec = {"replicas": replicas, "precision": precision, "gpus": a.gpus, "batch_size": a.batch_size,
                "warmup": a.warmup, "steps": a.steps, "data": str(work / "data")}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                              text=True, env=env)
        if done.returncode == 0:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            results.append({**spec, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"})
        print(json.dumps({k: results[-1].get(k) for k in ("replicas", "precision", "images_per_s", "error")}),
              flush=True)
        report = {"machine": machine_info(), "config": str(CONFIG.relative_to(ROOT)), "gpu_command": GPU_COMMAND,
                  "minutes": round((time.time() - started) / 60, 1), "results": results}
        write_text_atomic(Path(a.out).with_suffix(".json"), json.dumps(report, indent=2) + "\n")
        m = report["machine"]
        write_text_atomic(Path(a.out).with_suffix(".md"), f"""# Training throughput by strategy and precision

`{' '.join(['python benchmarks/scaling.py', *(argv if argv is not None else sys.argv[1:])])}`: the demo model
(`{report['config']}`, MobileNetV3-Small FPN, 160 px, synthetic images), `Model.fit` as `keras-fpn train`
builds it, global batch {a.batch_size}, {a.warmup} warmup + {a.steps} timed steps per variant, each in a fresh process.

Machine: {machine_line(m)}, TensorFlow {m['versions'].get('tensorflow')}, Keras {m['versions'].get('keras')},
git {m['git']}.
{'Replicas are GPUs.' if a.gpus else CPU_NOTE}

{_table(results)}

On GPUs (not run here; no GPU on this machine):

```bash
{GPU_COMMAND}
```
""")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
