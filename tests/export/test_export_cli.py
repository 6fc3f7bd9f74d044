"""``keras-fpn export`` on a run directory (fpn_export.cli)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

import export_helpers as H


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mobilenet_v2_weights, raccoon_dir):
    """A minimal run directory (config.yaml, labels.txt, best.weights.h5) of the tiny model."""
    from keras_fpn.config import save_config
    from keras_fpn.rundir import save_labels

    run = tmp_path_factory.mktemp("run")
    cfg = H.tiny_config(raccoon_dir)
    save_config(cfg, run / "config.yaml")
    save_labels(run / "labels.txt", H.LABELS)
    H.tiny_model(mobilenet_v2_weights[0.35]).save_weights(str(run / "best.weights.h5"))
    return run


def test_parser_registers_export_command():
    from fpn_export.cli import add_export_command

    parser = argparse.ArgumentParser(prog="keras-fpn")
    add_export_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "RUN", "--mode", "qat-int8", "--prune", "0.5", "--raw",
                              "--representative", "8", "--report", "--debug"])
    assert (args.mode, args.prune, args.raw, args.representative, args.report, args.debug) == \
        ("qat-int8", 0.5, True, 8, True, True)
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "RUN", "--mode", "int8", "--prune", "1.5"])
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "RUN", "--mode", "int4"])


def test_export_int8_from_run_dir(run_dir, capsys):
    """Calibration images come from the run's data.train through the training preprocessing."""
    from ai_edge_litert.interpreter import Interpreter

    from fpn_edge.metadata import read_metadata
    from fpn_export.cli import main

    rc = main(["export", str(run_dir), "--mode", "int8", "--raw", "--representative", "2",
               "--report", "--set", "export.int8_io=int8"])
    out = capsys.readouterr().out
    assert rc == 0, out
    path = run_dir / "model_int8_raw.tflite"
    assert f"wrote {path}" in out and "Edge TPU: " in out
    assert (run_dir / "model_int8_raw_edgetpu_report.md").is_file()
    interp = Interpreter(model_path=str(path))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    meta, anchors = read_metadata(path)
    assert meta["export"]["io_dtype"] == "int8" and meta["config"]["export"]["int8_io"] == "int8"
    assert anchors.shape == (3069, 4)


def test_export_errors_are_one_line(tmp_path, run_dir, capsys):
    from fpn_export.cli import main

    assert main(["export", str(tmp_path / "missing"), "--mode", "fp32"]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--mode", "fp32", "--set", "train.epochs=3"]) == 2
    assert "only export.* settings" in capsys.readouterr().err
