"""The reliability suite's workspace: a tiny dataset in every format, a trained tiny run, its fp32 export,
and the bad inputs the cases feed the commands (built once per session).

Every case runs a command in this process (``keras_fpn.cli.main`` / ``fpn_edge.cli.main``) and checks
what a user sees: the exit status, the stderr lines, that no traceback escaped, and that every file
that existed before is byte-identical after (``Tree``: SHA-256 of every file, recomputed only for
files whose size, mtime or inode changed).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reliability_helpers import Tree, coco_with, png_header_only, truncate_copy, voc_folder, yolo_folder

#: 64 px, MobileNetV2 0.35 from scratch, P3-P5 width 8, one 1x1 anchor, 1 step of 2 images per epoch
TINY_CONFIG = """\
model:
  image_size: [64, 64]
  backbone: {alpha: 0.35, weights: null}
  neck: {max_level: 5, width: 8}
  head: {width: 8, depth: 1}
  anchors: {scales_per_octave: 1, aspect_ratios: [1.0]}
data:
  train: ../data/train.json
  val: ../data/val.json
  cache: false
train:
  epochs: 1
  steps_per_epoch: 1
  batch_size: 2
  optimizer: adamw
  learning_rate: 0.001
  eval_every: 1
  precise_bn_batches: 1
export:
  representative_images: 2
"""
LABELS = ["circle", "square", "triangle", "ring", "cross"]


@pytest.fixture(scope="session")
def ws(tmp_path_factory, shared_data_or_none):
    """The workspace (paths by name), built once: data, formats, bad inputs, a trained run, its export."""
    from keras_fpn.config import load_config
    from keras_fpn.data.synthetic import generate_synthetic_coco
    from keras_fpn.training.train import train

    root = tmp_path_factory.mktemp("reliability")
    p = {"root": root}
    data = root / "data"
    generate_synthetic_coco(data, num_train=6, num_val=3, image_size=64, seed=3, masks=False)
    p.update(data=data, train_json=data / "train.json", val_json=data / "val.json")
    val_images = sorted((data / "val").iterdir())
    p["image"] = val_images[0]

    bad = root / "bad"
    bad.mkdir()
    p["truncated_jpg"] = truncate_copy(val_images[1], bad / "truncated.jpg", 0.5)
    p["text_jpg"] = bad / "notes.jpg"
    p["text_jpg"].write_text("this is a text file, not a JPEG\n")
    p["bomb_png"] = png_header_only(bad / "huge.png", 20000, 10000)
    g16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    p["g16_png"] = bad / "gray16.png"
    Image.fromarray(g16).save(p["g16_png"])
    p["empty_dir"] = root / "empty"
    p["empty_dir"].mkdir()
    p["afile"] = root / "afile.txt"
    p["afile"].write_text("a file where a folder is expected\n")
    p["readonly"] = Path("/sys/kernel") if os.geteuid() == 0 else root / "readonly"
    if os.geteuid() != 0:
        p["readonly"].mkdir()
        p["readonly"].chmod(0o555)

    other = root / "other"
    other.mkdir()
    p["other_json"] = coco_with(p["val_json"], other / "other_classes.json", names=["a", "b", "c", "d", "e"])
    p["badval_json"] = coco_with(p["val_json"], other / "val_with_truncated.json",
                                  images=[val_images[0], p["truncated_jpg"], val_images[2]])
    p["invalid_json"] = other / "invalid.json"
    p["invalid_json"].write_text('{"images": [')
    p["list_json"] = other / "list.json"
    p["list_json"].write_text("[1, 2, 3]")
    p["unknown_ext"] = other / "boxes.csv"
    p["unknown_ext"].write_text("a,b\n")
    p["none_txt"] = other / "none.txt"
    p["none_txt"].write_text("no_such_image.jpg\n")
    p["nocol_csv"] = other / "nocol.csv"
    p["nocol_csv"].write_text("image,label\nx.jpg,a\n")

    formats = root / "formats"
    voc_folder(formats / "voc_broken", val_images, broken=True)
    yolo_folder(formats / "yolo_broken", val_images, broken=True)
    p["voc_broken"], p["yolo_broken"] = formats / "voc_broken", formats / "yolo_broken"
    from keras_fpn.data import read_coco, write_tfrecord

    p["tfrecord"] = Path(write_tfrecord(read_coco(p["val_json"]), formats / "val.tfrecord")[0])
    p["tfrecord_cut"] = truncate_copy(p["tfrecord"], formats / "cut.tfrecord", 0.6)

    cfg_dir = root / "cfg"
    cfg_dir.mkdir()
    p["cfg"] = cfg_dir / "tiny.yaml"
    p["cfg"].write_text(TINY_CONFIG)
    for name, text in {"bad_yaml": "model: [unclosed\n", "list_yaml": "- train\n- model\n",
                       "section_yaml": "trainer: {epochs: 3}\n", "scalar_section_yaml": "train: 5\n",
                       "flat_yaml": "model: {fpn_width: 64}\n",
                       "unknown_key_yaml": "model: {neck: {widht: 8}}\n"}.items():
        p[name] = cfg_dir / f"{name}.yaml"
        p[name].write_text(text)

    run = root / "run"
    train(load_config(p["cfg"]), run, verbose=0)
    from fpn_export.convert import export_model

    p["run"] = run
    p["tflite"] = export_model(run, "fp32")

    models = root / "models"
    models.mkdir()
    from fpn_edge.metadata import strip_metadata

    p["tflite_cut_meta"] = truncate_copy(p["tflite"], models / "cut_meta.tflite", -40)
    p["tflite_cut_body"] = truncate_copy(p["tflite"], models / "cut_body.tflite", 0.4)
    p["tflite_nometa"] = models / "nometa.tflite"
    p["tflite_nometa"].write_bytes(strip_metadata(p["tflite"].read_bytes()))
    p["tflite_text"] = models / "text.tflite"
    p["tflite_text"].write_text("not a model\n")

    p["run_trunc"] = root / "run_trunc"
    p["run_trunc"].mkdir()
    for name in ("config.yaml", "labels.txt", "last.weights.h5"):
        shutil.copy(run / name, p["run_trunc"] / name)
    truncate_copy(run / "best.weights.h5", p["run_trunc"] / "best.weights.h5", 0.5)
    p["run_nolabels"] = root / "run_nolabels"
    p["run_nolabels"].mkdir()
    shutil.copy(run / "config.yaml", p["run_nolabels"] / "config.yaml")
    if shared_data_or_none is not None:
        weights = shared_data_or_none / "weights" / "mobilenet_v2_0.35_no_top.weights.h5"
        if weights.is_file():
            p["backbone_cut"] = truncate_copy(weights, bad / "mobilenet_cut.weights.h5", 0.5)
    p["backbone_cut"] = p.get("backbone_cut") or truncate_copy(run / "last.weights.h5", bad / "cut.weights.h5", 0.5)
    return p


@pytest.fixture(scope="session")
def shared_data_or_none():
    """The shared data folder (``KERAS_FPN_DATA``, which ``tests/conftest.py`` sets) when present, else None."""
    path = Path(os.environ.get("KERAS_FPN_DATA", "/nonexistent"))
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def tree(ws) -> Tree:
    return Tree(ws["root"])
