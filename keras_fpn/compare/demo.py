"""``keras-fpn demo``: the whole flow in one command, on a fresh machine, offline.

1. generate the synthetic multi-scale COCO dataset (``keras-fpn data synthetic``),
2. train ``configs/synthetic_retinanet_mobilenetv3small.yaml`` from scratch (no download),
3. export fp32, int8 PTQ and QAT int8 .tflite files,
4. run them through ``fpn_edge`` and write the compare report.

The demo dataset is the ``clean`` synthetic style at 192 px (``keras_fpn.data.synthetic``);
``--fast`` shrinks every stage (400 + 60 images of 160 px instead of 1500 + 200
of 192 px, 2 x 60 steps instead of 14 x 80, a short calibration, one evaluation,
and 5 QAT steps, which run eagerly: tf_keras traces a QAT train step twice, which
costs more than 20 traced steps; QAT export 30 s instead of 41 s); its accuracy is
only a sanity floor, not the demo's quality.
Each stage logs its wall time, so a slow machine shows where the time goes.
"""
from __future__ import annotations

import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic_retinanet_mobilenetv3small.yaml"

#: (train images, val images, generated image side in px, config overrides) per demo size.
SIZES = {
    "default": (3000, 200, 160, []),
    "fast": (400, 60, 160, ["model.image_size=[160, 160]", "train.epochs=2", "train.steps_per_epoch=60",
                            "train.eval_every=2", "train.precise_bn_batches=4", "export.qat_steps=5",
                            "export.representative_images=16"]),
}


def run_demo(out_dir, *, fast: bool = False, threads: int = 2, seed: int = 0, log=print) -> dict:
    """Run the demo into ``out_dir`` and return the compare report."""
    from keras_fpn.compare.report import compare_run, headline_table
    from keras_fpn.config import load_config
    from keras_fpn.data.synthetic import generate_synthetic_coco
    from keras_fpn.training.train import train

    out = Path(out_dir).resolve()  # the config resolves relative data paths against its own folder
    started = time.time()

    def say(msg: str) -> None:  # progress lines carry the elapsed wall time
        log(f"[{time.time() - started:5.0f} s] {msg}")

    num_train, num_val, side, overrides = SIZES["fast" if fast else "default"]
    data_dir = out / "data"
    if not (data_dir / "train.json").is_file() or not (data_dir / "val.json").is_file():
        say(f"== 1/4 synthetic dataset (clean style): {num_train} + {num_val} images of {side} px -> {data_dir}")
        generate_synthetic_coco(data_dir, num_train=num_train, num_val=num_val, image_size=side, seed=seed,
                                style="clean")
    else:
        say(f"== 1/4 synthetic dataset: reusing {data_dir}")
    cfg = load_config(CONFIG, [*overrides, f"data.train={data_dir / 'train.json'}",
                               f"data.val={data_dir / 'val.json'}", f"train.seed={seed}"])
    run_dir = out / "run"
    say(f"== 2/4 training {CONFIG.name} -> {run_dir}")
    trained = train(cfg, run_dir, verbose=2)
    say(f"   trained in {trained['seconds'] / 60:.1f} min")
    say("== 3/4 + 4/4 export fp32 / int8 / qat-int8 and compare through fpn_edge")
    compare_started = time.time()
    report = compare_run(run_dir, modes=("fp32", "int8", "qat-int8"), threads=threads,
                         out=out / "report", bench_runs=20 if fast else 100, log=say)
    say(f"   exported and compared in {(time.time() - compare_started) / 60:.1f} min")
    report["demo"] = {"seconds": time.time() - started, "train_seconds": trained["seconds"],
                      "export_compare_seconds": time.time() - compare_started, "fast": fast}
    log("")
    log(headline_table(report))
    log("")
    log(f"demo finished in {(time.time() - started) / 60:.1f} min")
    log(f"  dataset:  {data_dir}")
    log(f"  run:      {run_dir}  (config.yaml, best.keras, history.csv, eval.json)")
    log(f"  models:   {', '.join(sorted(p.name for p in run_dir.glob('model_*.tflite')))}")
    log(f"  report:   {out / 'report' / 'report.md'} (+ report.json, PNG plots)")
    return report
