"""The config tree: frozen dataclasses, their defaults and their value checks.

A ``Config`` has four sections. ``model`` is itself a small tree::

    model:
      preset, task, num_classes, image_size, resize, activation, bn_momentum
      backbone:     name, alpha, weights
      neck:         kind, min_level, max_level, width, lite, batch_norm, extra_levels_from, finer_input
      head:         kind, width, depth, prior_probability
      anchors:      scale, scales_per_octave, aspect_ratios, box_scale_factors      (detection)
      postprocess:  score_threshold, iou_threshold, max_detections, max_detections_per_class  (detection)
      segmentation: width, c2_skip, final_upsample, ignore_label                     (segmentation)
    data:   train, val, train_include, val_include, strict, hflip, scale_jitter, photometric, cache
    train:  optimisation, target assignment, losses; strategy, devices, mixed_precision
    export: TFLite export and quantization

The defaults are a generic RetinaNet-style MobileNetV2 FPN (P3-P7, width 128,
4 x 128 towers, 9 anchors, ReLU); a named preset (``keras_fpn.models.presets``)
sets the architecture keys (image size, activation, backbone, neck, head,
anchors; e.g. ReLU6 for the mobile ones) and leaves the rest at these defaults.
Every check raises ``ConfigError`` naming the key.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keras_fpn.tasks import TASK_NAMES, get_task


class ConfigError(ValueError):
    """A config key is unknown or has the wrong type/value."""


#: ``model.neck.kind``: the FPN paper's ablation (Lin et al. 2017, Table 1 single-scale baselines).
#: ``fpn``: P{min_level}..P{max_level} with the top-down pathway; ``c5_only``: one level, P5 =
#: 3x3(1x1(C5)); ``finest_no_topdown``: one level, P{min_level} = 3x3(1x1(C{min_level})), no
#: top-down pathway. A single-level neck carries the anchors of every level min..max on its grid.
NECKS = ("fpn", "c5_only", "finest_no_topdown")
#: ``model.head.kind``
HEADS = ("retinanet", "ssd_fpnlite")
#: ``train.strategy`` (``keras_fpn.training.distribute``): one device; the GPUs of one machine;
#: several machines (one process per machine, the cluster in ``TF_CONFIG``)
STRATEGIES = ("default", "mirrored", "multi_worker")
#: ``train.mixed_precision`` compute dtypes (variables, model outputs and losses stay float32)
MIXED_PRECISION = ("float16", "bfloat16")
#: the deepest backbone stride (C5): every input side must be a multiple of it
BACKBONE_STRIDE = 32


def check_image_size(image_size) -> tuple[int, int]:
    """``(height, width)`` of a model input, or ``ConfigError``: both positive multiples of
    ``BACKBONE_STRIDE`` (the top-down pathway doubles exactly from C5 down; P6/P7 are
    stride-2 SAME convs, ``ceil(size / 2)``, so 320 px with P3-P7 is fine)."""
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0 or h % BACKBONE_STRIDE or w % BACKBONE_STRIDE:
        s = BACKBONE_STRIDE
        raise ConfigError(f"model.image_size {h}x{w} must be divisible by {s} (the backbone's C5 stride); "
                          f"use e.g. {max(-(-h // s), 1) * s}x{max(-(-w // s), 1) * s}")
    return h, w


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _integer(key: str, value, low: int, high: int | None = None, *, optional: bool = False) -> None:
    """``low <= value [<= high]`` (None allowed when ``optional``), or ConfigError naming the key."""
    if value is None and optional:
        return
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key} must be an integer {bound}{' or null' if optional else ''}, got {value!r}")


def _number(key: str, value, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, optional: bool = False) -> None:
    """A finite number within the bounds (open or closed), or ConfigError naming the key."""
    if value is None and optional:
        return
    ok = math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
        bound = f"in {lo}, {hi}" if lo and hi else (f"> {low:g}" if low_open else f">= {low:g}") if lo else \
            (f"< {high:g}" if high_open else f"<= {high:g}")
        raise ConfigError(f"{key} must be a finite number {bound}{' or null' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class BackboneConfig:
    """The bottom-up network (``keras_fpn.models.backbones``)."""
    name: str = "mobilenetv2"
    alpha: float = 1.0
    weights: str | None = "imagenet"    # "imagenet" (download), a .weights.h5 path, or null (random)

    def __post_init__(self):
        from keras_fpn.models.backbones import BACKBONES

        _one_of("model.backbone.name", self.name, BACKBONES)
        _number("model.backbone.alpha", self.alpha, 0, low_open=True)


@dataclass(frozen=True)
class NeckConfig:
    """The feature pyramid (``keras_fpn.models.fpn``): levels P{min_level}..P{max_level}."""
    kind: str = "fpn"                   # NECKS
    min_level: int = 3
    max_level: int = 7
    width: int = 128
    lite: bool = False                  # separable 3x3 output convs (FPNLite)
    batch_norm: bool = False
    extra_levels_from: str = "C5"       # P6 from C5 (RetinaNet) or from P5 (FPNLite)
    finer_input: bool = False           # P{min} also adds a stride-2 3x3 conv of C{min-1} (small-object detail)

    def __post_init__(self):
        _one_of("model.neck.kind", self.kind, NECKS)
        if not (2 <= self.min_level <= 5 and self.min_level <= self.max_level <= 7):
            raise ConfigError(f"model.neck.min_level/max_level must satisfy 2 <= min_level <= 5 and "
                              f"min_level <= max_level <= 7, got {self.min_level}..{self.max_level}")
        _one_of("model.neck.extra_levels_from", self.extra_levels_from, ("C5", "P5"))
        _integer("model.neck.width", self.width, 1)


@dataclass(frozen=True)
class HeadConfig:
    """The detection head (``keras_fpn.models.heads``), shared across levels."""
    kind: str = "retinanet"             # HEADS
    width: int = 128
    depth: int = 4
    prior_probability: float = 0.01     # initial foreground probability of the class logits

    def __post_init__(self):
        _one_of("model.head.kind", self.kind, HEADS)
        _integer("model.head.width", self.width, 1)
        _integer("model.head.depth", self.depth, 0)
        _number("model.head.prior_probability", self.prior_probability, 0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class AnchorConfig:
    """Anchors and box coding (``keras_fpn.ops.anchors``, ``keras_fpn.ops.box_coder``)."""
    scale: float = 4.0                  # base anchor side = scale * stride
    scales_per_octave: int = 3
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_scale_factors: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)

    def __post_init__(self):
        _number("model.anchors.scale", self.scale, 0, low_open=True)
        _integer("model.anchors.scales_per_octave", self.scales_per_octave, 1)
        if not self.aspect_ratios:
            raise ConfigError("model.anchors.aspect_ratios must hold at least one ratio, got []")
        for value in self.aspect_ratios:
            _number("model.anchors.aspect_ratios", value, 0, low_open=True)
        for value in self.box_scale_factors:
            _number("model.anchors.box_scale_factors", value, 0, low_open=True)


@dataclass(frozen=True)
class PostprocessConfig:
    """Decode + per-class NMS (evaluation, export, the edge runtime)."""
    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_detections: int = 100
    max_detections_per_class: int = 100

    def __post_init__(self):
        _number("model.postprocess.score_threshold", self.score_threshold, 0, 1, high_open=True)
        _number("model.postprocess.iou_threshold", self.iou_threshold, 0, 1, low_open=True)
        _integer("model.postprocess.max_detections", self.max_detections, 1)
        _integer("model.postprocess.max_detections_per_class", self.max_detections_per_class, 1)


@dataclass(frozen=True)
class SegmentationHeadConfig:
    """The semantic head (``task: segmentation``, ``keras_fpn.models.segmentation``): it reads
    P{min_level}..P{min(max_level, 5)}; P6/P7 are not built."""
    width: int = 128                    # channels of the semantic head
    c2_skip: bool = False               # add a 1x1 conv of C2 (stride 4) into the head's sum
    final_upsample: str = "bilinear"    # x4 logits -> input size: "bilinear" | "nearest"
    ignore_label: int = 255             # class-map value that the loss and metrics skip

    def __post_init__(self):
        _one_of("model.segmentation.final_upsample", self.final_upsample, ("bilinear", "nearest"))
        _integer("model.segmentation.width", self.width, 1)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (see the module docstring for the tree)."""
    preset: str | None = None
    task: str = "detection"             # keras_fpn.tasks.TASK_NAMES
    num_classes: int = 0                # filled from the training data's label map
    image_size: tuple[int, int] = (320, 320)   # (height, width), divisible by 32
    resize: str = "letterbox"           # image -> input: "letterbox" (keep aspect, pad) | "stretch" (per axis;
                                        # what MediaPipe / the TFLite Task Library do), keras_fpn.data.preprocess
    activation: str = "relu"            # "relu" | "relu6"
    bn_momentum: float = 0.99           # every BatchNorm, backbone included (Keras' 0.999 is too slow for short runs)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    segmentation: SegmentationHeadConfig = field(default_factory=SegmentationHeadConfig)

    def __post_init__(self):
        _one_of("model.task", self.task, TASK_NAMES)
        _one_of("model.activation", self.activation, ("relu", "relu6"))
        from fpn_edge.preprocess import RESIZE_MODES

        _one_of("model.resize", self.resize, RESIZE_MODES)
        _integer("model.num_classes", self.num_classes, 0)
        _number("model.bn_momentum", self.bn_momentum, 0, 1, high_open=True)
        check_image_size(self.image_size)
        ignore = self.segmentation.ignore_label
        if not 0 <= ignore <= 255 or (self.num_classes and ignore <= self.num_classes):
            raise ConfigError(f"model.segmentation.ignore_label must be in ({self.num_classes}, 255] (class maps "
                              f"are uint8, 0 = background, 1..num_classes = classes), got {ignore}")
        reason = get_task(self.task).check_model_config(self)
        if reason:
            raise ConfigError(reason)

    @property
    def head_levels(self) -> tuple[int, ...]:
        """Pyramid levels the head predicts on (``neck.kind``): all of P{min}..P{max}, or one level."""
        if self.neck.kind == "c5_only":
            return (5,)
        if self.neck.kind == "finest_no_topdown":
            return (self.neck.min_level,)
        return tuple(range(self.neck.min_level, self.neck.max_level + 1))


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

    def __post_init__(self):
        low, high = self.scale_jitter
        _number("data.scale_jitter", low, 0, low_open=True)
        _number("data.scale_jitter", high, low)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, target assignment and losses; where training runs (``strategy``, ``devices``,
    ``mixed_precision``: ``keras_fpn.training.distribute``)."""
    epochs: int = 30
    steps_per_epoch: int | None = None  # None: one pass over the training set
    budget: int | None = None            # total steps; sets epochs (and steps_per_epoch) from the data (recipe.py)
    batch_size: int = 16
    optimizer: str = "sgd"               # "sgd" (momentum) | "adamw"
    learning_rate: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 1.0
    clipnorm: float | None = 10.0
    freeze_backbone_epochs: int = 0
    precise_bn_batches: int = 20         # recompute BN statistics on N train batches before each evaluation (0: off)
    eval_every: int = 5                  # evaluation on the val split every N epochs (0: only at the end)
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
    strategy: str = "default"            # STRATEGIES; batch_size is the global batch under every strategy
    devices: tuple[str, ...] | None = None   # mirrored only: e.g. ["/gpu:0", "/gpu:1"]; null = every GPU
    mixed_precision: Any = False         # false | "float16" | "bfloat16"; true = "float16" (stored as the name)

    def __post_init__(self):
        _one_of("train.optimizer", self.optimizer, ("sgd", "adamw"))
        _one_of("train.matcher", self.matcher, ("iou", "atss"))
        _integer("train.epochs", self.epochs, 1)
        _integer("train.steps_per_epoch", self.steps_per_epoch, 1, optional=True)
        _integer("train.budget", self.budget, 1, optional=True)
        _integer("train.batch_size", self.batch_size, 1)
        _number("train.learning_rate", self.learning_rate, 0, low_open=True)
        _number("train.momentum", self.momentum, 0, 1, high_open=True)
        _number("train.weight_decay", self.weight_decay, 0)
        _number("train.warmup_epochs", self.warmup_epochs, 0)
        _number("train.clipnorm", self.clipnorm, 0, low_open=True, optional=True)
        _integer("train.freeze_backbone_epochs", self.freeze_backbone_epochs, 0)
        _integer("train.precise_bn_batches", self.precise_bn_batches, 0)
        _integer("train.eval_every", self.eval_every, 0)
        _integer("train.seed", self.seed, 0, 2 ** 32 - 1)
        _integer("train.atss_top_k", self.atss_top_k, 1)
        _number("train.positive_iou", self.positive_iou, 0, 1, low_open=True)
        _number("train.negative_iou", self.negative_iou, 0, self.positive_iou)
        _number("train.focal_alpha", self.focal_alpha, 0, 1)
        _number("train.focal_gamma", self.focal_gamma, 0)
        _number("train.box_loss_delta", self.box_loss_delta, 0, low_open=True)
        _number("train.box_loss_weight", self.box_loss_weight, 0)
        _number("train.dice_weight", self.dice_weight, 0)
        _one_of("train.strategy", self.strategy, STRATEGIES)
        if self.devices is not None:
            if self.strategy != "mirrored":
                raise ConfigError(f"train.devices applies to train.strategy mirrored, not {self.strategy!r} "
                                  f"(multi_worker uses every GPU each worker sees: set CUDA_VISIBLE_DEVICES)")
            if not self.devices or len(set(self.devices)) != len(self.devices):
                raise ConfigError(f"train.devices must list distinct devices, got {list(self.devices)}")
            if self.batch_size % len(self.devices):
                raise ConfigError(f"train.batch_size {self.batch_size} (the global batch) must be divisible by "
                                  f"the {len(self.devices)} train.devices")
        precision = "float16" if self.mixed_precision is True else self.mixed_precision or False
        if precision is not False and precision not in MIXED_PRECISION:
            raise ConfigError(f"train.mixed_precision must be false, true (= float16), float16 or bfloat16, "
                              f"got {self.mixed_precision!r}")
        object.__setattr__(self, "mixed_precision", precision)  # frozen: store the normalised name


@dataclass(frozen=True)
class ExportConfig:
    """TFLite export and quantization."""
    representative_images: int = 100
    int8_io: str = "uint8"               # "uint8" | "int8" | "float32"
    qat_steps: int = 300
    qat_learning_rate: float = 1e-5      # Adam; 1e-4 cost 4.4 % AP on the converged raccoon model (DESIGN.md)
    qat_batch_size: int = 8
    # the exported NMS: "pairs" = one TFLite_Detection_PostProcess op per 2 classes + an in-graph merge: the same
    # detections at every thread count in every runtime; "single" = one op: faster with many classes (80 classes:
    # 12 vs 44 ms at 1 thread), right only at 1 or >= C threads outside fpn-edge (the kernel skips class T)
    nms_ops: str = "pairs"

    def __post_init__(self):
        _one_of("export.nms_ops", self.nms_ops, ("pairs", "single"))
        _integer("export.representative_images", self.representative_images, 1)
        _one_of("export.int8_io", self.int8_io, ("uint8", "int8", "float32"))
        _integer("export.qat_steps", self.qat_steps, 1)
        _number("export.qat_learning_rate", self.qat_learning_rate, 0, low_open=True)
        _integer("export.qat_batch_size", self.qat_batch_size, 1)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @classmethod
    def from_yaml(cls, path_or_name: str | os.PathLike,
                  overrides: Sequence[str] | Mapping[str, object] | None = None) -> Config:
        """A config from a YAML file, or from a shipped config by name (``keras-fpn configs`` lists them),
        plus ``overrides``: ``["train.epochs=5"]`` or ``{"train.epochs": 5}`` (``keras_fpn.config.shipped``)."""
        from keras_fpn.config.shipped import load_path_or_name

        return load_path_or_name(path_or_name, overrides)

    def __post_init__(self):
        allowed = get_task(self.model.task).checkpoint_metrics
        if self.train.checkpoint_metric not in allowed:
            raise ConfigError(f"train.checkpoint_metric {self.train.checkpoint_metric!r} does not apply to "
                              f"model.task {self.model.task!r}; use one of {', '.join(allowed)}")
