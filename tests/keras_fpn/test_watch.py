"""Training watches itself: the stalled-loss and no-detection lines, with numbers."""
import math

import numpy as np
import pytest

import keras_fpn  # noqa: F401
import keras

from keras_fpn.training.watch import TrainingWatch, max_class_score, no_detection, stalled_loss


def test_plateau_warns_with_the_measured_numbers():
    # the 80-class plateau of the old head init: 1.141 .. 1.118 over 96 steps
    losses = [1.141] * 10 + [1.13] * 76 + [1.118] * 10
    line = stalled_loss(losses, after_steps=96, min_drop=0.1, name="class loss")
    assert line.startswith("train watch: class loss 1.141 -> 1.118 over the first 96 steps (-2.0 %, "
                           "expected at most -10 %)")
    assert "train.epochs" in line and "\n" not in line


def test_learning_curve_passes_and_nothing_is_said_early():
    learning = list(np.linspace(1.13, 0.35, 80))
    assert stalled_loss(learning, after_steps=80, min_drop=0.1) is None
    assert stalled_loss([1.13] * 79, after_steps=80, min_drop=0.1) is None   # too early
    assert stalled_loss([1.13] * 80, after_steps=80, min_drop=0.1) is not None


def test_rising_loss_says_lower_the_rate():
    line = stalled_loss([1.0] * 10 + [1.5] * 10, after_steps=20, min_drop=0.1)
    assert "(+50.0 %" in line and "lower train.learning_rate" in line


def test_no_detection_reports_the_max_score():
    line = no_detection(0.0123, 0.05, epoch=5)
    assert line.startswith("train watch: epoch 5: no detection above model.postprocess.score_threshold 0.05")
    assert "(max score 0.0123)" in line
    assert no_detection(0.3, 0.05, epoch=5) is None
    assert no_detection(0.05, 0.05, epoch=5) is not None   # strict: score > threshold, as NMS


def test_per_step_losses_recovered_from_keras_running_means():
    watch = TrainingWatch(after_steps=100, say=lambda line: None)
    watch.on_epoch_begin(0)
    for i, mean in enumerate([1.0, 1.5, 2.0]):   # running means of the steps 1, 2, 3
        watch.on_train_batch_end(i, {"loss": 9.0, "class_logits_loss": mean})
    watch.on_epoch_begin(1)
    watch.on_train_batch_end(0, {"loss": 9.0, "class_logits_loss": 0.5})
    assert watch.losses == pytest.approx([1.0, 2.0, 3.0, 0.5])


def test_fit_that_does_not_learn_warns_once():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")   # a rate of 0 cannot learn
    said = []
    watch = TrainingWatch(after_steps=6, min_drop=0.1, say=said.append)
    x = np.ones((8, 3), np.float32)
    model.fit(x, np.zeros((8, 1), np.float32), batch_size=2, epochs=3, verbose=0, callbacks=[watch])
    assert len(said) == 1 and "over the first 6 steps (+0.0 %" in said[0]


def test_max_class_score_is_the_sigmoid_of_the_largest_logit():
    inputs = keras.Input((2,))
    logits = keras.layers.Dense(3, kernel_initializer="zeros",
                                bias_initializer=keras.initializers.Constant([-4.0, -2.0, -3.0]))(inputs)
    model = keras.Model(inputs, {"class_logits": logits})
    batches = [np.zeros((2, 2), np.float32), (np.ones((1, 2), np.float32), None)]
    assert max_class_score(model, batches) == pytest.approx(1 / (1 + math.exp(2.0)), rel=1e-6)
