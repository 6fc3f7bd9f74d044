"""The config system: presets, overrides, type checks, path resolution, round trip."""
import pytest

from keras_fpn.config import ConfigError, config_from_dict, config_to_dict, load_config, save_config


def test_preset_then_overrides():
    cfg = config_from_dict({"model": {"preset": "ssd_mobilenetv2_fpnlite", "head": {"width": 64}}},
                           ["train.epochs=3", "model.anchors.aspect_ratios=[1.0, 0.5]"])
    assert cfg.model.neck.lite and cfg.model.head.kind == "ssd_fpnlite" and cfg.model.neck.extra_levels_from == "P5"
    assert cfg.model.head.width == 64 and cfg.train.epochs == 3
    assert cfg.model.anchors.aspect_ratios == (1.0, 0.5) and cfg.model.anchors.scales_per_octave == 2


@pytest.mark.parametrize("raw, overrides, message", [
    ({"model": {"fpn_widht": 64}}, [], "unknown config key model.fpn_widht"),
    ({"model": {"neck": {"widht": 64}}}, [], "unknown config key model.neck.widht"),
    # the old flat layout names the new key
    ({"model": {"fpn_width": 64}}, [], "model.fpn_width is now model.neck.width"),
    ({"model": {"preset": "retinanet_mobilenetv2_fpn", "backbone_weights": None}}, [],
     "model.backbone_weights is now model.backbone.weights"),
    ({"model": {"neck": "c5_only"}}, [], "model.neck is now model.neck.kind"),
    ({}, ["model.anchor_scale=3"], "model.anchor_scale is now model.anchors.scale"),
    ({}, ["model.seg_width=8"], "model.seg_width is now model.segmentation.width"),
    ({"modle": {}}, [], "unknown config section 'modle'"),
    ({}, ["train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
    ({}, ["train.learning_rate=fast"], "train.learning_rate: expected a number"),
    ({"data": {"hflip": "yes"}}, [], "data.hflip: expected true/false"),
    ({"model": {"image_size": [320]}}, [], "model.image_size: expected 2 values, got 1"),
    ({"model": {"preset": "yolo"}}, [], "model.preset: unknown preset 'yolo'"),
    ({"model": {"head": {"kind": "fcos"}}}, [], "model.head.kind must be one of retinanet, ssd_fpnlite"),
    ({"train": {"optimizer": "adam"}}, [], "train.optimizer must be one of sgd, adamw"),
    ({"model": {"neck": {"kind": "c4_only"}}}, [],
     "model.neck.kind must be one of fpn, c5_only, finest_no_topdown, got 'c4_only'"),
    ({"model": {"task": "segmentation", "neck": {"kind": "c5_only"}}}, ["train.checkpoint_metric=val_mIoU"],
     "model.neck.kind 'c5_only' is a detection ablation; model.task 'segmentation' needs model.neck.kind: fpn"),
    ({"model": {"neck": {"min_level": 6, "max_level": 7}}}, [],
     "model.neck.min_level/max_level must satisfy 2 <= min_level <= 5 and min_level <= max_level <= 7, got 6..7"),
    ({}, ["model.neck.min_level=4", "model.neck.max_level=3"], "got 4..3"),
    ({"model": {"image_size": [300, 448]}}, [], "model.image_size 300x448 must be divisible by 32"),
    ({}, ["epochs=3"], "key must be section.key"),
    ({}, ["train.epochs"], "expected section.key=value"),
])
def test_config_errors_name_the_key(raw, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config_from_dict(raw, overrides)


def test_yaml_paths_resolve_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_FPN_DATA", "/data/shared")
    (tmp_path / "c.yaml").write_text(
        "model: {preset: retinanet_mobilenetv2_fpn, backbone: {weights: '${KERAS_FPN_DATA}/w.h5'}}\n"
        "data: {train: train.json, val: /abs/val.json}\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.batch_size=4"])
    assert cfg.data.train == str(tmp_path / "train.json")
    assert cfg.data.val == "/abs/val.json"
    assert cfg.model.backbone.weights == "/data/shared/w.h5"
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
    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        cfg = load_config(path)
        assert cfg.model.image_size[0] % 32 == 0, path
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path} must say what it reaches in its first lines"


def test_ablation_configs_differ_from_their_base_only_in_the_neck():
    from pathlib import Path
    configs = Path(__file__).parents[2] / "configs"
    base = config_to_dict(load_config(configs / "synthetic_retinanet_mobilenetv2.yaml"))
    levels = {"fpn": (3, 4, 5, 6), "c5_only": (5,), "finest_no_topdown": (3,)}
    for neck, head_levels in levels.items():
        cfg = load_config(configs / f"ablation_{neck}.yaml")
        assert cfg.model.neck.kind == neck and cfg.model.head_levels == head_levels
        got = config_to_dict(cfg)
        got["model"]["neck"]["kind"] = "fpn"
        assert got == base, neck


def test_exponent_without_dot_is_a_number():
    # YAML 1.1 (PyYAML) reads `1e-5` as a string; a float key must still accept it
    cfg = config_from_dict({}, ["export.qat_learning_rate=1e-5", "train.learning_rate=2E-3"])
    assert cfg.export.qat_learning_rate == 1e-5 and cfg.train.learning_rate == 0.002


def test_unset_variable_in_a_path_names_it(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_FPN_NOPE", raising=False)
    (tmp_path / "c.yaml").write_text("data: {train: '${KERAS_FPN_NOPE}/train.json'}\n")
    with pytest.raises(ConfigError, match=r"data.train: \$\{KERAS_FPN_NOPE\} is not set"):
        load_config(tmp_path / "c.yaml")


OLD_FLAT = """\
# an old config
model:
  preset: retinanet_mobilenetv2_fpn
  backbone: mobilenetv2
  backbone_alpha: 0.35      # small
  backbone_weights: null
  image_size: [256, 256]
  max_level: 6
  fpn_width: 32
  head_width: 32
  anchor_scale: 3.0         # fits small objects
  score_threshold: 0.1
data:
  hflip: false
"""


def test_migrate_moves_every_flat_key_and_keeps_comments(tmp_path):
    from keras_fpn.cli import main
    from keras_fpn.config.migrate import migrate_yaml_text

    new, changes, kept = migrate_yaml_text(OLD_FLAT)
    assert kept and len(changes) == 8
    assert "    scale: 3.0         # fits small objects\n" in new and "  backbone:\n    name: mobilenetv2\n" in new
    path = tmp_path / "old.yaml"
    path.write_text(OLD_FLAT)
    with pytest.raises(ConfigError, match="model.backbone is now model.backbone.name"):
        load_config(path)
    assert main(["configs", "migrate", str(path), "--in-place"]) == 0
    assert (tmp_path / "old.yaml.bak").read_text() == OLD_FLAT
    cfg = load_config(path)
    m = cfg.model
    assert (m.backbone.name, m.backbone.alpha, m.backbone.weights) == ("mobilenetv2", 0.35, None)
    assert (m.neck.max_level, m.neck.width, m.head.width, m.head.depth) == (6, 32, 32, 4)
    assert (m.anchors.scale, m.postprocess.score_threshold, m.activation) == (3.0, 0.1, "relu6")
    assert cfg.data.hflip is False
    assert main(["configs", "migrate", str(path)]) == 0   # already migrated: nothing to do


def test_overridden_preset_is_the_one_merged_under_the_file():
    cfg = config_from_dict({"model": {"preset": "retinanet_mobilenetv2_fpn", "neck": {"width": 48}}},
                           ["model.preset=retinanet_resnet50_fpn"])
    assert (cfg.model.preset, cfg.model.backbone.name, cfg.model.image_size) == \
        ("retinanet_resnet50_fpn", "resnet50", (640, 640))
    assert cfg.model.neck.width == 48 and cfg.model.head.width == 256   # the file's key wins, the rest is the preset's
    cfg = config_from_dict({"model": {"preset": "ssd_mobilenetv2_fpnlite"}}, ["model.neck.width=64"])
    assert cfg.model.neck.width == 64 and cfg.model.neck.lite and cfg.model.neck.extra_levels_from == "P5"


def test_old_flat_string_key_with_a_deep_override_still_names_the_new_key():
    with pytest.raises(ConfigError, match="model.neck is now model.neck.kind"):
        config_from_dict({"model": {"neck": "c5_only"}}, ["model.neck.width=64"])
    with pytest.raises(ConfigError, match=r"model.backbone is now model.backbone.name"):
        config_from_dict({}, ["model.backbone=x", "model.backbone.alpha=0.5"])
    with pytest.raises(ConfigError, match=r"model.image_size is \[64, 64\], not a mapping"):
        config_from_dict({}, ["model.image_size=[64, 64]", "model.image_size.h=1"])
