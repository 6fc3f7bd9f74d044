"""``keras-fpn predict`` for detectors: detections.json (original-image pixels) + annotated images."""
from __future__ import annotations

import json
from pathlib import Path


def predict_images(run, paths, out, *, threshold: float, max_detections: int, which: str = "best") -> int:
    """Detect objects in ``paths`` with a run's ``which`` checkpoint; write ``out/detections.json``
    (``{file name: {width, height, detections: [{label, class_id, score, box_xyxy}]}}``, boxes in
    original pixels) and ``out/<stem>_pred.jpg``. Returns the number of images."""
    import tensorflow as tf

    from fpn_edge.draw import draw_detections
    from keras_fpn.data.images import load_image
    from keras_fpn.data.preprocess import canvas_to_original, preprocess_for_inference
    from keras_fpn.models.backbones import NORMALIZATION
    from keras_fpn.ops.anchors import model_anchors
    from keras_fpn.ops.postprocess import decode_detections
    from keras_fpn.rundir import write_text_atomic

    mcfg = run.config.model
    model = run.build_model(which=which)
    anchors = model_anchors(mcfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_dets = {}
    for path in paths:
        image = load_image(path)
        x, resized_hw = preprocess_for_inference(tf.constant(image), mcfg.image_size, NORMALIZATION[mcfg.backbone.name])
        raw = model(x[None], training=False)
        det = decode_detections(raw["box_deltas"], raw["class_logits"], anchors, scale_factors=mcfg.anchors.box_scale_factors,
                                score_threshold=threshold, iou_threshold=mcfg.postprocess.iou_threshold,
                                max_detections=max_detections,
                                max_detections_per_class=mcfg.postprocess.max_detections_per_class)
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
    return len(paths)
