"""Child processes of ``tests/keras_fpn/test_distribute.py``: TensorFlow must see
two logical CPU devices before it starts, so each measurement runs in a fresh process.

    python tests/distribute_child.py parity CONFIG OUT.json    # default vs mirrored vs mirrored float16
    python tests/distribute_child.py losses OUT.json           # the losses alone under mirrored
    python tests/distribute_child.py cli ARGS...               # keras-fpn ARGS (a multi_worker worker)
    python tests/distribute_child.py late OUT.json             # multi_worker after TensorFlow started

Every mode turns TensorFlow's graph optimizer (grappler) off first: tracing the first training
step then takes about half the time (8 s instead of 15 s for the test model), which is most of
these tests' time; it changes no value the tests compare (both sides run with the same setting).

``parity``, ``losses`` and ``late`` write OUT.json.
"""
from __future__ import annotations

import json
import sys


def fast_tracing() -> None:
    """Turn grappler off (see the module doc); before TensorFlow starts."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def cli(*args) -> None:
    """``keras-fpn ARGS`` with fast tracing; exits with its return code."""
    from keras_fpn.cli import main

    sys.exit(main(list(args)))


def two_cpu_devices() -> None:
    """Split the CPU into two logical devices (before TensorFlow initialises)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def fit_steps(cfg, place, batches) -> dict:
    """Train from seed 0 on ``batches`` (global batches), one ``fit`` step each: the loss of every
    step, the weights before and after the first step, the BN moving statistics after the last step
    and after precise BN on the same batches."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_fpn.training import distribute
    from keras_fpn.training.callbacks import recompute_bn_statistics
    from keras_fpn.training.train import compile_model, new_model

    stacked = (np.stack([x for x, _ in batches]), {k: np.stack([y[k] for _, y in batches]) for k in batches[0][1]})
    ds = tf.data.Dataset.from_tensor_slices(stacked).repeat()
    if place.distributed:
        ds = distribute.distribute_options(ds)
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            # Keras' batch logs are means over the epoch so far: recover each step's loss
            seen.setdefault("losses", []).append(float(logs["loss"]) * (batch + 1)
                                                 - sum(seen.get("losses", [])))
            if batch == 0:
                seen["after"] = [np.array(v) for v in self.model.trainable_weights]

    with distribute.precision_policy(cfg.train.mixed_precision):
        keras.utils.set_random_seed(0)
        model = new_model(cfg, place, ds.element_spec)
        before = [np.array(v) for v in model.trainable_weights]
        compile_model(model, cfg, place, ds, len(batches))
        model.fit(ds, steps_per_epoch=len(batches), epochs=1, verbose=0, shuffle=False, callbacks=[Record()])
        moving = _bn_statistics(model)
        images = tf.data.Dataset.from_tensor_slices(stacked[0])  # precise BN on the same global batches
        recompute_bn_statistics(model, images, place.strategy if place.distributed else None)
    return {"losses": seen["losses"], "before": before, "after": seen["after"], "moving": moving,
            "precise": _bn_statistics(model)}


def parity(config_path: str, out: str) -> None:
    """From the same initial weights on the same global batches: the default strategy, ``mirrored``
    on two logical CPUs, and ``mirrored`` with float16 mixed precision."""
    two_cpu_devices()
    import dataclasses

    import numpy as np

    from keras_fpn.config import load_config
    from keras_fpn.data.splits import load_datasets
    from keras_fpn.rundir import with_num_classes
    from keras_fpn.tasks import get_task
    from keras_fpn.training import distribute

    cfg = load_config(config_path)
    train_set, _ = load_datasets(cfg)
    cfg = with_num_classes(cfg, train_set.label_map.num_classes)
    pipeline = get_task(cfg.model.task).pipeline(cfg, train_set, training=True, deterministic=True)
    batches = list(pipeline.take(3).as_numpy_iterator())

    def variant(**train):
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))

    two = dict(strategy="mirrored", devices=("/cpu:0", "/cpu:1"))
    runs = {name: fit_steps(c, distribute.placement(c.train), batches)
            for name, c in (("default", cfg), ("mirrored", variant(**two)),
                            ("mirrored_float16", variant(mixed_precision="float16", **two)))}
    a, b = runs["default"], runs["mirrored"]
    update = [x1 - x0 for x0, x1 in zip(a["before"], a["after"])]
    diff = [x - y for x, y in zip(a["after"], b["after"])]
    result = {
        "losses": {name: r["losses"] for name, r in runs.items()},
        "same_init": all(np.array_equal(x, y) for x, y in zip(a["before"], b["before"])),
        "update_norm": float(np.sqrt(sum(np.sum(u * u) for u in update))),
        "weight_diff_norm": float(np.sqrt(sum(np.sum(d * d) for d in diff))),
        "max_update": max(float(np.max(np.abs(u))) for u in update),
        "max_weight_diff": max(float(np.max(np.abs(d))) for d in diff),
        "moving_rel_diff": _max_rel_diff(a["moving"], b["moving"]),
        "precise_bn_rel_diff": _max_rel_diff(a["precise"], b["precise"]),
        "precise_bn_rel_change": _max_rel_diff(a["precise"], a["moving"]),
        "positives_per_replica": [int(np.sum(half >= 0)) for half in np.split(batches[0][1]["class_logits"], 2)],
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2)


def _bn_statistics(model) -> list:
    """(moving mean, moving variance, epsilon) of every BatchNormalization layer."""
    import keras
    import numpy as np

    return [(np.array(l.moving_mean), np.array(l.moving_variance), l.epsilon) for l in model.layers
            if isinstance(l, keras.layers.BatchNormalization)]


def _max_rel_diff(xs, ys) -> float:
    """The largest change of a BN layer's output that the statistics' difference makes, relative to
    its scale: max over layers and channels of |d mean| / std and |d variance| / variance."""
    import numpy as np

    worst = 0.0
    for (m1, v1, eps), (m2, v2, _) in zip(xs, ys):
        worst = max(worst, float(np.max(np.abs(m1 - m2) / np.sqrt(v1 + eps))),
                    float(np.max(np.abs(v1 - v2) / (v1 + eps))))
    return worst


def losses(out: str) -> None:
    """FocalLoss, BoxLoss and SegmentationLoss of one global batch of 4, computed on one device
    and as Keras reduces them under ``mirrored`` (2 replicas of 2 examples with different numbers
    of positives / valid pixels): loss values and gradients w.r.t. the predictions."""
    two_cpu_devices()
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_fpn.ops.losses import BoxLoss, FocalLoss
    from keras_fpn.ops.seg_losses import SegmentationLoss

    rng = np.random.default_rng(0)
    cls = rng.choice([-2.0, -1.0, -1.0, -1.0, 0.0, 1.0], size=(4, 50)).astype(np.float32)
    cls[:2, :] = np.where(cls[:2] >= 0, -1.0, cls[:2])   # replica 0: few positives
    cls[:2, :3] = [0.0, 1.0, 0.0]
    box = np.concatenate([rng.normal(size=(4, 50, 4)), (cls >= 0)[..., None]], axis=-1).astype(np.float32)
    seg = rng.integers(0, 3, size=(4, 8, 8)).astype(np.float32)
    seg[:2, :6] = 255.0                                   # replica 0: mostly ignored pixels
    cases = {"focal": (FocalLoss(), cls, rng.normal(size=(4, 50, 2))),
             "box": (BoxLoss(), box, rng.normal(size=(4, 50, 4))),
             "seg": (SegmentationLoss(dice_weight=0.5), seg, rng.normal(size=(4, 8, 8, 3)))}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {}
    for name, (loss, y_true, y_pred) in cases.items():
        y_pred = tf.constant(y_pred.astype(np.float32))

        def value_and_grad(t, p):
            with tf.GradientTape() as tape:
                tape.watch(p)
                value = loss(t, p)  # Keras' reduction, scaled by 1 / replicas under a strategy
            return value, tape.gradient(value, p)

        single, single_grad = value_and_grad(tf.constant(y_true), y_pred)
        ds = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors((tf.constant(y_true), y_pred)))
        per_replica = strategy.run(tf.function(value_and_grad), args=next(iter(ds)))
        total = float(strategy.reduce("SUM", per_replica[0], axis=None))
        grad = np.concatenate([np.asarray(g) for g in strategy.experimental_local_results(per_replica[1])])
        result[name] = {"single": float(single), "mirrored": total,
                        "max_grad_diff": float(np.max(np.abs(grad - np.asarray(single_grad)))),
                        "max_grad": float(np.max(np.abs(np.asarray(single_grad))))}
        keras.backend.clear_session()
    with open(out, "w") as f:
        json.dump(result, f, indent=2)


def late(out: str) -> None:
    """``train.strategy multi_worker`` asked for after TensorFlow has started (TF_CONFIG from the
    caller): the error message, or None when it did not fail."""
    import tensorflow as tf

    from keras_fpn.config.schema import ConfigError, TrainConfig
    from keras_fpn.training.distribute import placement

    float(tf.constant(1.0) + 1.0)   # TensorFlow's runtime is up
    try:
        placement(TrainConfig(strategy="multi_worker"))
        message = None
    except ConfigError as exc:
        message = str(exc)
    with open(out, "w") as f:
        json.dump({"error": message}, f)


if __name__ == "__main__":
    fast_tracing()
    {"parity": parity, "losses": losses, "cli": cli, "late": late}[sys.argv[1]](*sys.argv[2:])
