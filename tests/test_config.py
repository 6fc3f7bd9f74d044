"""The config system: presets, overrides, type checks, path resolution, round trip."""
import pytest

from keras_fpn.config import ConfigError, config_from_dict, config_to_dict, load_config, save_config


def test_preset_then_overrides():
    cfg = config_from_dict({"model": {"preset": "ssd_mobilenetv2_fpnlite", "head_width": 64}},
                           ["train.epochs=3", "model.aspect_ratios=[1.0, 0.5]"])
    assert cfg.model.fpn_lite and cfg.model.head == "ssd_fpnlite" and cfg.model.extra_levels_from == "P5"
    assert cfg.model.head_width == 64 and cfg.train.epochs == 3
    assert cfg.model.aspect_ratios == (1.0, 0.5) and cfg.model.scales_per_octave == 2


@pytest.mark.parametrize("raw, overrides, message", [
    ({"model": {"fpn_widht": 64}}, [], "unknown config key model.fpn_widht"),
    ({"modle": {}}, [], "unknown config section 'modle'"),
    ({}, ["train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
    ({}, ["train.learning_rate=fast"], "train.learning_rate: expected a number"),
    ({"data": {"hflip": "yes"}}, [], "data.hflip: expected true/false"),
    ({"model": {"image_size": [320]}}, [], "model.image_size: expected 2 values, got 1"),
    ({"model": {"preset": "yolo"}}, [], "model.preset: unknown preset 'yolo'"),
    ({"model": {"head": "fcos"}}, [], "model.head must be 'retinanet' or 'ssd_fpnlite'"),
    ({"train": {"optimizer": "adam"}}, [], "train.optimizer must be 'sgd' or 'adamw'"),
    ({}, ["epochs=3"], "key must be section.key"),
    ({}, ["train.epochs"], "expected section.key=value"),
])
def test_config_errors_name_the_key(raw, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config_from_dict(raw, overrides)


def test_yaml_paths_resolve_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_FPN_DATA", "/data/shared")
    (tmp_path / "c.yaml").write_text(
        "model: {preset: retinanet_mobilenetv2_fpn, backbone_weights: '${KERAS_FPN_DATA}/w.h5'}\n"
        "data: {train: train.json, val: /abs/val.json}\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.batch_size=4"])
    assert cfg.data.train == str(tmp_path / "train.json")
    assert cfg.data.val == "/abs/val.json"
    assert cfg.model.backbone_weights == "/data/shared/w.h5"
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again == cfg


def test_bad_yaml_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_load():
    from pathlib import Path
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        cfg = load_config(path)
        assert cfg.model.image_size[0] % 32 == 0, path
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path} must say what it reaches in its first lines"
