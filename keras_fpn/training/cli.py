"""``keras-fpn train / evaluate / predict``."""
from __future__ import annotations

import json
import os
from pathlib import Path


def _cmd_train(args) -> int:
    from keras_fpn.config import load_config
    from keras_fpn.tasks import get_task
    from keras_fpn.training.train import train

    strategy = [f"train.strategy={args.strategy}"] if args.strategy else []
    cfg = load_config(args.config, (args.set or []) + strategy)
    run_dir = args.run_dir or os.path.join("runs", Path(args.config).stem)
    print(f"training {args.config} -> {run_dir}")
    result = train(cfg, run_dir, verbose=1 if not args.quiet else 2)
    ev = result.get("eval") or {}
    print(f"done in {result['seconds'] / 60:.1f} min; run directory: {run_dir}")
    if ev:
        print(get_task(cfg.model.task).summary(ev))
    return 0


def _cmd_evaluate(args) -> int:
    from keras_fpn.data.splits import load_datasets, load_split
    from keras_fpn.rundir import open_run, write_text_atomic
    from keras_fpn.tasks import get_task

    run = open_run(args.run)
    cfg = run.config
    if args.data:
        dataset = load_split(args.data, args.include, cfg.data.strict)
    else:
        _, dataset = load_datasets(cfg)
        if dataset is None:
            raise ValueError(f"{args.run}: the config has no data.val; pass --data")
    if list(dataset.label_map.names) != run.labels:
        raise ValueError(f"dataset classes {list(dataset.label_map.names)} differ from the run's {run.labels}")
    task = get_task(cfg.model.task)
    metrics = task.evaluate(run.build_model(which=args.which), dataset, cfg, progress=True,
                            boundary_tolerance=args.boundary_tolerance)
    print(task.format_metrics(metrics))
    out = Path(args.out) if args.out else run.path / f"eval_{args.which}.json"
    write_text_atomic(out, json.dumps({"checkpoint": args.which, "images": len(dataset), **metrics}, indent=2))
    print(f"written {out}")
    return 0


def _cmd_predict(args) -> int:
    from keras_fpn.rundir import open_run
    from keras_fpn.tasks import get_task

    run = open_run(args.run)
    task = get_task(run.config.model.task)
    if not task.can_predict:
        raise ValueError(f"{args.run}: {task.predict_hint}")
    paths = []
    for item in args.images:
        p = Path(item)
        paths += sorted(q for q in p.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")) if p.is_dir() else [p]
    n = task.predict(run, paths, args.out, threshold=args.threshold, max_detections=args.max_detections,
                     which=args.which)
    print(f"written {Path(args.out) / 'detections.json'} and {n} annotated images")
    return 0


def add_training_commands(sub) -> None:
    from keras_fpn.config.schema import STRATEGIES

    p = sub.add_parser("train", help="train a detector from a YAML config into a run directory",
                       description="Train with Model.fit. Rerunning the same command resumes a killed run.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--run-dir", help="output run directory (default runs/<config name>)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="train.strategy: one device (default), the GPUs of this machine (mirrored; "
                        "train.devices picks them), or one process per machine with the cluster in "
                        "TF_CONFIG (multi_worker)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="COCO AP (pycocotools) of a run on its val split or --data; "
                                        "mIoU and boundary F-score for a segmentation run")
    p.add_argument("run", help="run directory written by `keras-fpn train`")
    p.add_argument("--data", help="dataset to evaluate on (COCO JSON, VOC dir, YOLO dir, TFRecord)")
    p.add_argument("--include", help="only these images (txt list or csv with a filename column)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint")
    p.add_argument("--out", help="metrics JSON (default RUN/eval_<which>.json)")
    p.add_argument("--boundary-tolerance", type=int, default=2, metavar="PX",
                   help="segmentation: boundary F-score tolerance in pixels (default 2)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="detect objects in images with a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder: detections.json + annotated images")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum score (default 0.3)")
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.set_defaults(func=_cmd_predict)
