"""Run keras-fpn exports in the standard runtimes: MediaPipe Tasks and the TFLite Task Library.

Not a test module: ``tests/interop/test_interop.py`` runs this file with the interop venv's
Python (``KERAS_FPN_INTEROP_PYTHON``; ``.ci/run`` makes that venv), where neither TensorFlow
nor keras-fpn is installed. It reads a JSON request (argv[1]) and writes a JSON answer (argv[2])::

    request: {"images": [PATH, ...], "runs": [{"id": ID, "model": PATH, "kind": "detector" | "segmenter",
              "runtime": "mediapipe" | "tasklib", "threads": N or null}], "masks_dir": DIR}
    answer:  {"versions": {...}, "unavailable": {runtime: reason},
              "runs": {ID: {"images": [[{"box_xyxy": [x1, y1, x2, y2] pixels, "score", "class_id",
                                          "label"}, ...] | MASK.npy path, ...]} | {"error": text}}}

MediaPipe's Python API (1.2.x) takes no thread count: its runs say ``threads: null`` and use its
default. The Task Library takes ``num_threads``.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np


def _detections(result) -> list:
    """One entry per (box, category) of either runtime's result: both give a box as ``bounding_box``
    origin / size in pixels, and MediaPipe merges the op's detections that share a box into one
    detection with several ``categories``."""
    out = []
    for d in result.detections:
        box = d.bounding_box
        xyxy = [box.origin_x, box.origin_y, box.origin_x + box.width, box.origin_y + box.height]
        out += [{"box_xyxy": xyxy, "score": c.score, "class_id": c.index, "label": c.category_name}
                for c in d.categories]
    return out


def _mediapipe(run: dict, images: list, masks_dir: Path) -> list:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    base = BaseOptions(model_asset_path=run["model"])
    out = []
    if run["kind"] == "detector":
        options = vision.ObjectDetectorOptions(base_options=base, score_threshold=0.0, max_results=-1)
        with vision.ObjectDetector.create_from_options(options) as det:
            for path in images:
                out.append(_detections(det.detect(mp.Image.create_from_file(path))))
        return out
    options = vision.ImageSegmenterOptions(base_options=base, output_category_mask=True,
                                           output_confidence_masks=False)
    with vision.ImageSegmenter.create_from_options(options) as seg:
        for k, path in enumerate(images):
            res = seg.segment(mp.Image.create_from_file(path))
            mask = masks_dir / f"{run['id'].replace('/', '_')}_{k}.npy"
            cats = res.category_mask
            np.save(mask, np.asarray(cats.numpy_view()).astype(np.uint8).reshape(cats.height, cats.width),
                    allow_pickle=False)
            out.append(str(mask))
    return out


def _tasklib(run: dict, images: list, masks_dir: Path) -> list:
    from tflite_support.task import core, processor, vision

    base = core.BaseOptions(file_name=run["model"], num_threads=int(run["threads"] or 1))
    out = []
    if run["kind"] != "detector":
        raise ValueError("only detectors are compared with the Task Library")
    options = vision.ObjectDetectorOptions(base_options=base,
                                           detection_options=processor.DetectionOptions(score_threshold=0.0))
    det = vision.ObjectDetector.create_from_options(options)
    for path in images:
        out.append(_detections(det.detect(vision.TensorImage.create_from_file(path))))
    return out


RUNTIMES = {"mediapipe": _mediapipe, "tasklib": _tasklib}
MODULES = {"mediapipe": "mediapipe", "tasklib": "tflite_support"}


def main(request_path: str, answer_path: str) -> int:
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, version

    req = json.loads(Path(request_path).read_text())
    masks_dir = Path(req["masks_dir"])
    masks_dir.mkdir(parents=True, exist_ok=True)
    answer = {"versions": {}, "unavailable": {}, "runs": {}}
    for runtime, module in MODULES.items():
        try:
            import_module(module)
            answer["versions"][runtime] = version({"tasklib": "tflite-support"}.get(runtime, runtime))
        except (ImportError, PackageNotFoundError) as e:
            answer["unavailable"][runtime] = f"{type(e).__name__}: {e}"
    for run in req["runs"]:
        if run["runtime"] in answer["unavailable"]:
            continue
        try:
            answer["runs"][run["id"]] = {"images": RUNTIMES[run["runtime"]](run, req["images"], masks_dir)}
        except Exception as e:  # reported per run: the test names the run and the error
            answer["runs"][run["id"]] = {"error": f"{type(e).__name__}: {e}",
                                         "traceback": traceback.format_exc(limit=3)}
    Path(answer_path).write_text(json.dumps(answer, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
