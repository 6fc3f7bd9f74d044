"""The train steps are traced once: the learning-rate schedule, ``build_loss_trackers`` (Keras 3)
and the QAT fine-tuning's ``_build_before_trace`` (tf_keras).

Each trace of a train step runs the model's Python ``call``; a counting layer tells how many
traces ``fit`` made. Without the pre-builds both Keras 3 and tf_keras trace twice (the loss
trackers and, in tf_keras, the optimizer slots are created inside the first trace).
"""
import math

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras_fpn.config import config_from_dict
from keras_fpn.training.optimizer import WarmupCosine
from keras_fpn.training.train import build_loss_trackers


def test_warmup_cosine_values_and_one_tensor_per_graph():
    sched = WarmupCosine(0.01, warmup_steps=10, total_steps=110)
    # warmup: linear from 0; then 0.5 * lr * (1 + cos(pi * (step - 10) / 100))
    for step, expected in [(0, 0.0), (5, 0.005), (10, 0.01), (60, 0.005),
                           (35, 0.005 * (1 + math.cos(math.pi * 0.25))), (110, 0.0), (200, 0.0)]:
        assert float(sched(step)) == pytest.approx(expected, abs=1e-7), step

    step = tf.Variable(60, dtype=tf.int64)
    other = tf.Variable(35, dtype=tf.int64)
    seen = {}

    @tf.function
    def traced():
        a, b, c = sched(step), sched(step), sched(other)
        seen["same"], seen["other"] = a is b, a is not c
        return a, c

    a, c = traced()
    assert seen == {"same": True, "other": True}
    assert float(a) == pytest.approx(0.005, abs=1e-7)
    assert float(c) == pytest.approx(0.005 * (1 + math.cos(math.pi * 0.25)), abs=1e-7)
    step.assign(10)
    assert float(tf.function(lambda: sched(step))()) == pytest.approx(0.01, abs=1e-7)  # a new graph: recomputed


class _CountCalls:
    def __init__(self):
        self.n = 0

    def __call__(self, x):
        self.n += 1
        return x


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = {"a": rng.normal(size=(n, 2)).astype("float32"), "b": rng.normal(size=(n, 3)).astype("float32")}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()


def _keras3_model(counter):
    inp = keras.Input((6,))
    h = keras.layers.Lambda(counter)(keras.layers.Dense(8)(inp))
    model = keras.Model(inp, {"a": keras.layers.Dense(2, name="a")(h), "b": keras.layers.Dense(3, name="b")(h)})
    model.compile(optimizer=keras.optimizers.AdamW(WarmupCosine(1e-3, 2, 10), weight_decay=1e-4, clipnorm=1.0),
                  loss={"a": "mse", "b": "mse"})
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.parametrize("prebuild, traces", [(False, 2), (True, 1)])
def test_build_loss_trackers_leaves_one_trace_of_the_keras3_train_step(prebuild, traces):
    counter = _CountCalls()
    model = _keras3_model(counter)
    data = _data()
    if prebuild:
        build_loss_trackers(model, data)
        assert {"a_loss", "b_loss"} <= {m.name for m in model.metrics}
    counter.n = 0
    hist = model.fit(data, steps_per_epoch=3, epochs=2, verbose=0)
    assert counter.n == traces
    # the trackers were reset after the pre-build: the logged loss is the sum of the output losses
    assert hist.history["loss"][-1] == pytest.approx(hist.history["a_loss"][-1] + hist.history["b_loss"][-1],
                                                     rel=1e-4)


@pytest.mark.parametrize("steps, traces", [(6, 1), (3, 0)])
def test_qat_fine_tuning_traces_its_train_step_once(steps, traces):
    import tf_keras

    from fpn_export.qat import _fit

    counter = _CountCalls()
    inp = tf_keras.Input((6,))
    h = tf_keras.layers.Lambda(counter)(tf_keras.layers.Dense(8)(inp))
    model = tf_keras.Model(inp, {"a": tf_keras.layers.Dense(2, name="a")(h),
                                 "b": tf_keras.layers.Dense(3, name="b")(h)})
    cfg = config_from_dict({"train": {"clipnorm": 1.0}, "export": {"qat_learning_rate": 1e-3}})
    counter.n = 0
    loss = _fit(model, _data(), steps=steps, config=cfg, label="test",
                losses=({"a": tf_keras.losses.MeanSquaredError(), "b": tf_keras.losses.MeanSquaredError()},
                        {"a": 1.0, "b": 1.0}))
    assert np.isfinite(loss)
    # traced: one trace; eager (<= 5 steps): the call runs once per step, no trace
    assert counter.n == (traces if steps > 5 else steps)
