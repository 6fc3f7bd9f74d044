"""Sums over the replicas of a ``tf.distribute`` strategy, for code that runs inside a train step.

Under ``MirroredStrategy`` / ``MultiWorkerMirroredStrategy`` each replica runs the
train step on its share of the global batch. What must be a property of the *global*
batch (the number of positive anchors a loss is divided by, the gradient that is
clipped) is summed over the replicas here. With one replica (no strategy, the default
strategy, or a cross-replica context such as a loss called eagerly outside
``strategy.run``) the values are returned unchanged, so single-device training is
untouched.
"""
from __future__ import annotations

import tensorflow as tf

__all__ = ["replica_sum"]


def replica_sum(values):
    """All-reduce (sum) a tensor or a list of tensors over the replicas in sync.

    ``None`` entries of a list stay ``None``. A single tensor is a count (positives,
    valid pixels, batch size) and comes back under ``stop_gradient``; a list is a list of
    gradients.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    if not isinstance(values, (list, tuple)):
        return tf.stop_gradient(ctx.all_reduce(tf.distribute.ReduceOp.SUM, values))
    present = [v for v in values if v is not None]
    summed = iter(ctx.all_reduce(tf.distribute.ReduceOp.SUM, present) if present else [])
    return [None if v is None else next(summed) for v in values]
