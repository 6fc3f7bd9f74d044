"""The tiny detector and data shared by the ``test_export_*`` modules (not a test module).

Model: MobileNetV2 alpha 0.35 (ImageNet weights from the shared data), P3-P7,
FPN and head width 32, head depth 1, 128x128 input, one class (raccoon),
static batch 1. The head weights are replaced by seeded random values so that
the box and class towers differ, as in a trained model (the builder's seeded
initializer gives both towers the same start, and the TFLite converter then
merges the two identical towers into one conv).

Everything is built once per pytest process and cached here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

SIZE = (128, 128)
LABELS = ["raccoon"]
NORM = {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}

_CACHE: dict = {}


def tiny_config(raccoon_dir=None):
    from keras_fpn.config import (BackboneConfig, Config, DataConfig, ExportConfig, HeadConfig, ModelConfig,
                                  NeckConfig, PostprocessConfig)

    model = ModelConfig(image_size=SIZE, num_classes=len(LABELS),
                        backbone=BackboneConfig(name="mobilenetv2", alpha=0.35, weights=None),
                        neck=NeckConfig(min_level=3, max_level=7, width=32), head=HeadConfig(width=32, depth=1),
                        postprocess=PostprocessConfig(score_threshold=0.05, max_detections=20,
                                                      max_detections_per_class=20))
    data = DataConfig(train=str(raccoon_dir) if raccoon_dir else None, cache=False)
    export = ExportConfig(representative_images=4, int8_io="uint8", qat_steps=2,
                          qat_learning_rate=1e-4, qat_batch_size=2)
    return Config(model=model, data=data, export=export)


def tiny_model(weights_path):
    """The Keras 3 tiny detector (batch 1) with ImageNet backbone weights and random heads."""
    if "model" in _CACHE:
        return _CACHE["model"]
    import keras

    from keras_fpn.models.detector import build_detector

    cfg = tiny_config()
    model = build_detector(cfg.model, ns=keras, batch_size=1, backbone_weights=str(weights_path))
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if layer.name.startswith("head_") and layer.weights:
            values = layer.get_weights()
            kernel = rng.normal(0.0, 0.05, values[0].shape).astype(np.float32)
            if layer.name == "head_box_deltas":
                kernel *= 0.2
            layer.set_weights([kernel] + values[1:])
    _CACHE["model"] = model
    return model


def tiny_twin(weights_path):
    """The tf_keras twin (batch 1) of ``tiny_model``: what the exports convert."""
    if "twin" not in _CACHE:
        from keras_fpn.models.twin import build_twin

        _CACHE["twin"] = build_twin(tiny_config().model, tiny_model(weights_path), batch_size=1)
    return _CACHE["twin"]


def raccoon(raccoon_dir):
    if "raccoon" not in _CACHE:
        from keras_fpn.data.formats import read_dataset

        _CACHE["raccoon"] = read_dataset(str(raccoon_dir))
    return _CACHE["raccoon"]


def images(raccoon_dir, start: int, n: int) -> list:
    """``n`` real raccoon images from index ``start``, through the project's inference preprocessing."""
    key = ("images", start, n)
    if key not in _CACHE:
        from keras_fpn.data.pipeline import representative_images

        ds = raccoon(raccoon_dir).subset(range(start, start + n))
        _CACHE[key] = list(representative_images(ds, n, SIZE, NORM, seed=0))
    return _CACHE[key]


def calibration(raccoon_dir) -> list:
    return images(raccoon_dir, 0, 4)


def evaluation(raccoon_dir) -> list:
    """Images not used for calibration."""
    return images(raccoon_dir, 160, 3)


def export(tmp_root: Path, weights_path, raccoon_dir, mode: str, *, raw: bool, **kwargs) -> Path:
    """Export the tiny model once per (mode, raw, kwargs) and return the path."""
    from fpn_export.detection import export_detector

    key = ("export", mode, raw, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        cfg = tiny_config(raccoon_dir)
        out = Path(tmp_root) / f"{mode}{'_raw' if raw else ''}{'_' + kwargs.get('via', '') if kwargs.get('via') else ''}.tflite"
        # Pass the cached twin (export_detector would build it from the Keras 3 model each time).
        model = tiny_model(weights_path) if kwargs.get("via") == "keras" else tiny_twin(weights_path)
        _CACHE[key] = export_detector(model, cfg, LABELS, mode, out=out, raw=raw,
                                      representative=calibration(raccoon_dir), **kwargs)
    return _CACHE[key]


def run_tflite(path, x: np.ndarray) -> dict:
    """Run a raw or post-process export on one normalized image; outputs by signature name, float."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    runner = interp.get_signature_runner("serving_default")
    detail = runner.get_input_details()["image"]
    x = np.asarray(x, np.float32).reshape(detail["shape"])
    if detail["dtype"] != np.float32:
        scale, zp = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(detail["dtype"])
    outs = runner(image=x)
    res = {}
    for name, d in runner.get_output_details().items():
        v = outs[name]
        if v.dtype != np.float32 and d["quantization"][0]:
            scale, zp = d["quantization"]
            v = (v.astype(np.float32) - zp) * scale
        res[name] = np.asarray(v, np.float32)
    return res


def with_export(cfg, **changes):
    return dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, **changes))
