"""``keras-fpn train / evaluate / predict``."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fpn_edge.argtypes import nonneg_int, positive_int, unit_interval

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _cmd_train(args) -> int:
    from keras_fpn.config import Config
    from keras_fpn.tasks import get_task
    from keras_fpn.training.train import train

    strategy = [f"train.strategy={args.strategy}"] if args.strategy else []
    cfg = Config.from_yaml(args.config, (args.set or []) + strategy)
    run_dir = args.run_dir or os.path.join("runs", Path(args.config).stem)
    print(f"training {args.config} -> {run_dir}")
    result = train(cfg, run_dir, verbose=1 if not args.quiet else 2, force=args.force)
    ev = result.get("eval") or {}
    print(f"done in {result['seconds'] / 60:.1f} min; run directory: {run_dir}")
    if ev:
        print(get_task(cfg.model.task).summary(ev))
    return 0


def _cmd_evaluate(args) -> int:
    from fpn_edge.atomic import check_writable, write_text_atomic
    from keras_fpn.api import Run
    from keras_fpn.tasks import get_task

    run = Run(args.run)
    out = check_writable(args.out if args.out else run.path / f"eval_{args.which}.json")
    metrics = run.evaluate(args.data, include=args.include, which=args.which, progress=True,
                           boundary_tolerance=args.boundary_tolerance)
    print(get_task(run.config.model.task).format_metrics(metrics))
    write_text_atomic(out, json.dumps({"checkpoint": args.which, **metrics}, indent=2))
    print(f"written {out}")
    return 0


def _image_inputs(items) -> list:
    """Image files of the command line (folders expanded, sorted), each file once.

    Raises:
        FileNotFoundError: an input that does not exist.
        ValueError: a folder without images.
    """
    paths, seen = [], set()
    for item in items:
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError(2, "input not found", str(p))
        found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
        if p.is_dir() and not found:
            raise ValueError(f"{p}: no image files in the folder ({', '.join(IMAGE_SUFFIXES)})")
        for q in found:
            if q.resolve() not in seen:
                seen.add(q.resolve())
                paths.append(q)
    return paths


def _cmd_predict(args) -> int:
    from fpn_edge.atomic import check_writable
    from keras_fpn.rundir import open_run
    from keras_fpn.tasks import get_task

    run = open_run(args.run)
    task = get_task(run.config.model.task)
    if not task.can_predict:
        raise ValueError(f"{args.run}: {task.predict_hint}")
    paths = _image_inputs(args.images)
    out = check_writable(args.out, folder=True)

    def error(message):
        print(f"keras-fpn predict: error: {message}", file=sys.stderr)

    n, errors = task.predict(run, paths, out, threshold=args.threshold, max_detections=args.max_detections,
                             which=args.which, on_error=error)
    print(f"written {out / 'detections.json'} and {n} annotated images"
          + (f"; {len(errors)} image(s) could not be read (see detections.json)" if errors else ""))
    return 2 if errors else 0


def add_training_commands(sub) -> None:
    from keras_fpn.config.schema import STRATEGIES

    p = sub.add_parser("train", help="train a detector from a YAML config into a run directory",
                       description="Train with Model.fit. Rerunning the same command resumes a killed run.")
    p.add_argument("config", help="YAML config file, or the name of a shipped config (`keras-fpn configs`)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--run-dir", help="output run directory (default runs/<config name>)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="train.strategy: one device (default), the GPUs of this machine (mirrored; "
                        "train.devices picks them), or one process per machine with the cluster in "
                        "TF_CONFIG (multi_worker)")
    p.add_argument("--force", action="store_true",
                   help="the run directory was trained with another config or dataset: discard that training "
                        "(checkpoints, history, backup; exports stay) and train anew")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="COCO AP (pycocotools) of a run on its val split or --data; "
                                        "mIoU and boundary F-score for a segmentation run")
    p.add_argument("run", help="run directory written by `keras-fpn train`")
    p.add_argument("--data", help="dataset to evaluate on (COCO JSON, VOC dir, YOLO dir, TFRecord)")
    p.add_argument("--include", help="only these images (txt list or csv with a filename column); "
                                      "default: data.val_include when evaluating data.val")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint")
    p.add_argument("--out", help="metrics JSON (default RUN/eval_<which>.json)")
    p.add_argument("--boundary-tolerance", type=nonneg_int, default=2, metavar="PX",
                   help="segmentation: boundary F-score tolerance in pixels (default 2)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="detect objects in images with a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder: detections.json + annotated images")
    p.add_argument("--threshold", type=unit_interval, default=0.3, help="minimum score in [0, 1] (default 0.3)")
    p.add_argument("--max-detections", type=positive_int, default=100)
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.set_defaults(func=_cmd_predict)
