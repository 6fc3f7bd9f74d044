"""Optimizer and learning-rate schedule of ``keras-fpn train`` (and the benchmarks that time it).

Under a strategy with several replicas the optimizer sums the replicas' gradients
*first* (``GlobalGradients``): Keras 3 on TensorFlow clips each replica's share of the
gradient (``clipnorm``) and checks it for inf/NaN (float16 loss scaling) before the
all-reduce, which makes clipping depend on the number of replicas and lets replicas
disagree on skipping a step. Summed first, clipping, the finite check and the update
see the gradient of the global batch, as on one device.
"""
from __future__ import annotations

import math
import weakref

import keras

from keras_fpn.ops.replicas import replica_sum


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


class GlobalGradients:
    """Optimizer mixin: ``apply`` starts by summing the gradients over the replicas in sync
    (``replica_sum``; unchanged with one replica), and the per-variable all-reduce Keras
    does later in the update is skipped (it would sum them again).

    ``sum_in_apply`` is False on the inner optimizer of ``GlobalLossScaleOptimizer``,
    whose own ``apply`` has summed them already.
    """

    sum_in_apply = True

    def apply(self, grads, trainable_variables=None):
        if self.sum_in_apply:
            grads = replica_sum(list(grads))
        return super().apply(grads, trainable_variables)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


@keras.saving.register_keras_serializable(package="keras_fpn")
class GlobalSGD(GlobalGradients, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` on the gradient of the global batch (``GlobalGradients``)."""


@keras.saving.register_keras_serializable(package="keras_fpn")
class GlobalAdamW(GlobalGradients, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` on the gradient of the global batch (``GlobalGradients``)."""


@keras.saving.register_keras_serializable(package="keras_fpn")
class GlobalLossScaleOptimizer(GlobalGradients, keras.optimizers.LossScaleOptimizer):
    """Dynamic float16 loss scaling whose finite check sees the summed gradient, so every
    replica takes the same branch (apply or skip the step)."""

    def __init__(self, inner_optimizer, **kwargs):
        super().__init__(inner_optimizer, **kwargs)
        inner_optimizer.sum_in_apply = False


def build_optimizer(cfg, steps_per_epoch: int, *, replicas: int = 1):
    """The ``train.optimizer`` of a ``Config`` with its ``WarmupCosine`` schedule over ``train.epochs``:
    SGD with momentum or AdamW, decoupled ``weight_decay``, ``clipnorm``.

    With ``replicas`` > 1 the ``Global*`` classes (see the module doc), wrapped in
    ``GlobalLossScaleOptimizer`` under ``train.mixed_precision: float16``; with one replica
    the Keras classes (``compile`` adds Keras' own loss scaling for float16).
    """
    t = cfg.train
    schedule = WarmupCosine(t.learning_rate, int(t.warmup_epochs * steps_per_epoch), steps_per_epoch * t.epochs)
    sgd, adamw = (GlobalSGD, GlobalAdamW) if replicas > 1 else (keras.optimizers.SGD, keras.optimizers.AdamW)
    if t.optimizer == "sgd":
        optimizer = sgd(schedule, momentum=t.momentum, weight_decay=t.weight_decay, clipnorm=t.clipnorm,
                        nesterov=False)
    else:
        optimizer = adamw(schedule, weight_decay=t.weight_decay, clipnorm=t.clipnorm)
    if replicas > 1 and t.mixed_precision == "float16":
        return GlobalLossScaleOptimizer(optimizer)
    return optimizer
