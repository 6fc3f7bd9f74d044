"""Segmenter export (fp32 / int8) and the TF-free runtime: Keras vs TFLite parity, metadata, CLI, bench."""
import json

import keras
import numpy as np
import pytest
from PIL import Image

from fpn_edge.cli import main as edge_main
from fpn_edge.draw import class_color, draw_segmentation, segmentation_palette
from fpn_edge.metadata import read_metadata
from fpn_edge.segmenter import Segmenter
from fpn_export.errors import ExportError
from fpn_export.segmentation import export_segmenter
from keras_fpn.config import config_from_dict
from keras_fpn.data.preprocess import preprocess_for_inference
from keras_fpn.models.backbones import NORMALIZATION
from keras_fpn.models.factory import build_model
from keras_fpn.evaluation.segmentation import logits_to_class_map

H, W = 64, 96
LABELS = ["disc", "bar"]
NORM = NORMALIZATION["mobilenetv2"]


def _image(h=50, w=80, seed=0):
    """A smooth image with two coloured blobs (so the logits have structure)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([120 + 60 * np.sin(xx / 9.0), 110 + 50 * np.cos(yy / 7.0), 100 + 0 * xx], -1)
    img[(yy - 20) ** 2 + (xx - 25) ** 2 < 150] = (230, 40, 40)
    img[30:42, 45:75] = (30, 200, 60)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg_export")
    cfg = config_from_dict({"model": {"task": "segmentation", "image_size": [H, W], "num_classes": len(LABELS),
                                      "backbone": {"alpha": 0.35, "weights": None},
                                      "neck": {"min_level": 3, "max_level": 5, "width": 16},
                                      "segmentation": {"width": 16, "c2_skip": True}},
                            "train": {"checkpoint_metric": "val_mIoU"}})
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    clf = model.get_layer("seg_classifier")
    k, b = clf.get_weights()
    clf.set_weights([k * 20.0, b])   # spread the logits so that the argmax is not a near-tie everywhere
    images = [preprocess_for_inference(_image(seed=s), (H, W), NORM)[0].numpy()[None] for s in range(8)]
    paths = {mode: export_segmenter(model, cfg, LABELS, mode, out=out / f"seg_{mode}.tflite",
                                    representative=images if mode == "int8" else None)
             for mode in ("fp32", "int8")}
    img = _image()
    Image.fromarray(img).save(out / "scene.png")
    return {"model": model, "config": cfg, "paths": paths, "dir": out, "image": img}


def _keras_logits(exp):
    x, resized = preprocess_for_inference(exp["image"], (H, W), NORM)
    return np.asarray(exp["model"](x[None], training=False)["seg_logits"][0]), resized.numpy()


def test_metadata_is_self_describing(exported):
    meta, anchors = read_metadata(exported["paths"]["int8"])
    assert anchors is None
    assert meta["task"] == "segmentation" and meta["output"] == "logits"
    assert meta["labels"] == ["background", *LABELS]
    assert meta["segmentation"] == {"background_id": 0, "ignore_label": 255, "final_upsample": "bilinear"}
    assert (meta["input"]["height"], meta["input"]["width"]) == (H, W)
    assert meta["export"]["mode"] == "int8" and meta["export"]["io_dtype"] == "uint8"


def test_fp32_tflite_matches_keras(exported):
    ref, resized = _keras_logits(exported)
    seg = Segmenter.from_file(exported["paths"]["fp32"])
    class_map = seg.segment(exported["image"])
    assert np.abs(seg.logits() - ref).max() < 1e-4
    # the class map of the original 50x80 image: crop 60x96 of the canvas, bilinear resize, argmax
    expected = logits_to_class_map(ref, resized, (50, 80))
    assert class_map.shape == (50, 80) and class_map.dtype == np.uint8
    assert (class_map == expected).mean() > 0.999
    assert len(np.unique(expected)) > 1


def test_int8_argmax_agrees_with_float(exported):
    ref, _ = _keras_logits(exported)
    seg = Segmenter.from_file(exported["paths"]["int8"])
    assert seg.input_dtype == np.uint8
    seg.segment(exported["image"])
    q = seg.logits()
    scale = seg._logits_detail["quantization"][0]
    top2 = np.sort(ref, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 8 * scale    # float margin well above the int8 step
    agree = q.argmax(-1) == ref.argmax(-1)
    assert clear.mean() > 0.5
    assert agree[clear].mean() > 0.99
    assert agree.mean() > 0.9


def test_fpn_edge_segment_cli(exported, capsys):
    out = exported["dir"] / "cli_out"
    rc = edge_main(["segment", str(exported["paths"]["int8"]), str(exported["dir"] / "scene.png"),
                    "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "segmentation.json").read_text())
    entry = report["images"][0]
    assert report["labels"] == ["background", *LABELS] and entry["overlay"] == "scene_overlay.png"
    mask = Image.open(out / entry["mask"])
    assert mask.mode == "P" and mask.size == (80, 50)
    expected = Segmenter.from_file(exported["paths"]["int8"]).segment(exported["image"])
    np.testing.assert_array_equal(np.asarray(mask), expected)
    assert sum(entry["class_fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    overlay = np.asarray(Image.open(out / entry["overlay"]).convert("RGB"))
    assert overlay.shape == (50, 80, 3)
    # the overlay is the image with class colours blended in (+ a legend in the top-left corner)
    plain = np.asarray(draw_segmentation(exported["image"], expected, report["labels"], legend=False))
    np.testing.assert_array_equal(overlay[:, 56:], plain[:, 56:])  # right of the legend
    # a segmentation model is not a detector: one-line error, exit 2
    rc = edge_main(["detect", str(exported["paths"]["int8"]), str(exported["dir"] / "scene.png"),
                    "--out", str(out / "det")])
    assert rc == 2 and "use `fpn-edge segment`" in capsys.readouterr().err


def test_overlay_colours_by_hand():
    img = np.full((4, 6, 3), 100, np.uint8)
    cmap = np.zeros((4, 6), np.uint8)
    cmap[1:3, 2:5] = 2
    pal = segmentation_palette(3)
    assert tuple(pal[0]) == (0, 0, 0) and tuple(pal[2]) == class_color(1)  # same colour as detection id 1
    out = np.asarray(draw_segmentation(img, cmap, ["background", "a", "b"], alpha=0.5, legend=False))
    np.testing.assert_array_equal(out[cmap == 0], img[cmap == 0])
    expected = np.round(100 * 0.5 + np.array(class_color(1)) * 0.5)
    np.testing.assert_array_equal(out[1, 2], expected)


def test_bench_and_info_on_a_segmenter(exported, capsys):
    from fpn_edge.bench import benchmark

    res = benchmark(exported["paths"]["int8"], runs=2, warmup=1, threads=1)
    assert res["output_kind"] == "logits" and "end_to_end" in res["latency_ms"]
    assert edge_main(["info", str(exported["paths"]["fp32"])]) == 0
    assert "segmentation {\"background_id\": 0" in capsys.readouterr().out


def test_detection_only_options_are_refused(exported):
    with pytest.raises(ExportError, match="--raw, --prune: not available for segmentation"):
        export_segmenter(exported["model"], exported["config"], LABELS, "fp32",
                         out=exported["dir"] / "x.tflite", raw=True, prune=0.5)
    assert not (exported["dir"] / "x.tflite").exists()
