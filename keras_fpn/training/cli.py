"""``keras-fpn train / evaluate / predict``."""
from __future__ import annotations

import json
import os
from pathlib import Path


def _cmd_train(args) -> int:
    from keras_fpn.config import load_config
    from keras_fpn.training.train import train

    cfg = load_config(args.config, args.set or [])
    run_dir = args.run_dir or os.path.join("runs", Path(args.config).stem)
    print(f"training {args.config} -> {run_dir}")
    result = train(cfg, run_dir, verbose=1 if not args.quiet else 2)
    ev = result.get("eval") or {}
    print(f"done in {result['seconds'] / 60:.1f} min; run directory: {run_dir}")
    if ev and "mIoU" in ev:
        print(f"best (epoch {ev['epoch']}): val mIoU {ev['mIoU']:.4f}  "
              f"boundary F@{ev['boundary_tolerance_px']}px {ev['boundary_F']:.4f}")
    elif ev:
        print(f"best (epoch {ev['epoch']}): val AP {ev['AP']:.4f}  AP50 {ev['AP50']:.4f}")
    return 0


def _cmd_evaluate(args) -> int:
    from keras_fpn.evaluation import coco_evaluate, format_metrics, predict_dataset
    from keras_fpn.rundir import open_run, write_text_atomic
    from keras_fpn.data.splits import load_datasets, load_split

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
    model = run.build_model(which=args.which)
    if cfg.model.task == "segmentation":
        from keras_fpn.seg_evaluation import evaluate_segmentation, format_seg_metrics

        metrics = evaluate_segmentation(model, dataset, cfg.model, tolerance=args.boundary_tolerance,
                                        progress=True)
        print(format_seg_metrics(metrics))
    else:
        metrics = coco_evaluate(dataset, predict_dataset(model, dataset, cfg.model, progress=True))
        print(format_metrics(metrics))
    out = Path(args.out) if args.out else run.path / f"eval_{args.which}.json"
    write_text_atomic(out, json.dumps({"checkpoint": args.which, "images": len(dataset), **metrics}, indent=2))
    print(f"written {out}")
    return 0


def _cmd_predict(args) -> int:
    import numpy as np
    import tensorflow as tf

    from fpn_edge.draw import draw_detections
    from keras_fpn.data.images import load_image
    from keras_fpn.data.preprocess import canvas_to_original, preprocess_for_inference
    from keras_fpn.models.backbones import NORMALIZATION
    from keras_fpn.ops.postprocess import decode_detections
    from keras_fpn.rundir import open_run, write_text_atomic
    from keras_fpn.training.train import model_anchors

    run = open_run(args.run)
    if run.config.model.task == "segmentation":
        raise ValueError(f"{args.run}: `predict` draws detections; for a segmentation run use "
                         f"`keras-fpn export {args.run} --mode fp32` and `fpn-edge segment MODEL IMAGE --out DIR`")
    mcfg = run.config.model
    model = run.build_model(which=args.which)
    anchors = model_anchors(mcfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in args.images:
        p = Path(item)
        paths += sorted(q for q in p.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")) if p.is_dir() else [p]
    all_dets = {}
    for path in paths:
        image = load_image(path)
        x, resized_hw = preprocess_for_inference(tf.constant(image), mcfg.image_size, NORMALIZATION[mcfg.backbone])
        raw = model(x[None], training=False)
        det = decode_detections(raw["box_deltas"], raw["class_logits"], anchors, scale_factors=mcfg.box_scale_factors,
                                score_threshold=args.threshold, iou_threshold=mcfg.iou_threshold,
                                max_detections=args.max_detections,
                                max_detections_per_class=mcfg.max_detections_per_class)
        n = int(det["num_detections"][0])
        boxes = canvas_to_original(det["boxes"][0].numpy()[:n], resized_hw.numpy(), mcfg.image_size)
        h, w = image.shape[:2]
        dets = [{"label": run.labels[int(c)], "class_id": int(c), "score": float(s),
                 "box_xyxy": [float(b[1] * w), float(b[0] * h), float(b[3] * w), float(b[2] * h)]}
                for b, s, c in zip(boxes, det["scores"][0].numpy()[:n], det["classes"][0].numpy()[:n])]
        all_dets[path.name] = {"width": w, "height": h, "detections": dets}
        draw_detections(image, dets).save(out / f"{path.stem}_pred.jpg")
        print(f"{path}: {len(dets)} detections")
    write_text_atomic(out / "detections.json", json.dumps(all_dets, indent=2))
    print(f"written {out / 'detections.json'} and {len(paths)} annotated images")
    del np
    return 0


def add_training_commands(sub) -> None:
    p = sub.add_parser("train", help="train a detector from a YAML config into a run directory",
                       description="Train with Model.fit. Rerunning the same command resumes a killed run.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--run-dir", help="output run directory (default runs/<config name>)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
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
