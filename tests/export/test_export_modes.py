"""fpn_export.modes: the one mode table, and everything that reads it (CLIs, converter, compare)."""
from __future__ import annotations

import argparse
import types

import pytest

import export_helpers as H


def _subparsers():
    return argparse.ArgumentParser().add_subparsers()


def test_every_cli_choice_is_a_table_row():
    from fpn_export.cli import add_export_command
    from fpn_export.modes import MODES

    p = add_export_command(_subparsers())
    (mode_action,) = [a for a in p._actions if a.dest == "mode"]
    assert tuple(mode_action.choices) == tuple(MODES) == (
        "fp32", "fp16", "dynamic", "int8", "int16x8", "qat-int8", "edgetpu", "int8-budget")
    for m in MODES.values():
        assert f"{m.name}: {m.description}" in mode_action.help and ";" not in m.description


def test_compare_help_lists_the_table():
    from fpn_export.modes import MODES
    from keras_fpn.compare.cli import add_compare_commands

    sub = _subparsers()
    add_compare_commands(sub)
    (modes_action,) = [a for a in sub.choices["compare"]._actions if a.dest == "modes"]
    assert modes_action.help == f"comma-separated export modes ({', '.join(MODES)})"


def test_mode_attributes():
    from fpn_export.modes import MODES, calibrated_names

    assert calibrated_names() == "int8, int16x8, edgetpu"
    assert [m.name for m in MODES.values() if m.full_integer] == ["int8", "qat-int8", "edgetpu"]
    assert [m.name for m in MODES.values() if m.uses_representative] == [
        "int8", "int16x8", "qat-int8", "edgetpu", "int8-budget"]
    assert [m.name for m in MODES.values() if m.budget] == ["int8-budget"]
    assert {m.name: m.io_dtype("float32") for m in MODES.values()} == {
        "fp32": "float32", "fp16": "float32", "dynamic": "float32", "int8": "float32", "int16x8": "float32",
        "qat-int8": "float32", "edgetpu": "uint8", "int8-budget": "float32"}
    assert MODES["edgetpu"].io_dtype("int8") == "int8" and MODES["int16x8"].io_dtype("int8") == "float32"
    assert len({m.cost for m in MODES.values()}) == len(MODES)


def test_compare_exports_the_costliest_mode_in_the_background():
    from keras_fpn.compare.background import pick_background

    slowest_first = ["int8-budget", "qat-int8", "edgetpu", "int16x8", "int8", "dynamic", "fp16", "fp32"]
    for i, mode in enumerate(slowest_first[:-1]):
        assert pick_background(list(reversed(slowest_first[i:]))) == mode


def test_unknown_mode_names_the_choices():
    from fpn_export.errors import ExportError
    from fpn_export.modes import get_mode

    with pytest.raises(ExportError, match=r"unknown mode 'int4'; choose one of fp32, fp16, dynamic, int8, "
                                          r"int16x8, qat-int8, edgetpu, int8-budget"):
        get_mode("int4")


@pytest.mark.parametrize("mode", ["int8", "int16x8", "edgetpu"])
def test_calibrated_modes_refuse_missing_representative_images(tmp_path, mode):
    """Both exporters refuse before any work (no model needed); so does the converter setup."""
    from fpn_export.detection import export_detector
    from fpn_export.errors import ExportError
    from fpn_export.segmentation import export_segmenter
    from fpn_export.tflite import configure_converter
    from keras_fpn.config import config_from_dict

    msg = f"mode '{mode}' needs representative images"
    with pytest.raises(ExportError, match=msg):
        export_detector(None, H.tiny_config(), H.LABELS, mode, out=tmp_path / "m.tflite")
    seg_cfg = config_from_dict({"model": {"task": "segmentation", "num_classes": 2},
                               "train": {"checkpoint_metric": "val_mIoU"}})
    with pytest.raises(ExportError, match=msg):
        export_segmenter(None, seg_cfg, ["a", "b"], mode, out=tmp_path / "m.tflite")
    with pytest.raises(ExportError, match=f"mode '{mode}' needs a representative dataset"):
        configure_converter(types.SimpleNamespace(target_spec=types.SimpleNamespace()), mode)
    assert not (tmp_path / "m.tflite").exists()


def test_debug_needs_a_calibrated_mode():
    from fpn_export.errors import ExportError
    from fpn_export.tflite import convert_keras

    with pytest.raises(ExportError, match=r"--debug needs a calibrated mode \(int8, int16x8, edgetpu\), not 'fp16'"):
        convert_keras(None, "fp16", debug_dir="unused")


def test_converter_settings_come_from_the_table():
    import tensorflow as tf

    from fpn_export.tflite import configure_converter

    def configured(mode, **kw):
        conv = types.SimpleNamespace(target_spec=types.SimpleNamespace())
        configure_converter(conv, mode, **kw)
        return conv

    rep = object()
    assert vars(configured("fp32")) == {"target_spec": types.SimpleNamespace(), "allow_custom_ops": True}
    fp16 = configured("fp16")
    assert fp16.optimizations == [tf.lite.Optimize.DEFAULT] and fp16.target_spec.supported_types == [tf.float16]
    dyn = configured("dynamic", representative=rep)
    assert not hasattr(dyn, "representative_dataset") and vars(dyn.target_spec) == {}
    int8 = configured("int8", representative=rep, int8_io="int8", float_outputs=True)
    assert int8.representative_dataset is rep and int8.inference_input_type == tf.int8
    assert int8.target_spec.supported_ops == [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    assert not hasattr(int8, "inference_output_type")   # the post-process outputs stay float
    assert configured("qat-int8", int8_io="uint8").inference_output_type == tf.uint8   # no images needed
    i16 = configured("int16x8", representative=rep, float_outputs=True)
    assert i16.target_spec.supported_ops == [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    assert not hasattr(i16, "inference_input_type")
