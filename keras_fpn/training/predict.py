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
                                             NORMALIZATION[model_cfg.backbone.name], model_cfg.resize)
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


def output_names(paths) -> list:
    """``(detections.json key, annotated image name)`` of each input path, all distinct.

    The key is the file name, or the path as given for inputs whose names repeat
    (``a/x.jpg`` and ``b/x.jpg``); the annotated image is ``<stem>_pred.jpg``, numbered
    ``<stem>_2_pred.jpg``, ... for repeated stems (``x.jpg`` and ``x.png``).
    """
    names = [Path(p).name for p in paths]
    used, out = set(), []
    for path, name in zip(paths, names):
        key = str(path) if names.count(name) > 1 else name
        stem, n = Path(path).stem, 1
        image = f"{stem}_pred.jpg"
        while image in used:
            n += 1
            image = f"{stem}_{n}_pred.jpg"
        used.add(image)
        out.append((key, image))
    return out


def predict_images(run, paths, out, *, threshold: float, max_detections: int, which: str = "best",
                   on_error=None) -> tuple[int, list]:
    """Detect objects in ``paths`` with a run's ``which`` checkpoint; write ``out/detections.json``
    (``{key: {width, height, annotated, detections: [{label, class_id, score, box_xyxy}]}}``, boxes in
    original pixels, keys of ``output_names``) and the annotated images.

    An image that cannot be decoded does not stop the others: its entry is ``{"error": message}``
    and ``on_error(message)`` is called.

    Returns:
        ``(number of annotated images, [error messages])``.
    """
    from fpn_edge.atomic import atomic_path, write_text_atomic
    from fpn_edge.draw import draw_detections
    from keras_fpn.data.images import DataError, load_image

    model = run.build_model(which=which)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_dets, errors = {}, []
    for path, (key, image_name) in zip(paths, output_names(paths)):
        try:
            image = load_image(path)
        except DataError as e:
            errors.append(str(e))
            all_dets[key] = {"error": str(e)}
            if on_error is not None:
                on_error(str(e))
            continue
        dets = detect_image(model, run.config.model, run.labels, image, threshold=threshold,
                            max_detections=max_detections)
        h, w = image.shape[:2]
        all_dets[key] = {"width": w, "height": h, "annotated": image_name, "detections": dets}
        with atomic_path(out / image_name) as tmp:
            draw_detections(image, dets).save(tmp, format="JPEG")
        print(f"{path}: {len(dets)} detections")
    write_text_atomic(out / "detections.json", json.dumps(all_dets, indent=2))
    return len(paths) - len(errors), errors
