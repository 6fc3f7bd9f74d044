"""What a command skips, repairs or resumes it says in one line naming the file, counts right, and
loses nothing: the cases of issue 23 that end well (exit 0) or finish a batch around a bad input (exit 2).

The undecodable-image rule (DESIGN.md, Decisions -> Data): an image that cannot be decoded leaves with
all its boxes and one warning naming it (evaluate, compare, the validation during train); an image given
by name to predict / fpn-edge is one error line, the others are processed, and the exit status is 2.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpn_edge.cli import main as edge_main
from keras_fpn.cli import main as fpn_main
from reliability_helpers import run_command


def _copy_run(ws, dst: Path) -> Path:
    shutil.copytree(ws["run"], dst, ignore=shutil.ignore_patterns("*.tflite", "compare", "logs"))
    return dst


def test_evaluate_leaves_an_undecodable_image_out_of_the_count_and_the_ground_truth(ws, tmp_path, capsys, caplog,
                                                                                     monkeypatch):
    """Perfect detections of the decodable images score AP 1.0 only if the truncated image's boxes
    are not in the ground truth (they used to count as missed); the report counts 2 images, not 3."""
    from keras_fpn.evaluation import detection

    def perfect(model, dataset, model_cfg, **_):
        return [{"image_id": r.image_id, "category_id": dataset.label_map.to_source(int(c)),
                 "bbox": [float(v) for v in box], "score": 1.0}
                for r in dataset.records for box, c in zip(r.pixel_boxes_xywh(), r.classes)]

    monkeypatch.setattr(detection, "predict_dataset", perfect)
    out = tmp_path / "ev.json"
    r = run_command(fpn_main, ["evaluate", ws["run"], "--data", ws["badval_json"], "--out", out], capsys, caplog)
    assert r.code == 0, r.err
    assert len(r.warnings) == 1 and "truncated.jpg" in r.warnings[0] and "skipped image" in r.warnings[0]
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 2
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)


def test_compare_runs_through_an_undecodable_validation_image(ws, tmp_path, capsys, caplog):
    """The main job used to end in an EdgeError traceback; now the image is left out once, for every variant."""
    out = tmp_path / "cmp"
    r = run_command(fpn_main, ["compare", ws["run"], "--data", ws["badval_json"], "--modes", "fp32", "--runs", "1",
                               "--threads", "1", "--out", out], capsys, caplog)
    assert r.code == 0, r.err
    assert "Traceback" not in r.err and "error" not in r.err, r.err  # (stderr holds the progress bar)
    bad = [w for w in r.warnings if "truncated.jpg" in w]
    assert len(bad) == 1, r.warnings
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["images"] == 2
    assert [v["variant"] for v in report["variants"]] == ["float (Keras)", "fp32"]


def test_predict_keeps_every_output_and_goes_past_a_bad_image(ws, tmp_path, capsys, caplog):
    """a/x.jpg, b/x.jpg and b/x.png used to overwrite each other's outputs (and say "3 annotated");
    a bad image used to stop the batch before detections.json was written."""
    for folder, name in (("a", "x.jpg"), ("b", "x.jpg"), ("b", "x.png")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.open(ws["image"]).save(tmp_path / folder / name)
    inputs = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "b" / "x.png", ws["truncated_jpg"],
              tmp_path / "a" / "x.jpg"]  # the same file twice is run once
    out = tmp_path / "pred"
    r = run_command(fpn_main, ["predict", ws["run"], *inputs, "--out", out, "--threshold", "0.0"], capsys, caplog)
    assert r.code == 2
    assert len(r.lines) == 1 and "truncated.jpg" in r.lines[0] and "Traceback" not in r.err, r.err
    assert "3 annotated images" in r.out
    dets = json.loads((out / "detections.json").read_text())
    assert sorted(dets) == sorted([str(inputs[0]), str(inputs[1]), "x.png", "truncated.jpg"])
    assert "error" in dets["truncated.jpg"]
    annotated = [dets[k]["annotated"] for k in dets if "annotated" in dets[k]]
    assert len(set(annotated)) == 3 and all((out / a).is_file() for a in annotated)


def test_fpn_edge_detect_goes_past_a_huge_image_and_reads_16_bit(ws, tmp_path, capsys, caplog):
    """A 20000x10000 PNG was a DecompressionBombError traceback that ended the whole batch."""
    out = tmp_path / "det"
    r = run_command(edge_main, ["detect", ws["tflite"], ws["bomb_png"], ws["g16_png"], ws["image"], "--out", out,
                                "--quiet"], capsys, caplog)
    assert r.code == 2
    assert len(r.lines) == 1 and "huge.png" in r.lines[0] and "pixels" in r.lines[0], r.err
    report = json.loads((out / "detections.json").read_text())
    assert [Path(e["file"]).name for e in report["images"]] == ["gray16.png", Path(ws["image"]).name]
    assert [Path(e["file"]).name for e in report["errors"]] == ["huge.png"]


def test_16_bit_png_keeps_its_values_in_training_and_on_the_edge(ws):
    """16-bit PNGs loaded as all white (Pillow clips I;16 at 255); both decoders keep the high byte."""
    from fpn_edge.preprocess import load_image as edge_load
    from keras_fpn.data.images import load_image

    expected = (np.asarray(Image.open(ws["g16_png"])).astype(np.uint16) >> 8).astype(np.uint8)
    pixels = load_image(ws["g16_png"])
    assert pixels.shape == (64, 64, 3) and pixels.min() == 0 and pixels.max() == 255
    np.testing.assert_array_equal(pixels[..., 0], expected)
    np.testing.assert_array_equal(edge_load(ws["g16_png"]), pixels)


def test_rerunning_a_finished_training_changes_nothing(ws, tree, capsys, caplog):
    before = tree.snapshot()
    r = run_command(fpn_main, ["train", ws["cfg"], "--run-dir", ws["run"], "--quiet"], capsys, caplog)
    assert r.code == 0, r.err
    assert "best (epoch 1)" in r.out
    after = tree.snapshot()
    assert {k: v for k, v in after.items() if k in before} == before and set(after) == set(before)


def test_a_rerun_regenerates_a_missing_checkpoint_file(ws, tmp_path, capsys, caplog):
    from keras_fpn.training.checkpoints import verify_checkpoint

    run = _copy_run(ws, tmp_path / "run")
    (run / "last.keras").unlink()
    (run / "best.weights.h5").unlink()
    r = run_command(fpn_main, ["train", ws["cfg"], "--run-dir", run, "--quiet"], capsys, caplog)
    assert r.code == 0, r.err
    for name in ("last.keras", "best.weights.h5"):
        verify_checkpoint(run / name)
    import keras

    model = keras.saving.load_model(run / "last.keras", compile=False)
    reference = keras.saving.load_model(ws["run"] / "last.keras", compile=False)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_force_trains_anew_and_keeps_the_exports(ws, tmp_path, capsys, caplog, monkeypatch):
    """Another dataset (one training image undecodable too): refused without --force (nothing changes),
    trained anew with it; the export in the directory stays, the image is skipped with a warning."""
    import fault_child
    from reliability_helpers import coco_with

    fault_child.tiny_network(monkeypatch.setattr)  # the network does not matter here: train it fast
    run = _copy_run(ws, tmp_path / "run")
    shutil.copy(ws["tflite"], run / "model_fp32.tflite")
    train_images = sorted((ws["data"] / "train").iterdir())
    badtrain = coco_with(ws["train_json"], tmp_path / "badtrain.json", images=[ws["truncated_jpg"], *train_images[1:]])
    argv = ["train", ws["cfg"], "--run-dir", run, "--quiet", "--set", f"data.train={badtrain}",
            "--set", f"data.val={ws['badval_json']}"]
    r = run_command(fpn_main, argv, capsys, caplog)
    assert r.code == 2 and "data.train" in r.lines[0] and "--force" in r.lines[0]
    r = run_command(fpn_main, argv + ["--force"], capsys, caplog)
    assert r.code == 0, r.err
    assert any("truncated.jpg" in w for w in r.warnings)
    recorded = json.loads((run / "fingerprint.json").read_text())
    assert recorded["config"]["data"]["train"] == str(badtrain)
    assert (run / "model_fp32.tflite").read_bytes() == ws["tflite"].read_bytes()
    assert len((run / "history.csv").read_text().splitlines()) == 2  # the header and the new epoch


def test_a_nan_epoch_writes_no_checkpoint_and_no_backup(tmp_path):
    """TerminateOnNaN stops an epoch whose loss is NaN: its weights must not replace last.* nor advance
    the backup (the run keeps the last finite epoch), and train reports it (TrainingError)."""
    import keras

    from keras_fpn.training.callbacks import EvalCheckpoint
    from keras_fpn.training.checkpoints import BackupEveryStepsAndEpoch

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    check = EvalCheckpoint(tmp_path, None, every=1, last_epoch=3, monitor="val_loss")
    backup = BackupEveryStepsAndEpoch(tmp_path / "backup", 50)
    for cb in (check, backup):
        cb.set_model(model)
        cb.on_epoch_end(0, {"loss": math.nan, "val_loss": 1.0})
    assert check.nan_epoch == 1
    assert not list(tmp_path.rglob("*.h5")) and not list(tmp_path.rglob("*.json"))
    check.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0})
    backup.on_epoch_end(0, {"loss": 1.0})
    assert (tmp_path / "last.weights.h5").is_file()
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1
