"""Semantic-segmentation loss: softmax cross-entropy with an ignore label, optional soft Dice.

Targets are the uint8 class maps of ``keras_fpn.data.masks`` (``[B, H, W]``,
0 = background, ``c + 1`` = class ``c``, ``ignore_label`` = skipped); the
prediction is ``seg_logits [B, H, W, K]``.

Normalization: the cross-entropy is averaged over the *valid* (non-ignored)
pixels of the whole batch. As in ``keras_fpn.ops.losses``, ``call`` returns
per-sample shares ``sum_b * B / max(1, valid pixels in the batch)``, so Keras'
``sum_over_batch_size`` reduction gives exactly that mean. Under a ``tf.distribute``
strategy the valid-pixel count and B are summed over the replicas first, as the
detection losses do (``keras_fpn.ops.losses``), so the mean is over the global batch.

Soft Dice (``dice_weight > 0``): ``1 - mean_k (2 sum p_k y_k + 1) / (sum p_k +
sum y_k + 1)`` over the K channels, with softmax probabilities ``p`` and
one-hot targets ``y`` summed over the valid pixels of each image; the
per-image values are averaged over the batch. It is added as
``CE + dice_weight * Dice``.

Written with ``tf`` ops only, so the same ``call`` serves Keras 3 training and
the tf_keras QAT fine-tuning (``fpn_export``).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from keras_fpn.ops.replicas import replica_sum
from keras_fpn.ops.seg_labels import IGNORE_LABEL

__all__ = ["SegmentationLoss"]


@keras.saving.register_keras_serializable(package="keras_fpn")
class SegmentationLoss(keras.losses.Loss):
    """Softmax cross-entropy over valid pixels (+ ``dice_weight`` x soft Dice).

    Args:
        ignore_label: target value of pixels that do not count.
        dice_weight: weight of the soft Dice term (0: cross-entropy only).
        name, reduction, dtype: Keras loss arguments; keep
            ``"sum_over_batch_size"`` for the documented normalization.
    """

    def __init__(self, ignore_label: int = IGNORE_LABEL, dice_weight: float = 0.0,
                 name: str = "seg_loss", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.ignore_label = int(ignore_label)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        """Return per-sample shares ``[B]`` of the batch loss.

        Args:
            y_true: ``[B, H, W]`` (or ``[B, H, W, 1]``) class ids / ignore label.
            y_pred: ``[B, H, W, K]`` logits.

        Returns:
            ``[B]`` float32.
        """
        y_pred = tf.cast(y_pred, tf.float32)
        labels = tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int32)
        if labels.shape.rank == 4:
            labels = tf.squeeze(labels, axis=-1)
        num_classes = tf.shape(y_pred)[-1]
        valid = tf.not_equal(labels, self.ignore_label)
        validf = tf.cast(valid, tf.float32)
        safe = tf.where(valid, labels, tf.zeros_like(labels))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=y_pred)  # (B, H, W)
        per_sample = tf.reduce_sum(ce * validf, axis=[1, 2])
        batch = replica_sum(tf.cast(tf.shape(labels)[0], tf.float32))
        loss = per_sample * batch / tf.maximum(replica_sum(tf.reduce_sum(validf)), 1.0)
        if self.dice_weight > 0.0:
            prob = tf.nn.softmax(y_pred) * validf[..., None]
            onehot = tf.one_hot(safe, num_classes, dtype=tf.float32) * validf[..., None]
            inter = tf.reduce_sum(prob * onehot, axis=[1, 2])                     # (B, K)
            denom = tf.reduce_sum(prob, axis=[1, 2]) + tf.reduce_sum(onehot, axis=[1, 2])
            dice = 1.0 - tf.reduce_mean((2.0 * inter + 1.0) / (denom + 1.0), axis=-1)  # (B,)
            loss = loss + self.dice_weight * dice
        return loss

    def get_config(self):
        config = super().get_config()
        config.update({"ignore_label": self.ignore_label, "dice_weight": self.dice_weight})
        return config
