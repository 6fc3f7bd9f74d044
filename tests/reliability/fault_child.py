"""Run ``keras-fpn`` with one fault injected: a helper the fault tests start as a subprocess (not a test module).

    python fault_child.py ACTION:POINT:NAME:N -- train CONFIG --run-dir RUN ...

``ACTION`` is ``kill`` (SIGKILL this process) or ``enospc`` (``OSError(ENOSPC)``, the full disk);
``POINT`` is where, the ``N``-th time (1-based) it is reached for a file named ``NAME``:

``commit``
    the atomic writer (``fpn_edge.atomic``) about to rename its temporary file onto NAME; the
    temporary file is cut to half its size first (the write was under way).
``h5``
    Keras writing the checkpoint NAME (``save_weights`` / ``save``): the file it wrote is cut to
    half, then the fault.
``replace``
    ``os.replace`` onto NAME (the rename itself fails).
``csv``
    the history row of an epoch end (NAME: ``history.csv``): half a row is written, then the fault.
``batch``
    the end of the N-th training step, before anything of it is saved (NAME: ``-``): the step's
    updates exist only in memory, as in a kill in the middle of a step.

NAME may be a glob (``state-*.weights.h5``).

Where a kill is asked for, the process ends with -9 and nothing after the point runs.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal
import sys
from pathlib import Path


def _fault(action: str, where: str):
    if action == "kill":
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


def _cut(path) -> None:
    path = Path(path)
    if path.is_file():
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def install(spec: str, patch=setattr) -> None:
    """Arm the fault ``ACTION:POINT:NAME:N`` (module docstring); ``patch(obj, name, value)`` sets each
    patched attribute (``setattr``, or pytest's ``monkeypatch.setattr`` to undo them after a test)."""
    action, point, name, nth = spec.split(":")
    nth = int(nth)
    seen = {"n": 0}

    def hit(target) -> bool:
        if name != "-" and not fnmatch.fnmatch(Path(target).name, name):
            return False
        seen["n"] += 1
        return seen["n"] == nth

    if point == "commit":
        from fpn_edge import atomic

        commit = atomic._commit

        def _commit(tmp, path):
            if hit(path):
                _cut(tmp)
                _fault(action, path)
            return commit(tmp, path)

        patch(atomic, "_commit", _commit)
    elif point == "replace":
        replace = os.replace

        def _replace(src, dst, *args, **kwargs):
            if hit(dst):
                _fault(action, dst)
            return replace(src, dst, *args, **kwargs)

        patch(os, "replace", _replace)
    elif point == "h5":
        import keras

        for method in ("save_weights", "save"):
            original = getattr(keras.Model, method)

            def patched(self, filepath, *args, _original=original, **kwargs):
                result = _original(self, filepath, *args, **kwargs)
                target = Path(filepath).name
                if target.startswith(".tmp-"):  # the atomic writer's ".tmp-XXXX-<name>"
                    target = target.split("-", 2)[-1]
                if hit(target):
                    _cut(filepath)
                    _fault(action, filepath)
                return result

            patch(keras.Model, method, patched)
    elif point == "csv":
        import keras

        on_epoch_end = keras.callbacks.CSVLogger.on_epoch_end

        def _on_epoch_end(self, epoch, logs=None):
            if hit(self.filename):
                self.csv_file.write(f"{epoch},0.5")
                self.csv_file.flush()
                _fault(action, self.filename)
            return on_epoch_end(self, epoch, logs)

        patch(keras.callbacks.CSVLogger, "on_epoch_end", _on_epoch_end)
    elif point == "batch":
        import keras

        on_batch_end = keras.callbacks.TerminateOnNaN.on_batch_end

        def _on_batch_end(self, batch, logs=None):
            if hit("-"):
                _fault(action, "a training step")
            return on_batch_end(self, batch, logs)

        patch(keras.callbacks.TerminateOnNaN, "on_batch_end", _on_batch_end)
    else:
        raise SystemExit(f"unknown fault point {point!r}")


def tiny_network(patch=setattr) -> None:
    """Train a stand-in network instead of the config's FPN (``FAULT_TINY_NETWORK=1``): one strided conv,
    BatchNorm, pooling and two dense heads with the detector's outputs (``box_deltas [B, A, 4]``,
    ``class_logits [B, A, C]`` for the config's anchors). Everything else is the real ``train``: data
    pipeline, losses, evaluation, checkpoints, backup, history. The fault handling does not depend
    on the network, and the stand-in traces in a second instead of ~20 s."""
    import keras

    from keras_fpn.ops.anchors import model_anchors
    from keras_fpn.training import train

    def build_model(cfg, **_):
        layers = keras.layers
        anchors, classes = len(model_anchors(cfg)), cfg.num_classes
        x = keras.Input((*cfg.image_size, 3), name="image")
        y = layers.Conv2D(8, 3, strides=4, padding="same", name="stub_conv")(x)
        y = layers.ReLU(name="stub_relu")(layers.BatchNormalization(name="stub_bn")(y))
        y = layers.GlobalAveragePooling2D(name="stub_pool")(y)
        box = layers.Reshape((anchors, 4), name="box_deltas")(layers.Dense(anchors * 4, name="stub_box")(y))
        cls = layers.Reshape((anchors, classes), name="class_logits")(
            layers.Dense(anchors * classes, bias_initializer=keras.initializers.Constant(-4.6), name="stub_cls")(y))
        return keras.Model(x, {"box_deltas": box, "class_logits": cls}, name="stub_detector")

    patch(train, "build_model", build_model)


if __name__ == "__main__":
    spec, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: fault_child.py SPEC -- keras-fpn arguments"
    if os.environ.get("FAULT_TINY_NETWORK") == "1":
        tiny_network()
    if spec != "none":
        install(spec)
    from keras_fpn.cli import main

    sys.exit(main(argv))
