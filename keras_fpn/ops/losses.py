"""RetinaNet losses as serializable Keras losses (focal loss, Huber box loss).

Target conventions (what the pipeline yields, see ``keras_fpn.ops.matcher``):
``class_logits`` targets are ``[B, A]`` with the class id (>= 0) on positive
anchors, -1 on background and -2 on ignored anchors; ``box_deltas`` targets are
``[B, A, 5]`` = ``(ty, tx, th, tw, positive_weight)``.

Normalization: both losses are divided by the number of positive anchors in
the whole batch, ``max(1, count)``. Keras reduces a loss with
``sum_over_batch_size`` (sum of the per-sample values / batch size), so
``call`` returns per-sample values ``sum_b * B / max(1, count)``; the reduced
value is then exactly ``sum over the batch / max(1, count)``, and per-sample
``sample_weight`` still works.

Under a ``tf.distribute`` strategy with R replicas each replica holds ``b = B / R``
examples; Keras divides each replica's loss by ``b`` and by R and sums the gradients
over the replicas. ``count`` and ``B`` are then the sums over the replicas
(``keras_fpn.ops.replicas.replica_sum``): each replica returns ``sum_r * B / max(1,
count)`` per sample, its reduced loss is ``sum_r / max(1, count)``, and the summed
gradient is that of ``sum over the global batch / max(1, count)`` -- the single-device
loss of the same global batch. With one replica nothing is summed.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from keras_fpn.ops.replicas import replica_sum

__all__ = ["FocalLoss", "BoxLoss"]


def _batch_normalizer(num_positive: tf.Tensor, batch_size: tf.Tensor, per_positive: float) -> tf.Tensor:
    """Return ``B / (per_positive * max(1, count))``: per-sample sums -> batch-normalized shares.

    ``num_positive`` and ``batch_size`` are this replica's; both are summed over the
    replicas in sync first (see the module doc)."""
    batch = replica_sum(tf.cast(batch_size, tf.float32))
    return batch / (per_positive * tf.maximum(replica_sum(num_positive), 1.0))


@keras.saving.register_keras_serializable(package="keras_fpn")
class FocalLoss(keras.losses.Loss):
    """Sigmoid focal loss (Lin et al. 2017) over all classes of every non-ignored anchor.

    ``FL = alpha_t * (1 - p_t)**gamma * BCE(logit, onehot)`` summed over anchors
    and classes; ignored anchors (-2) contribute nothing, background (-1) has an
    all-zero one-hot target; the sum is divided by the batch's positive count
    (see the module doc). RetinaNet uses ``alpha=0.25``, ``gamma=2``.

    Args:
        alpha: weight of the positive (foreground) term; ``1 - alpha`` for negatives.
        gamma: focusing exponent.
        name: loss name.
        reduction: Keras reduction; keep ``"sum_over_batch_size"`` for the
            documented normalization.
        dtype: Keras loss dtype.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, name: str = "focal_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        """Return per-sample shares ``[B]`` of the batch-normalized focal loss.

        Args:
            y_true: ``[B, A]`` class id / -1 background / -2 ignore.
            y_pred: ``[B, A, C]`` logits.

        Returns:
            ``[B]`` float32.
        """
        y_pred = tf.cast(y_pred, tf.float32)
        y_true = tf.cast(y_true, tf.float32)
        if y_true.shape.rank == 3:  # (B, A, 1) -> (B, A)
            y_true = tf.squeeze(y_true, axis=-1)
        num_classes = tf.shape(y_pred)[-1]
        # round(): class ids arrive as floats; one_hot of a negative id is all zeros.
        onehot = tf.one_hot(tf.cast(tf.round(y_true), tf.int32), num_classes, dtype=tf.float32)
        prob = tf.sigmoid(y_pred)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=y_pred)
        p_t = onehot * prob + (1.0 - onehot) * (1.0 - prob)
        alpha_t = onehot * self.alpha + (1.0 - onehot) * (1.0 - self.alpha)
        loss = alpha_t * tf.pow(1.0 - p_t, self.gamma) * bce  # (B, A, C)
        keep = tf.cast(y_true > -1.5, tf.float32)  # drop ignored (-2) anchors
        per_sample = tf.reduce_sum(tf.reduce_sum(loss, axis=-1) * keep, axis=-1)  # (B,)
        num_positive = tf.reduce_sum(tf.cast(y_true >= 0.0, tf.float32))
        return per_sample * _batch_normalizer(num_positive, tf.shape(y_true)[0], 1.0)

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "gamma": self.gamma})
        return config


@keras.saving.register_keras_serializable(package="keras_fpn")
class BoxLoss(keras.losses.Loss):
    """Huber box-regression loss on positive anchors.

    ``huber(d) = 0.5 * d**2`` for ``|d| <= delta`` else
    ``delta * (|d| - 0.5 * delta)`` (Keras / ``tf.losses.huber`` form, not
    divided by delta), applied to each of ``(ty, tx, th, tw)``, weighted by the
    target's positive-weight column, summed, and divided by
    ``4 * max(1, positive count)``: the mean over the four coordinates per
    positive anchor, as in the reference RetinaNet (TPU / Model Garden), whose
    ``delta=0.1`` is the default here (pair it with a box loss weight of ~50).

    Args:
        delta: Huber transition point.
        name: loss name.
        reduction: Keras reduction; keep ``"sum_over_batch_size"`` for the
            documented normalization.
        dtype: Keras loss dtype.
    """

    def __init__(self, delta: float = 0.1, name: str = "box_loss",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.delta = float(delta)

    def call(self, y_true, y_pred):
        """Return per-sample shares ``[B]`` of the batch-normalized box loss.

        Args:
            y_true: ``[B, A, 5]`` encoded targets + positive weight.
            y_pred: ``[B, A, 4]`` predicted deltas.

        Returns:
            ``[B]`` float32.
        """
        y_pred = tf.cast(y_pred, tf.float32)
        y_true = tf.cast(y_true, tf.float32)
        weight = y_true[..., 4]  # (B, A)
        err = tf.abs(y_pred - y_true[..., :4])
        quad = tf.minimum(err, self.delta)
        huber = 0.5 * quad * quad + self.delta * (err - quad)  # (B, A, 4)
        per_sample = tf.reduce_sum(tf.reduce_sum(huber, axis=-1) * weight, axis=-1)  # (B,)
        num_positive = tf.reduce_sum(tf.cast(weight > 0.0, tf.float32))
        return per_sample * _batch_normalizer(num_positive, tf.shape(y_true)[0], 4.0)

    def get_config(self):
        config = super().get_config()
        config.update({"delta": self.delta})
        return config
