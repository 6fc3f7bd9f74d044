"""Optimizer and learning-rate schedule of ``keras-fpn train`` (and the benchmarks that time it)."""
from __future__ import annotations

import math
import weakref

import keras


@keras.saving.register_keras_serializable(package="keras_fpn")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int):
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)
        self._traced = None   # (graph weakref, step object, rate tensor) of the last traced call

    def __call__(self, step):
        # Keras' AdamW asks for the rate once per variable (weight decay) while the train step
        # is traced: ~130 copies of the same ops cost ~5 s of tracing on the demo detector.
        # Within one graph the rate of the same step variable is one tensor: reuse it.
        import tensorflow as tf

        graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        if graph is not None and self._traced is not None and self._traced[0]() is graph \
                and self._traced[1] is step:
            return self._traced[2]
        rate = self._rate(step)
        if graph is not None:
            self._traced = (weakref.ref(graph), step, rate)
        return rate

    def _rate(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.base_lr * step / max(self.warmup_steps, 1)
        progress = keras.ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        cosine = 0.5 * self.base_lr * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def build_optimizer(cfg, steps_per_epoch: int):
    """The ``train.optimizer`` of a ``Config`` with its ``WarmupCosine`` schedule over ``train.epochs``:
    SGD with momentum or AdamW, decoupled ``weight_decay``, ``clipnorm``."""
    t = cfg.train
    schedule = WarmupCosine(t.learning_rate, int(t.warmup_epochs * steps_per_epoch), steps_per_epoch * t.epochs)
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=t.momentum, weight_decay=t.weight_decay,
                                    clipnorm=t.clipnorm, nesterov=False)
    return keras.optimizers.AdamW(schedule, weight_decay=t.weight_decay, clipnorm=t.clipnorm)
