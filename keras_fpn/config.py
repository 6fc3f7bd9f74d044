"""The one configuration system: frozen dataclasses, YAML files, ``--set`` overrides.

A config has four sections (``model``, ``data``, ``train``, ``export``). YAML
files may set ``model.preset`` to start from a named preset (see
``keras_fpn.models.presets``); keys given next to it override the preset.
Unknown keys and wrong types raise ``ConfigError`` naming the key. Paths in
``data`` expand environment variables (``${KERAS_FPN_DATA}`` defaults to the
``shared/data`` folder beside the project, for the bundled real-data configs)
and are taken relative to the config file's folder when not absolute.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from fpn_edge.atomic import write_text_atomic
from keras_fpn.tasks import TASK_NAMES, get_task


class ConfigError(ValueError):
    """A config key is unknown or has the wrong type/value."""


#: ``model.neck`` values: the FPN paper's ablation (Lin et al. 2017, Table 1 single-scale baselines).
#: ``fpn``: P{min_level}..P{max_level} with the top-down pathway; ``c5_only``: one level, P5 =
#: 3x3(1x1(C5)); ``finest_no_topdown``: one level, P{min_level} = 3x3(1x1(C{min_level})), no
#: top-down pathway. A single-level neck carries the anchors of every level min..max on its grid.
NECKS = ("fpn", "c5_only", "finest_no_topdown")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. Defaults are the ``retinanet_mobilenetv2_fpn`` preset."""
    preset: str | None = None
    backbone: str = "mobilenetv2"
    backbone_alpha: float = 1.0
    backbone_weights: str | None = "imagenet"   # "imagenet", a .weights.h5 path, or null
    image_size: tuple[int, int] = (320, 320)    # (height, width), divisible by 32
    min_level: int = 3
    max_level: int = 7
    fpn_width: int = 128
    fpn_lite: bool = False
    fpn_batch_norm: bool = False
    extra_levels_from: str = "C5"
    fpn_finer_input: bool = False               # P{min} also adds a stride-2 3x3 conv of C{min-1} (small-object detail)
    neck: str = "fpn"                           # "fpn" | "c5_only" | "finest_no_topdown" (NECKS)
    head: str = "retinanet"                     # "retinanet" | "ssd_fpnlite"
    head_width: int = 128
    head_depth: int = 4
    activation: str = "relu"                    # "relu" | "relu6"
    bn_momentum: float = 0.99                   # every BatchNorm, backbone included (Keras' 0.999 is too slow for short runs)
    prior_probability: float = 0.01
    anchor_scale: float = 4.0
    scales_per_octave: int = 3
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_scale_factors: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    num_classes: int = 0                        # filled from the training data's label map
    score_threshold: float = 0.05               # decode + NMS (evaluation, export)
    iou_threshold: float = 0.5
    max_detections: int = 100
    max_detections_per_class: int = 100
    # Segmentation (``task: segmentation``, see keras_fpn.models.segmentation). The
    # semantic head reads P{min_level}..P{min(max_level, 5)}; P6/P7 are not built.
    task: str = "detection"                     # "detection" | "segmentation"
    seg_width: int = 128                        # channels of the semantic head
    seg_c2_skip: bool = False                   # add a 1x1 conv of C2 (stride 4) into the head's sum
    seg_final_upsample: str = "bilinear"        # x4 logits -> input size: "bilinear" | "nearest"
    ignore_label: int = 255                     # class-map value that the loss and metrics skip

    def __post_init__(self):
        if self.task not in TASK_NAMES:
            raise ConfigError(f"model.task must be one of {', '.join(TASK_NAMES)}, got {self.task!r}")
        if self.seg_final_upsample not in ("bilinear", "nearest"):
            raise ConfigError(f"model.seg_final_upsample must be 'bilinear' or 'nearest', "
                              f"got {self.seg_final_upsample!r}")
        if not 0 <= self.ignore_label <= 255 or (self.num_classes and self.ignore_label <= self.num_classes):
            raise ConfigError(f"model.ignore_label must be in ({self.num_classes}, 255] (class maps are "
                              f"uint8, 0 = background, 1..num_classes = classes), got {self.ignore_label}")
        h, w = self.image_size
        if h % 32 or w % 32:
            raise ConfigError(f"model.image_size {h}x{w} must be divisible by 32 (the backbone's C5 stride)")
        if not (2 <= self.min_level <= 5 and self.min_level <= self.max_level <= 7):
            raise ConfigError(f"model.min_level/max_level must satisfy 2 <= min_level <= 5 and "
                              f"min_level <= max_level <= 7, got {self.min_level}..{self.max_level}")
        if self.neck not in NECKS:
            raise ConfigError(f"model.neck must be one of {', '.join(NECKS)}, got {self.neck!r}")
        reason = get_task(self.task).check_model_config(self)
        if reason:
            raise ConfigError(reason)
        if self.head not in ("retinanet", "ssd_fpnlite"):
            raise ConfigError(f"model.head must be 'retinanet' or 'ssd_fpnlite', got {self.head!r}")
        if self.activation not in ("relu", "relu6"):
            raise ConfigError(f"model.activation must be 'relu' or 'relu6', got {self.activation!r}")

    @property
    def head_levels(self) -> tuple[int, ...]:
        """Pyramid levels the head predicts on (``neck``): all of P{min}..P{max}, or one level."""
        if self.neck == "c5_only":
            return (5,)
        if self.neck == "finest_no_topdown":
            return (self.min_level,)
        return tuple(range(self.min_level, self.max_level + 1))


