"""Every bad input a user can give is one clear line and touches nothing.

A table of cases over every verb of ``keras-fpn`` and ``fpn-edge``, every input format and every
config section. Each case runs the command in this process and asserts: exit status 2, exactly one
stderr line, which starts with the command's error prefix and names the file / key / value at
fault, no traceback, no warning logged besides, and every file of the workspace byte-identical
(and no new file) afterwards. The workspace (a tiny dataset in every format, a trained tiny run,
its fp32 export, the bad files) is built once by ``conftest.ws``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from fpn_edge.cli import main as edge_main
from keras_fpn.cli import main as fpn_main

from reliability_helpers import run_command

K, E = "keras-fpn", "fpn-edge"


@dataclass(frozen=True)
class Case:
    id: str
    prog: str            # K or E
    argv: tuple          # "{name}" is a workspace path (conftest.ws)
    names: tuple         # what the error line must contain (file, key, value)
    patch: str = ""      # a fixture-level patch to apply first (see _patch)


def case(id, prog, argv, *names, patch=""):
    return Case(id, prog, tuple(argv.split()) if isinstance(argv, str) else tuple(argv), names, patch)


TRAIN = "train {cfg} --run-dir {root}/new_run --quiet"

CASES = [
    # ---------------------------------------------------------------- keras-fpn info, configs
    case("info-num-classes", K, "info --num-classes -1", "model.num_classes", "-1"),
    case("info-image-size", K, "info --image-size 100 100", "model.image_size", "100x100"),
    case("info-preset", K, "info --preset yolo", "--preset", "yolo"),
    case("configs-migrate-missing", K, "configs migrate {root}/nope.yaml", "nope.yaml"),
    case("configs-migrate-bad-yaml", K, "configs migrate {bad_yaml}", "bad_yaml.yaml"),
    case("configs-show-unknown", K, "configs show no_such_config", "no_such_config"),
    case("configs-list-extra-argument", K, "configs list extra", "extra"),
    # ---------------------------------------------------------------- data convert / stats / preview / synthetic
    case("convert-missing", K, "data convert {root}/nope.json --out {root}/o.json", "nope.json", "No such file"),
    case("convert-onto-itself", K, "data convert {val_json} --to coco --out {val_json}", "val.json", "input"),
    case("convert-onto-an-image", K, "data convert {val_json} --out {image}", "input", ".jpg"),
    case("convert-invalid-json", K, "data convert {invalid_json} --out {root}/o.json", "invalid.json"),
    case("convert-json-list", K, "data convert {list_json} --out {root}/o.json", "list.json"),
    case("convert-unknown-type", K, "data convert {unknown_ext} --out {root}/o.json", "boxes.csv"),
    case("convert-voc-strict", K, "data convert {voc_broken} --strict --out {root}/o.json", "v0.xml"),
    case("convert-yolo-strict", K, "data convert {yolo_broken} --strict --out {root}/o.json", "y0.txt"),
    case("convert-tfrecord-truncated", K, "data convert {tfrecord_cut} --strict --out {root}/o.json",
         "cut.tfrecord"),
    case("convert-out-under-a-file", K, "data convert {val_json} --out {afile}/o.json", "afile.txt"),
    case("convert-to-voc", K, "data convert {val_json} --to voc --out {root}/o.json", "--to", "voc"),
    case("convert-format-mismatch", K, "data convert {val_json} --format voc --out {root}/o.json", "val.json"),
    case("stats-level", K, "data stats {val_json} --min-level 9", "--min-level", "9"),
    case("stats-levels-order", K, "data stats {val_json} --min-level 5 --max-level 3", "--min-level", "5"),
    case("stats-image-size", K, "data stats {val_json} --image-size 0", "--image-size", "0"),
    case("stats-anchor-scale", K, "data stats {val_json} --anchor-scale nan", "--anchor-scale", "nan"),
    case("stats-missing", K, "data stats {root}/nope/", "nope"),
    case("preview-num", K, "data preview {val_json} --out {root}/p.png --num 0", "--num", "0"),
    case("preview-onto-an-image", K, "data preview {val_json} --out {image}", ".jpg", "input"),
    case("synthetic-num-train", K, "data synthetic {root}/syn --num-train 0", "--num-train", "0"),
    case("synthetic-out-is-a-file", K, "data synthetic {afile} --num-train 1 --num-val 1", "afile.txt"),
    # ---------------------------------------------------------------- train: the config file
    case("train-config-missing", K, "train {root}/nope.yaml", "nope.yaml", "not found"),
    case("train-config-bad-yaml", K, "train {bad_yaml}", "bad_yaml.yaml", "YAML"),
    case("train-config-list", K, "train {list_yaml}", "list_yaml.yaml", "mapping"),
    case("train-section-not-mapping", K, "train {scalar_section_yaml}", "train", "mapping"),
    case("train-unknown-section", K, "train {section_yaml}", "trainer"),
    case("train-unknown-key", K, "train {unknown_key_yaml}", "model.neck.widht"),
    case("train-old-flat-key", K, "train {flat_yaml}", "model.fpn_width", "model.neck.width"),
    case("train-set-no-equals", K, TRAIN + " --set train.epochs", "--set", "train.epochs"),
    case("train-set-bad-yaml", K, TRAIN + " --set train.epochs=[", "--set", "train.epochs=["),
    case("train-set-unknown-section", K, TRAIN + " --set trainer.epochs=3", "trainer"),
    # ---------------------------------------------------------------- train: model section
    case("model-image-size", K, TRAIN + " --set model.image_size=[100,100]", "model.image_size", "100x100"),
    case("model-task", K, TRAIN + " --set model.task=classify", "model.task", "classify"),
    case("model-activation", K, TRAIN + " --set model.activation=gelu", "model.activation", "gelu"),
    case("model-bn-momentum", K, TRAIN + " --set model.bn_momentum=1.0", "model.bn_momentum", "1.0"),
    case("model-preset", K, TRAIN + " --set model.preset=yolo", "model.preset", "yolo"),
    case("backbone-name", K, TRAIN + " --set model.backbone.name=vgg16", "model.backbone.name", "vgg16"),
    case("backbone-alpha", K, TRAIN + " --set model.backbone.alpha=0", "model.backbone.alpha", "0"),
    case("backbone-weights-missing", K, TRAIN + " --set model.backbone.weights={root}/nope.weights.h5",
         "nope.weights.h5", "not found"),
    case("backbone-weights-truncated", K, TRAIN + " --set model.backbone.weights={backbone_cut}",
         ".weights.h5", "truncated"),
    case("backbone-imagenet-offline", K, TRAIN + " --set model.backbone.weights=imagenet",
         "model.backbone.weights", "imagenet", patch="offline"),
    case("neck-width", K, TRAIN + " --set model.neck.width=0", "model.neck.width", "0"),
    case("neck-levels", K, TRAIN + " --set model.neck.min_level=1", "min_level", "1..5"),
    case("neck-kind", K, TRAIN + " --set model.neck.kind=bifpn", "model.neck.kind", "bifpn"),
    case("head-kind", K, TRAIN + " --set model.head.kind=yolo", "model.head.kind", "yolo"),
    case("head-prior", K, TRAIN + " --set model.head.prior_probability=1.0", "model.head.prior_probability",
         "1.0"),
    case("anchors-ratios", K, TRAIN + " --set model.anchors.aspect_ratios=[]", "model.anchors.aspect_ratios"),
    case("anchors-scale", K, TRAIN + " --set model.anchors.scale=-1", "model.anchors.scale", "-1"),
    case("postprocess-score", K, TRAIN + " --set model.postprocess.score_threshold=.nan",
         "model.postprocess.score_threshold", "nan"),
    case("postprocess-iou", K, TRAIN + " --set model.postprocess.iou_threshold=0", "model.postprocess.iou_threshold"),
    case("segmentation-upsample", K, TRAIN + " --set model.segmentation.final_upsample=cubic",
         "model.segmentation.final_upsample", "cubic"),
    case("segmentation-ignore", K, TRAIN + " --set model.segmentation.ignore_label=300",
         "model.segmentation.ignore_label", "300"),
    # ---------------------------------------------------------------- train: data section
    case("data-train-missing", K, TRAIN + " --set data.train={root}/nope.json", "nope.json", "No such file"),
    case("data-train-unset", K, TRAIN + " --set data.train=null", "data.train"),
    case("data-val-other-classes", K, TRAIN + " --set data.val={other_json}", "classes"),
    case("data-include-missing", K, TRAIN + " --set data.train_include={root}/nope.txt", "nope.txt"),
    case("data-include-none-match", K, TRAIN + " --set data.train_include={none_txt}", "none.txt"),
    case("data-include-csv-column", K, TRAIN + " --set data.train_include={nocol_csv}", "nocol.csv", "filename"),
    case("data-scale-jitter", K, TRAIN + " --set data.scale_jitter=[1.2,0.8]", "data.scale_jitter", "0.8"),
    case("data-hflip-type", K, TRAIN + " --set data.hflip=sometimes", "data.hflip", "sometimes"),
    case("data-unset-variable", K, TRAIN + " --set data.train=${{RELIABILITY_UNSET_VAR}}/t.json",
         "RELIABILITY_UNSET_VAR"),
    case("data-strict-bad-image", K, TRAIN + " --set data.val={badval_json} --set data.strict=true",
         "truncated.jpg"),
    # ---------------------------------------------------------------- train: train section
    case("train-epochs-0", K, TRAIN + " --set train.epochs=0", "train.epochs", "0"),
    case("train-epochs-negative", K, TRAIN + " --set train.epochs=-3", "train.epochs", "-3"),
    case("train-steps-negative", K, TRAIN + " --set train.steps_per_epoch=-5", "train.steps_per_epoch", "-5"),
    case("train-batch-0", K, TRAIN + " --set train.batch_size=0", "train.batch_size", "0"),
    case("train-lr-nan", K, TRAIN + " --set train.learning_rate=.nan", "train.learning_rate", "nan"),
    case("train-optimizer", K, TRAIN + " --set train.optimizer=adam", "train.optimizer", "adam"),
    case("train-checkpoint-metric", K, TRAIN + " --set train.checkpoint_metric=val_mIoU",
         "train.checkpoint_metric", "val_mIoU"),
    case("train-matcher", K, TRAIN + " --set train.matcher=hungarian", "train.matcher", "hungarian"),
    case("train-iou-order", K, TRAIN + " --set train.negative_iou=0.6", "train.negative_iou", "0.6"),
    case("train-seed", K, TRAIN + " --set train.seed=-1", "train.seed", "-1"),
    case("train-eval-every", K, TRAIN + " --set train.eval_every=-1", "train.eval_every", "-1"),
    case("train-warmup", K, TRAIN + " --set train.warmup_epochs=-1", "train.warmup_epochs", "-1"),
    case("train-clipnorm", K, TRAIN + " --set train.clipnorm=0", "train.clipnorm", "0"),
    case("train-epochs-type", K, TRAIN + " --set train.epochs=many", "train.epochs", "many"),
    # ---------------------------------------------------------------- train: export section
    case("export-int8-io", K, TRAIN + " --set export.int8_io=int4", "export.int8_io", "int4"),
    case("export-qat-steps", K, TRAIN + " --set export.qat_steps=0", "export.qat_steps", "0"),
    case("export-representative", K, TRAIN + " --set export.representative_images=0",
         "export.representative_images", "0"),
    case("export-qat-lr", K, TRAIN + " --set export.qat_learning_rate=-1", "export.qat_learning_rate", "-1"),
    # ---------------------------------------------------------------- train: the run directory
    case("run-dir-other-config", K, "train {cfg} --run-dir {run} --quiet --set model.neck.width=16",
         "run", "model.neck.width", "8 -> 16", "--force"),
    case("run-dir-other-dataset", K, "train {cfg} --run-dir {run} --quiet --set data.train={other_json} "
         "--set data.val={other_json}", "run", "labels", "--force"),
    case("run-dir-is-a-file", K, "train {cfg} --run-dir {afile} --quiet", "afile.txt"),
    # ---------------------------------------------------------------- evaluate
    case("evaluate-no-run", K, "evaluate {root}/nope_run", "nope_run", "not found"),
    case("evaluate-no-labels", K, "evaluate {run_nolabels}", "labels.txt"),
    case("evaluate-truncated-checkpoint", K, "evaluate {run_trunc} --out {root}/ev.json",
         "best.weights.h5", "truncated"),
    case("evaluate-other-classes", K, "evaluate {run} --data {other_json} --out {root}/ev.json", "classes"),
    case("evaluate-include-none-match", K, "evaluate {run} --include {none_txt} --out {root}/ev.json", "none.txt"),
    case("evaluate-out-is-a-folder", K, "evaluate {run} --out {empty_dir}", "empty", "folder"),
    case("evaluate-tolerance", K, "evaluate {run} --boundary-tolerance -1", "--boundary-tolerance", "-1"),
    case("evaluate-which", K, "evaluate {run} --which middle", "--which", "middle"),
    # ---------------------------------------------------------------- predict
    case("predict-threshold-nan", K, "predict {run} {image} --out {root}/pred --threshold nan", "--threshold",
         "nan"),
    case("predict-max-detections", K, "predict {run} {image} --out {root}/pred --max-detections 0",
         "--max-detections", "0"),
    case("predict-input-missing", K, "predict {run} {root}/nope.jpg --out {root}/pred", "nope.jpg", "not found"),
    case("predict-empty-folder", K, "predict {run} {empty_dir} --out {root}/pred", "empty", "no image"),
    case("predict-out-is-a-file", K, "predict {run} {image} --out {afile}", "afile.txt"),
    case("predict-out-read-only", K, "predict {run} {image} --out {readonly}/pred", "pred"),
    case("predict-truncated-checkpoint", K, "predict {run_trunc} {image} --out {root}/pred",
         "best.weights.h5", "truncated"),
    # ---------------------------------------------------------------- export
    case("export-mode", K, "export {run} --mode int3", "--mode", "int3"),
    case("export-prune", K, "export {run} --mode fp32 --prune 1.5", "--prune", "1.5"),
    case("export-set-not-export", K, "export {run} --mode fp32 --set train.epochs=3", "train.epochs"),
    case("export-set-bad-value", K, "export {run} --mode fp32 --set export.int8_io=int4", "export.int8_io", "int4"),
    case("export-out-read-only", K, "export {run} --mode fp32 --out {readonly}/m.tflite", "m.tflite"),
    case("export-truncated-checkpoint", K, "export {run_trunc} --mode fp32 --out {root}/m.tflite",
         "best.weights.h5", "truncated"),
    case("export-no-run", K, "export {root}/nope_run --mode fp32", "nope_run"),
    # ---------------------------------------------------------------- compare, demo
    case("compare-modes", K, "compare {run} --modes fp32,int3", "--modes", "int3"),
    case("compare-threads", K, "compare {run} --threads 0", "--threads", "0"),
    case("compare-runs", K, "compare {run} --runs 0", "--runs", "0"),
    case("compare-data-missing", K, "compare {run} --data {root}/nope.json --modes fp32", "nope.json"),
    case("compare-out-is-a-file", K, "compare {run} --modes fp32 --out {afile}", "afile.txt"),
    case("compare-include-none-match", K, "compare {run} --modes fp32 --include {none_txt}", "none.txt"),
    case("compare-truncated-checkpoint", K, "compare {run_trunc} --modes fp32 --out {root}/cmp",
         "best.weights.h5", "truncated"),
    case("demo-threads", K, "demo --threads 0", "--threads", "0"),
    case("demo-out-is-a-file", K, "demo --out {afile} --fast", "afile.txt"),
    # ---------------------------------------------------------------- fpn-edge
    case("detect-model-missing", E, "detect {root}/nope.tflite {image} --out {root}/det --quiet", "nope.tflite"),
    case("detect-model-text", E, "detect {tflite_text} {image} --out {root}/det --quiet", "text.tflite",
         "not a TFLite"),
    case("detect-model-truncated-metadata", E, "detect {tflite_cut_meta} {image} --out {root}/det --quiet",
         "cut_meta.tflite", "truncated"),
    case("detect-model-truncated-body", E, "detect {tflite_cut_body} {image} --out {root}/det --quiet",
         "cut_body.tflite", "truncated"),
    case("detect-model-no-metadata", E, "detect {tflite_nometa} {image} --out {root}/det --quiet",
         "nometa.tflite", "metadata"),
    case("detect-threshold-nan", E, "detect {tflite} {image} --out {root}/det --threshold nan", "--threshold",
         "nan"),
    case("detect-threshold-above-1", E, "detect {tflite} {image} --out {root}/det --threshold 2", "--threshold"),
    case("detect-out-is-a-file", E, "detect {tflite} {image} --out {afile} --quiet", "afile.txt"),
    case("detect-out-read-only", E, "detect {tflite} {image} --out {readonly}/det --quiet", "det"),
    case("detect-input-missing", E, "detect {tflite} {root}/nope.jpg --out {root}/det --quiet", "nope.jpg"),
    case("detect-empty-folder", E, "detect {tflite} {empty_dir} --out {root}/det --quiet", "empty"),
    case("detect-delegate", E, "detect {tflite} {image} --out {root}/det --delegate tpu9 --quiet", "tpu9"),
    case("detect-delegate-gpu", E, "detect {tflite} {image} --out {root}/det --delegate gpu --quiet", "gpu"),
    case("detect-threads", E, "detect {tflite} {image} --out {root}/det --threads 0", "--threads", "0"),
    case("detect-max-detections", E, "detect {tflite} {image} --out {root}/det --max-detections 0",
         "--max-detections", "0"),
    case("segment-a-detector", E, "segment {tflite} {image} --out {root}/seg --quiet", "model_fp32.tflite",
         "detection"),
    case("segment-alpha", E, "segment {tflite} {image} --out {root}/seg --alpha 2", "--alpha", "2"),
    case("bench-runs", E, "bench {tflite} --runs 0", "--runs", "0"),
    case("bench-out-is-a-folder", E, "bench {tflite} --runs 1 --warmup 0 --out {empty_dir} --quiet", "empty",
         "folder"),
    case("bench-out-read-only", E, "bench {tflite} --runs 1 --warmup 0 --out {readonly}/b.json --quiet",
         "b.json"),
    case("bench-image-missing", E, "bench {tflite} --runs 1 --image {root}/nope.jpg --quiet", "nope.jpg"),
    case("bench-model-text", E, "bench {tflite_text} --runs 1", "text.tflite"),
    case("info-model-missing", E, "info {root}/nope.tflite", "nope.tflite"),
    case("info-model-truncated", E, "info {tflite_cut_body}", "cut_body.tflite", "truncated"),
]


def _patch(name, ws, monkeypatch):
    if name == "offline":  # Keras' download fails as it does without network; no cached weights
        import urllib.error

        import keras.src.backend.config as keras_config
        import keras.src.utils.file_utils as file_utils

        def offline(*args, **kwargs):
            raise urllib.error.URLError("[Errno -2] Name or service not known")

        monkeypatch.setattr(file_utils, "urlretrieve", offline)
        monkeypatch.setattr(keras_config, "_KERAS_DIR", str(ws["root"] / "keras_home"))


def test_the_table_is_big_enough():
    assert len(CASES) >= 70
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(c, ws, tree, capsys, caplog, monkeypatch):
    _patch(c.patch, ws, monkeypatch)
    paths = {k: str(v) for k, v in ws.items()}
    argv = [a.format(**paths) for a in c.argv]
    before = tree.snapshot()
    r = run_command(fpn_main if c.prog == K else edge_main, argv, capsys, caplog)
    after = tree.snapshot()
    assert r.code == 2, (r.code, r.err, r.out[-2000:])
    assert "Traceback" not in r.err
    assert len(r.lines) == 1, r.err
    line = r.lines[0]
    if os.environ.get("RELIABILITY_SHOW"):  # to read every message: RELIABILITY_SHOW=1 pytest -s
        print(f"\n[{c.id}] {line}")
    assert line.startswith(c.prog) and ": error: " in line, line
    for name in c.names:
        assert name.format(**paths) in line, (name, line)
    assert not r.warnings, r.warnings
    changed = sorted(k for k in before if after.get(k) != before[k])
    created = sorted(set(after) - set(before))
    assert not changed, f"pre-existing files changed or removed: {changed}"
    assert not created, f"files created by a failed command: {created}"
