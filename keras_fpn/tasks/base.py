"""``Task``: the interface every ``model.task`` implements (see ``keras_fpn.tasks``).

Heavy dependencies (TensorFlow, Keras, pycocotools, fpn_export) are imported
inside the methods, so ``keras_fpn.config`` can validate a config through its
task without loading them.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType


class Task:
    """One kind of model. Subclasses set the class attributes and implement every method.

    Attributes:
        name: the ``model.task`` value.
        checkpoint_metrics: the ``train.checkpoint_metric`` values this task logs
            (higher is better except ``val_loss``).
        can_predict: ``keras-fpn predict`` supports it (else ``predict_hint`` says what to use).
    """

    name: str = ""
    checkpoint_metrics: tuple = ()
    can_predict: bool = False
    predict_hint: str = ""

    # ------------------------------------------------------------------ config
    def check_model_config(self, model_cfg) -> str | None:
        """A reason why ``model_cfg`` does not fit this task (the caller raises it as ConfigError), or None."""
        return None

    # ------------------------------------------------------------------ model and data
    def build_model(self, model_cfg, *, ns: ModuleType, batch_size: int | None, backbone_weights):
        """The Keras 3 (``ns=keras``) or tf_keras (``ns=tf_keras``) functional model; outputs keyed by name."""
        raise NotImplementedError

    def pipeline(self, cfg, dataset, *, training: bool, batch_size: int | None = None, seed=None,
                 deterministic: bool = False):
        """The ``tf.data`` pipeline of ``(images, targets)`` batches for ``Model.fit`` / QAT fine-tuning.

        ``batch_size`` defaults to ``train.batch_size`` and ``seed`` to ``train.seed``;
        ``deterministic`` keeps the element order under parallel maps.
        """
        raise NotImplementedError

    def losses(self, cfg) -> tuple[dict, dict]:
        """``(losses, loss_weights)`` keyed by model output name (Keras 3 losses)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation
    def epoch_evaluator(self, val_dataset, cfg, *, batch_size: int = 8):
        """``(log_keys, evaluate)`` for training: ``evaluate(model, epoch) -> (metrics, {log key: value})``
        runs on the val split at evaluation epochs (it prints one line); ``log_keys`` are the
        history columns it fills (NaN on other epochs), the checkpoint metric among them."""
        raise NotImplementedError

    def evaluate(self, model, dataset, cfg, *, progress: bool = False, boundary_tolerance: int | None = None) -> dict:
        """The task's metrics of a Keras model on a dataset (what ``keras-fpn evaluate`` writes)."""
        raise NotImplementedError

    def format_metrics(self, metrics: dict) -> str:
        """``evaluate``'s metrics as a small text table."""
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        """One line on a finished training's best evaluation (``eval.json``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ export, compare, predict
    def export(self, model, config, labels, mode: str, **options) -> Path:
        """Convert to TFLite and write it (``fpn_export``; options as ``fpn_export.convert.export_model``)."""
        raise NotImplementedError

    @property
    def report(self):
        """The ``keras_fpn.compare.report.TaskReport`` that ``keras-fpn compare`` uses."""
        raise NotImplementedError

    def predict(self, run, paths, out, *, threshold: float, max_detections: int, which: str,
                on_error=None) -> tuple[int, list]:
        """``keras-fpn predict``: write results for ``paths`` into ``out``; an image that cannot be read
        is reported to ``on_error(message)`` and the others go on. Returns ``(images done, [errors])``."""
        raise NotImplementedError


def pipeline_options(cfg, training: bool, batch_size, seed, deterministic: bool) -> dict:
    """The keywords every task's dataset builder shares (image geometry, normalization, batching, seed)."""
    from keras_fpn.data.augment import AugmentConfig
    from keras_fpn.models.backbones import NORMALIZATION

    augment = AugmentConfig(hflip=cfg.data.hflip, scale_jitter=cfg.data.scale_jitter,
                            photometric=cfg.data.photometric) if training else None
    return dict(image_size=cfg.model.image_size, resize=cfg.model.resize,
                normalization=NORMALIZATION[cfg.model.backbone.name],
                batch_size=batch_size or cfg.train.batch_size, training=training, augment=augment,
                seed=cfg.train.seed if seed is None else seed, cache=cfg.data.cache, strict=cfg.data.strict,
                deterministic=deterministic)
