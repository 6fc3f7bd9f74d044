"""The package as a user gets it: the README's Python API example (run as written), the public names,
the shipped configs, ``--version`` / ``python -m``, ``keras.saving.load_model`` after ``import keras_fpn``.

The README example trains the shipped demo config for 30 steps on 96 + 16 synthetic 96 px images,
evaluates, predicts, exports int8 and compares float vs int8 (~1.5-2.5 min on 2 cores); the tests
after it inspect what it left behind.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fpn_edge
import keras_fpn
from keras_fpn.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _python(code: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def readme_python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def readme_example(tmp_path_factory):
    """The README's python blocks executed in order, in one namespace, in an empty folder."""
    folder = tmp_path_factory.mktemp("readme")
    blocks = readme_python_blocks()
    assert len(blocks) >= 2, "the README's Python API section has lost its examples"
    namespace = {"__name__": "__main__"}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return folder, namespace


def test_readme_example_runs_and_returns_what_it_says(readme_example):
    folder, ns = readme_example
    run = ns["run"]
    assert isinstance(run, keras_fpn.Run) and run.path == Path("runs/quick")
    assert run.labels == ["circle", "square", "triangle", "ring", "cross"]
    assert run.model.count_params() > 0
    assert ns["metrics"]["images"] == 16 and 0 <= ns["metrics"]["AP50"] <= 1 and "per_class" in ns["metrics"]
    h, w = 96, 96
    for d in ns["detections"]:
        assert d["score"] > 0.1 and d["label"] in run.labels
        x1, y1, x2, y2 = d["box_xyxy"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    assert ns["tflite"] == Path("runs/quick/model_int8.tflite") and (folder / ns["tflite"]).is_file()
    assert [r["variant"] for r in ns["report"]["variants"]] == ["float (Keras)", "int8"]
    assert (folder / "runs/quick/compare/report.md").is_file()
    assert isinstance(ns["detector"], fpn_edge.Detector)
    assert ns["model"].optimizer.__class__.__name__ == "AdamW"


def test_run_predict_gives_original_pixels_like_the_cli(readme_example, tmp_path):
    """``Run.predict`` on a path or an array (any size) = ``keras-fpn predict``'s detections.json."""
    from PIL import Image

    folder, ns = readme_example
    run = keras_fpn.Run(folder / "runs/quick")
    wide = tmp_path / "wide.jpg"  # not the model's square input: letterboxed, then mapped back
    Image.open(folder / "data/val/000001.jpg").resize((150, 90)).save(wide)
    by_path, by_array = run.predict([wide, np.asarray(Image.open(wide).convert("RGB"))], threshold=0.0)
    assert by_path == by_array and len(by_path) > 0
    assert all(0 <= b[0] <= b[2] <= 150 and 0 <= b[1] <= b[3] <= 90 for b in (d["box_xyxy"] for d in by_path))
    assert main(["predict", str(run.path), str(wide), "--out", str(tmp_path / "pred"), "--threshold", "0.0"]) == 0
    cli = json.loads((tmp_path / "pred" / "detections.json").read_text())["wide.jpg"]
    assert (cli["width"], cli["height"]) == (150, 90)
    assert cli["detections"] == by_path


def test_run_evaluate_is_what_the_cli_writes(readme_example, tmp_path):
    folder, ns = readme_example
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(folder / "runs/quick"), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written.pop("checkpoint") == "best"
    assert written == ns["metrics"]


@pytest.mark.parametrize("imports", ["import keras_fpn, keras", "import keras; import keras_fpn",
                                     "import keras_fpn; import tensorflow; import keras"])
def test_saved_model_loads_with_plain_keras_after_import_keras_fpn(readme_example, imports):
    folder, _ = readme_example
    code = (f"{imports}\nm = keras.saving.load_model('runs/quick/best.keras')\n"
            "print(type(m.optimizer).__name__, type(m.optimizer._learning_rate).__name__, sorted(m.loss))")
    out = _python(code, cwd=folder)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["AdamW", "WarmupCosine", "['box_deltas',", "'class_logits']"]


def test_import_keras_fpn_is_light():
    """The package and its API names load without TensorFlow (a config check stays cheap)."""
    out = _python("import sys, keras_fpn; keras_fpn.Config, keras_fpn.Run, keras_fpn.train, keras_fpn.__version__; "
                  "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip() == "[]"


def test_public_names():
    assert set(keras_fpn.__all__) == {"Config", "ConfigError", "Run", "train", "__version__"}
    for name in keras_fpn.__all__:
        assert getattr(keras_fpn, name) is not None
    import fpn_edge

    for name in fpn_edge.__all__:
        assert getattr(fpn_edge, name) is not None
    with pytest.raises(AttributeError):
        keras_fpn.no_such_name  # noqa: B018


def test_version_and_python_m():
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "keras_fpn", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"keras-fpn {version('keras-fpn')}"
    out = subprocess.run([sys.executable, "-m", "fpn_edge", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "detect" in out.stdout


def test_configs_list_and_show(capsys):
    shipped = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == shipped
    demo = (ROOT / "configs" / "synthetic_retinanet_mobilenetv3small.yaml").read_text().splitlines()[0]
    assert dict(line.split(maxsplit=1) for line in lines)["synthetic_retinanet_mobilenetv3small"] == demo[2:]
    assert main(["configs", "list"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == shipped
    for name in ("synthetic_retinanet_mobilenetv3small", "synthetic_retinanet_mobilenetv3small.yaml"):
        assert main(["configs", "show", name]) == 0
        assert capsys.readouterr().out == (ROOT / "configs" / "synthetic_retinanet_mobilenetv3small.yaml").read_text()
    assert main(["configs", "show", "nope"]) == 2
    assert "no shipped config named 'nope' (shipped: ablation_c5_only" in capsys.readouterr().err


def test_config_from_yaml_by_name_file_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = keras_fpn.Config.from_yaml("synthetic_retinanet_mobilenetv3small",
                                         {"train.epochs": 2, "data.train": "d/train.json",
                                          "model.image_size": [96, 96], "data.val": tmp_path / "v.json"})
    assert by_name.train.epochs == 2 and by_name.model.image_size == (96, 96)
    assert by_name.data.train == str(tmp_path / "d/train.json")      # relative to the current directory
    assert by_name.data.val == str(tmp_path / "v.json")
    assert by_name.data.hflip is False and by_name.model.backbone.name == "mobilenetv3small_minimalistic"
    file = ROOT / "configs" / "synthetic_retinanet_mobilenetv3small.yaml"
    by_file = keras_fpn.Config.from_yaml(file, ["train.epochs=2", "model.image_size=[96, 96]"])
    assert by_file.data.train == str((file.parent / "../data/synthetic/train.json").resolve())  # the file's folder
    assert by_file.model == by_name.model and by_file.train == by_name.train
    with pytest.raises(keras_fpn.ConfigError, match="no such config file, and no shipped config of that name"):
        keras_fpn.Config.from_yaml("nope")
    with pytest.raises(keras_fpn.ConfigError, match="config file not found"):
        keras_fpn.Config.from_yaml("sub/nope.yaml")
    with pytest.raises(keras_fpn.ConfigError, match="unknown config key train.epoch"):
        keras_fpn.Config.from_yaml("ablation_fpn", {"train.epoch": 1})


def test_train_accepts_a_name_and_refuses_overrides_on_a_config():
    cfg = keras_fpn.Config.from_yaml("ablation_fpn")
    with pytest.raises(ValueError, match="overrides apply to a file or a name"):
        keras_fpn.train(cfg, "unused", overrides=["train.epochs=1"])


def test_pyproject_lists_every_package():
    """Every import package of the three folders is in ``[tool.setuptools] packages`` (a missing one
    is silently left out of the wheel), and the shipped configs are package data."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {"keras_fpn.configs"}
    for name, folder in project["package-dir"].items():
        if name != "keras_fpn.configs":
            found |= {".".join([name, *p.parent.relative_to(ROOT / folder).parts])
                      for p in (ROOT / folder).rglob("__init__.py")}
    assert sorted(project["packages"]) == sorted(found)
    assert project["package-dir"]["keras_fpn.configs"] == "configs"
    assert project["package-data"]["keras_fpn.configs"] == ["*.yaml"]


def test_product_code_names_no_checkout_folder():
    """Nothing in the three packages finds files through the source tree (configs come from the package)."""
    bad = re.compile(r"parents\[\d\]|shared/data|\"shared\"|'shared'|/ \"configs\"")
    hits = [f"{p.relative_to(ROOT)}:{i}" for folder in ("keras_fpn", "export", "edge")
            for p in (ROOT / folder).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert hits == []
