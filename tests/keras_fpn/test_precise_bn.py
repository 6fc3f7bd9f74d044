"""Precise BN (``recompute_bn_statistics``): moving statistics become the average of the batch statistics."""
import keras
import numpy as np
import pytest

from keras_fpn.training.callbacks import recompute_bn_statistics


def _model():
    inp = keras.Input((3, 5, 2))
    x = keras.layers.Conv2D(3, 1, kernel_initializer=keras.initializers.Constant(0.5), bias_initializer="zeros",
                            name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inp, x)


def test_moving_statistics_are_the_mean_of_batch_statistics():
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 4, (4, 3, 5, 2)).astype("float32") for _ in range(3)]
    model = _model()
    assert recompute_bn_statistics(model, batches) == 3

    means1, vars1, means2, vars2 = [], [], [], []
    for b in batches:
        y = np.repeat(b.sum(-1, keepdims=True) * 0.5, 3, axis=-1)  # conv: every output = 0.5 * (c0 + c1)
        m, v = y.mean((0, 1, 2)), y.var((0, 1, 2))
        means1.append(m), vars1.append(v)
        z = np.maximum((y - m) / np.sqrt(v + 1e-3), 0)  # bn1 in training mode (gamma 1, beta 0), relu
        means2.append(z.mean((0, 1, 2))), vars2.append(z.var((0, 1, 2)))
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("bn2")
    np.testing.assert_allclose(bn1.moving_mean.numpy(), np.mean(means1, 0), rtol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), np.mean(vars1, 0), rtol=1e-4)
    np.testing.assert_allclose(bn2.moving_mean.numpy(), np.mean(means2, 0), rtol=1e-4)
    np.testing.assert_allclose(bn2.moving_variance.numpy(), np.mean(vars2, 0), rtol=1e-4)
    assert bn1.momentum == bn2.momentum == 0.99  # restored


def test_failure_midway_leaves_statistics_unchanged():
    model = _model()

    def batches():
        yield np.ones((2, 3, 5, 2), "float32")
        raise OSError("disk went away")

    with pytest.raises(OSError):
        recompute_bn_statistics(model, batches())
    bn1 = model.get_layer("bn1")
    np.testing.assert_array_equal(bn1.moving_mean.numpy(), np.zeros(3))
    np.testing.assert_array_equal(bn1.moving_variance.numpy(), np.ones(3))
    assert bn1.momentum == 0.99


def test_the_cached_forward_does_not_keep_the_model_alive():
    import gc
    import weakref

    from keras_fpn.training import callbacks

    model = _model()
    recompute_bn_statistics(model, [np.ones((2, 3, 5, 2), "float32")])
    assert model in callbacks._BN_FORWARD
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


class _CountingBatches:
    """A re-iterable of one batch that counts how often precise BN iterated it."""

    def __init__(self):
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        yield np.ones((2, 3, 5, 2), "float32")


@pytest.mark.parametrize("monitor, expected", [("val_AP", [0, 0, 0, 1]), ("val_loss", [1, 2, 3, 4])])
def test_precise_bn_runs_only_where_the_statistics_are_used(tmp_path, monitor, expected):
    """No val split: only the last epoch's checkpoint is read with the moving statistics,
    unless val_loss is monitored (best.* may be saved on any epoch)."""
    from keras_fpn.training.callbacks import EvalCheckpoint

    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    batches = _CountingBatches()
    cb = EvalCheckpoint(tmp_path, None, every=2, last_epoch=4, monitor=monitor, bn_batches=batches)
    cb.set_model(model)
    passes = []
    for epoch in range(4):
        cb.on_epoch_end(epoch, {"val_loss": 1.0 - 0.1 * epoch})
        passes.append(batches.passes)
    assert passes == expected
    assert (tmp_path / "last.weights.h5").is_file()