@dataclass(frozen=True)
class DataConfig:
    """Where the data is (COCO JSON, VOC dir, YOLO dir or TFRecord) and how it is augmented."""
    train: str | None = None
    val: str | None = None
    train_include: str | None = None   # optional list of image file names (txt or csv 'filename')
    val_include: str | None = None
    strict: bool = False               # first bad item is an error instead of a skipped warning
    hflip: bool = True
    scale_jitter: tuple[float, float] = (0.8, 1.25)
    photometric: bool = True
    cache: bool = True                 # keep decoded images in memory (small datasets)




@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, target assignment and losses."""
    epochs: int = 30
    steps_per_epoch: int | None = None  # None: one pass over the training set
    batch_size: int = 16
    optimizer: str = "sgd"               # "sgd" (momentum) | "adamw"
    learning_rate: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 1.0
    clipnorm: float | None = 10.0
    freeze_backbone_epochs: int = 0
    precise_bn_batches: int = 20         # recompute BN statistics on N train batches before each evaluation (0: off)
    eval_every: int = 5                  # COCO evaluation on the val split every N epochs (0: never)
    checkpoint_metric: str = "val_AP"    # one of the task's checkpoint_metrics (detection: val_AP | val_loss)
    seed: int = 0
    matcher: str = "iou"                 # "iou" (RetinaNet 0.5 / 0.4 thresholds) | "atss" (per-box threshold)
    atss_top_k: int = 9                  # atss: candidate anchors per level and box
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss_delta: float = 0.1
    box_loss_weight: float = 50.0
    dice_weight: float = 0.0             # segmentation: loss = CE + dice_weight * soft Dice

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"train.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.matcher not in ("iou", "atss"):
            raise ConfigError(f"train.matcher must be 'iou' or 'atss', got {self.matcher!r}")
        if self.atss_top_k < 1:
            raise ConfigError(f"train.atss_top_k must be >= 1, got {self.atss_top_k}")


@dataclass(frozen=True)
class ExportConfig:
    """TFLite export and quantization."""
    representative_images: int = 100
    int8_io: str = "uint8"               # "uint8" | "int8" | "float32"
    qat_steps: int = 300
    qat_learning_rate: float = 1e-5       # Adam; 1e-4 cost 4.4 % AP on the converged raccoon model (DESIGN.md)
    qat_batch_size: int = 8


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


SECTIONS = {f.name: f.type for f in fields(Config)}


def _coerce(key: str, value, annotation):
    """Check/convert one YAML value to the annotated type; raise ConfigError naming ``key``."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _resolve_hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _build_section(name: str, cls, values: dict):
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping, got {values!r}")
    hints = _resolve_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config key {name}.{unknown[0]} (known: {', '.join(sorted(hints))})")
    if cls is ModelConfig and values.get("preset"):
        from keras_fpn.models.presets import PRESETS
        preset = values["preset"]
        if preset not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        values = {**PRESETS[preset], **values}
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _parse_override(item: str) -> tuple[str, str, object]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    if key.count(".") != 1:
        raise ConfigError(f"--set {item!r}: key must be section.key (e.g. train.epochs)")
    section, name = key.split(".")
    return section, name, yaml.safe_load(raw) if raw != "" else None


def config_from_dict(raw: dict | None, overrides: typing.Sequence[str] = (), base_dir: str | os.PathLike | None = None) -> Config:
    """Build a ``Config`` from a nested dict plus ``section.key=value`` overrides."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    merged = {name: dict(raw.get(name) or {}) for name in SECTIONS}
    for item in overrides:
        section, key, value = _parse_override(item)
        if section not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}")
        merged[section][key] = value
    built = {name: _build_section(name, _resolve_hints(Config)[name], merged[name]) for name in SECTIONS}
    cfg = Config(**built)
    allowed = get_task(cfg.model.task).checkpoint_metrics
    if cfg.train.checkpoint_metric not in allowed:
        raise ConfigError(f"train.checkpoint_metric {cfg.train.checkpoint_metric!r} does not apply to "
                          f"model.task {cfg.model.task!r}; use one of {', '.join(allowed)}")
    if base_dir is not None:
        cfg = _resolve_paths(cfg, Path(base_dir))
    return cfg


def default_data_root() -> str:
    """``$KERAS_FPN_DATA`` or the ``shared/data`` folder beside the project checkout."""
    return os.environ.get("KERAS_FPN_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


PATH_KEYS = {"data": ("train", "val", "train_include", "val_include"), "model": ("backbone_weights",)}


def _resolve_paths(cfg: Config, base_dir: Path) -> Config:
    """Expand ``${VAR}`` / ``~`` in path keys and make them absolute against ``base_dir``."""
    env = {**os.environ, "KERAS_FPN_DATA": default_data_root()}
    sections = {}
    for section, keys in PATH_KEYS.items():
        obj, changes = getattr(cfg, section), {}
        for key in keys:
            value = getattr(obj, key)
            if value and value != "imagenet":
                path = Path(os.path.expanduser(_expand(value, env)))
                changes[key] = str(path if path.is_absolute() else (base_dir / path).resolve())
        sections[section] = replace(obj, **changes)
    return replace(cfg, **sections)


def _expand(value: str, env: dict) -> str:
    for name, val in env.items():
        value = value.replace("${" + name + "}", val)
    return value


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config file (plus overrides); data paths resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return config_from_dict(raw, overrides, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, name)).items()} for name in SECTIONS}


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (``fpn_edge.atomic``)."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
