"""``keras-fpn predict`` and ``keras_fpn.Run.predict`` for detectors: detections in original-image pixels."""
from __future__ import annotations

import json
from pathlib import Path


def detect_image(model, model_cfg, labels, image, *, threshold: float, max_detections: int) -> list[dict]:
    """One image's detections by a Keras detector: ``[{label, class_id, score, box_xyxy}]``, ``box_xyxy``
    = ``[x1, y1, x2, y2]`` in the pixels of ``image`` (a uint8 RGB array ``[h, w, 3]``)."""
    import tensorflow as tf

    from keras_fpn.data.preprocess import canvas_to_original, preprocess_for_inference
    from keras_fpn.models.backbones import NORMALIZATION
    from keras_fpn.ops.anchors import model_anchors
    from keras_fpn.ops.postprocess import decode_detections

    x, resized_hw = preprocess_for_inference(tf.constant(image), model_cfg.image_size,
                                             NORMALIZATION[model_cfg.backbone.name])
    raw = model(x[None], training=False)
    det = decode_detections(raw["box_deltas"], raw["class_logits"], model_anchors(model_cfg),
                            scale_factors=model_cfg.anchors.box_scale_factors, score_threshold=threshold,
                            iou_threshold=model_cfg.postprocess.iou_threshold, max_detections=max_detections,
                            max_detections_per_class=model_cfg.postprocess.max_detections_per_class)
    n = int(det["num_detections"][0])
    boxes = canvas_to_original(det["boxes"][0].numpy()[:n], resized_hw.numpy(), model_cfg.image_size)
    h, w = image.shape[:2]
    return [{"label": labels[int(c)], "class_id": int(c), "score": float(s),
             "box_xyxy": [float(b[1] * w), float(b[0] * h), float(b[3] * w), float(b[2] * h)]}
            for b, s, c in zip(boxes, det["scores"][0].numpy()[:n], det["classes"][0].numpy()[:n])]


def predict_images(run, paths, out, *, threshold: float, max_detections: int, which: str = "best") -> int:
    """Detect objects in ``paths`` with a run's ``which`` checkpoint; write ``out/detections.json``
    (``{file name: {width, height, detections: [{label, class_id, score, box_xyxy}]}}``, boxes in
    original pixels) and ``out/<stem>_pred.jpg``. Returns the number of images."""
    from fpn_edge.draw import draw_detections
    from keras_fpn.data.images import load_image
    from fpn_edge.atomic import write_text_atomic

    model = run.build_model(which=which)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_dets = {}
    for path in paths:
        image = load_image(path)
        dets = detect_image(model, run.config.model, run.labels, image, threshold=threshold,
                            max_detections=max_detections)
        h, w = image.shape[:2]
        all_dets[path.name] = {"width": w, "height": h, "detections": dets}
        draw_detections(image, dets).save(out / f"{path.stem}_pred.jpg")
        print(f"{path}: {len(dets)} detections")
    write_text_atomic(out / "detections.json", json.dumps(all_dets, indent=2))
    return len(paths)
