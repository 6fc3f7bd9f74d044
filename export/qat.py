"""The tf_keras graph an export converts: the twin, quantization-aware fine-tuned or pruned with tfmot.

``graph_to_convert`` replaces a Keras 3 model by its tf_keras twin
(``keras_fpn.models.twin.build_twin``: same builder, the trained weights),
whose ``UpSampling2D`` lowers to one RESIZE_NEAREST_NEIGHBOR (Keras 3's to
RESHAPE + TILE + RESHAPE, which the Edge TPU does not map). tfmot rejects
Keras 3 models, so QAT and pruning also work on the twin:

* **QAT** (``qat-int8``): ``tfmot.quantization.keras.quantize_model`` inserts
  fake-quant ops (per-channel weights, 8-bit activations with learned ranges,
  Conv+BN+ReLU patterns quantized as TFLite will fuse them); the model is
  fine-tuned with ``fit`` on the training pipeline for ``export.qat_steps``
  steps at ``export.qat_learning_rate`` (Adam), and converted to full integer.
* **Pruning** (``--prune S``): ``prune_low_magnitude`` with a schedule that
  reaches sparsity S within the fine-tuning steps (``ConstantSparsity`` for
  very short runs, ``PolynomialDecay`` from 0 over the first 2/3 of the steps
  otherwise), fine-tuned the same way with ``UpdatePruningStep``, then
  ``strip_pruning``. Combined with QAT, the stripped model is quantized with
  the sparsity-preserving scheme
  (``Default8BitPrunePreserveQuantizeScheme``) and fine-tuned again, so the
  zeros survive QAT.

Activation ranges are initialized from calibration images before QAT
(``init_qat_ranges``): tfmot starts every activation range at [-6, 6] and
moves it by an EMA with decay 0.999, so after 300 steps a range has moved only
~26 % of the way to the data (after 2 steps the converted model still had
scale 12/255 on every tensor, the class logits included). Setting each
``output_min/max`` / ``post_activation_min/max`` pair to the min/max of the
float twin's output of the same layer over the representative images (the
ranges post-training calibration would use) starts QAT where PTQ is.

BatchNormalization layers are frozen (inference mode, statistics kept) during
fine-tuning: the fine-tuning batches (``export.qat_batch_size``, 8 by default)
are too small to re-estimate them, and re-estimated statistics would move the
float model the QAT ranges were learned for.

Losses are the task's training losses (``tf_keras_losses``: the Keras 3 loss
objects of the task, called from tf_keras ``Loss`` wrappers).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from fpn_export.errors import ExportError

logger = logging.getLogger("fpn_export")

__all__ = ["graph_to_convert", "optimize_twin", "freeze_batch_norm", "tf_keras_losses", "weight_sparsity",
           "prune_schedule", "init_qat_ranges"]


def freeze_batch_norm(model) -> int:
    """Set every tf_keras BatchNormalization layer untrainable (inference mode); returns how many."""
    import tf_keras

    n = 0
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False
            n += 1
        elif hasattr(layer, "layers"):
            n += freeze_batch_norm(layer)
    return n


def tf_keras_losses(config) -> tuple:
    """``(losses, loss_weights)`` dicts for ``tf_keras`` ``compile``: the task's training losses.

    Each Keras 3 loss of the task (``keras_fpn.tasks``: ``get_task(...).losses``) is
    called from a tf_keras ``Loss``; its ``call`` returns the per-sample values,
    and tf_keras' default ``sum_over_batch_size`` reduction then gives the same
    batch normalization as training.
    """
    import tf_keras

    from keras_fpn.tasks import get_task

    class _Wrapped(tf_keras.losses.Loss):
        # A tf_keras Loss subclass, not a plain function: tf_keras' function
        # wrapper squeezes a trailing class dimension of 1 (C == 1) off y_pred.
        def __init__(self, inner):
            super().__init__(name=inner.name)
            self.inner = inner

        def call(self, y_true, y_pred):
            return self.inner.call(y_true, y_pred)

    losses, weights = get_task(config.model.task).losses(config)
    return ({k: _Wrapped(v) for k, v in losses.items()}, {k: float(w) for k, w in weights.items()})


def prune_schedule(sparsity: float, steps: int):
    """The tfmot pruning schedule reaching ``sparsity`` within ``steps`` fine-tuning steps."""
    import tensorflow_model_optimization as tfmot

    if steps < 20:
        return tfmot.sparsity.keras.ConstantSparsity(float(sparsity), begin_step=0, frequency=1)
    end = max(1, (2 * steps) // 3)
    return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(sparsity),
                                                begin_step=0, end_step=end,
                                                frequency=max(1, end // 10))


def weight_sparsity(model) -> float:
    """Fraction of exact zeros over the conv/dense kernels of a (tf_)keras model."""
    total = zeros = 0
    for w in model.weights:
        name = w.name
        if "kernel" in name and "quantize" not in name and "min" not in name and "max" not in name:
            a = np.asarray(w)
            if a.ndim >= 2:
                total += a.size
                zeros += int(np.count_nonzero(a == 0))
    return zeros / total if total else 0.0


def _activation_range_vars(qat_model) -> dict:
    """``{float layer name: [(min_var, max_var), ...]}`` for the activation quantizers of a tfmot model."""
    out = {}
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        by_name = {w.name.rsplit("/", 1)[-1].split(":")[0]: w for w in layer.weights}
        pairs = [(by_name[f"{p}_min"], by_name[f"{p}_max"]) for p in ("output", "post_activation")
                 if f"{p}_min" in by_name and f"{p}_max" in by_name]
        if pairs:
            out[inner.name] = pairs
    return out


def init_qat_ranges(qat_model, float_model, images) -> int:
    """Set a tfmot model's activation ranges to the float model's output ranges on ``images``.

    Args:
        qat_model: the tfmot-quantized tf_keras model (from ``float_model``).
        float_model: the float tf_keras model it was made from (same layer names).
        images: iterable of ``[1, H, W, 3]`` (or ``[H, W, 3]``) normalized images.

    Returns:
        The number of layers whose ranges were set.
    """
    import tensorflow as tf
    import tf_keras

    targets = _activation_range_vars(qat_model)
    names, tensors = [], []
    # Every call of a layer *in this model's graph* (shared heads: one per pyramid level). A
    # layer's own inbound_nodes can also hold calls from other models that reuse the layer
    # object (strip_pruning's clone does), which this graph cannot compute.
    for depth in sorted(float_model._nodes_by_depth, reverse=True):
        for node in float_model._nodes_by_depth[depth]:
            if node.layer.name in targets:
                for t in tf.nest.flatten(node.outputs):
                    names.append(node.layer.name)
                    tensors.append(t)
    if not tensors:
        return 0
    probe = tf_keras.Model(float_model.inputs, tensors)
    lo = {n: 0.0 for n in names}   # the range must hold 0 (TFLite zero point)
    hi = {n: 0.0 for n in names}
    seen = 0
    for x in images:
        x = np.asarray(x, np.float32)
        if x.ndim == 3:
            x = x[None]
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for n, o in zip(names, outs):
            o = np.asarray(o)
            lo[n] = min(lo[n], float(o.min()))
            hi[n] = max(hi[n], float(o.max()))
        seen += 1
    if not seen:
        return 0
    for n, pairs in targets.items():
        if n in lo:
            for mn, mx in pairs:
                mn.assign(lo[n])
                mx.assign(hi[n] if hi[n] > lo[n] else lo[n] + 1e-3)
    return len(set(names))


def _build_before_trace(model, data) -> None:
    """Create the optimizer slots and the compiled loss's trackers eagerly (compiled ``model``).

    tf_keras creates both the first time the train step runs, i.e. inside its first trace,
    and a ``tf.function`` that creates variables is traced again: the QAT train step was
    traced twice (~12 s each on the demo detector). One loss call on zero targets and
    predictions of one example (shapes from ``data.element_spec`` and ``model.output``)
    and ``optimizer.build`` leave one trace.
    """
    import tensorflow as tf

    specs = tf.nest.flatten(data.element_spec[1]) + tf.nest.flatten(model.output)
    if any(d is None for s in specs for d in s.shape[1:]):
        return  # a dynamic target shape: let the first trace build them

    def one_zero(spec):
        return tf.zeros((1, *spec.shape[1:]), spec.dtype)

    model.optimizer.build(model.trainable_variables)
    model.compiled_loss(tf.nest.map_structure(one_zero, data.element_spec[1]),
                        tf.nest.map_structure(one_zero, model.output))


def _fit(model, data, *, steps: int, config, callbacks=(), label: str, losses=None):
    import tf_keras

    losses, weights = losses or tf_keras_losses(config)
    kwargs = {}
    if config.train.clipnorm:
        kwargs["clipnorm"] = float(config.train.clipnorm)
    model.compile(optimizer=tf_keras.optimizers.Adam(float(config.export.qat_learning_rate), **kwargs),
                  loss=losses, loss_weights=weights)
    # A handful of steps (tests, smoke runs) is faster eagerly than tracing the train function.
    model.run_eagerly = int(steps) <= 5
    if not model.run_eagerly:
        _build_before_trace(model, data)
    t0 = time.perf_counter()
    hist = model.fit(data.repeat(), steps_per_epoch=int(steps), epochs=1, verbose=0,
                     callbacks=list(callbacks))
    loss = [float(v) for v in hist.history.get("loss", [])]
    logger.info("%s fine-tuning: %d steps in %.1f s, loss %s", label, steps, time.perf_counter() - t0,
                loss[-1] if loss else "?")
    return loss[-1] if loss else None


def optimize_twin(twin, data, *, config, quantize: bool, prune=None, steps=None,
                  calibration=None, losses=None) -> tuple:
    """Prune and/or quantization-aware fine-tune a tf_keras twin.

    Args:
        twin: the tf_keras model with the trained weights (any batch size;
            fine-tuning uses the data's batches).
        data: ``tf.data.Dataset`` of ``(images, targets)`` batches: the task's
            training pipeline (``fpn_export.calibration.train_data_from_config``).
        config: the resolved ``Config`` (``export.qat_steps``,
            ``export.qat_learning_rate``, ``train`` losses).
        quantize: apply QAT (tfmot ``quantize_model``).
        prune: target sparsity in (0, 1), or None.
        steps: fine-tuning steps (default ``export.qat_steps``), per stage.
        calibration: images (callable returning an iterable, or an iterable) to
            initialize the QAT activation ranges (``init_qat_ranges``); None
            keeps tfmot's [-6, 6] start.
        losses: ``(losses, loss_weights)`` for ``compile`` (default: the task's
            training losses, ``tf_keras_losses``).

    Returns:
        ``(model, info)``: the tf_keras model to convert (QAT model, or the
        pruned and stripped float model) and a dict for the metadata
        (``qat_steps``, ``final_loss``, ``sparsity``).
    """
    import tensorflow_model_optimization as tfmot

    steps = int(config.export.qat_steps if steps is None else steps)
    if steps < 1:
        raise ValueError(f"export.qat_steps must be >= 1, got {steps}")
    info = {"qat_steps": steps}
    freeze_batch_norm(twin)
    model = twin
    if prune is not None:
        sched = prune_schedule(prune, steps)
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=sched)
        info["prune_loss"] = _fit(pruned, data, steps=steps, config=config, label="pruning",
                                  callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], losses=losses)
        model = tfmot.sparsity.keras.strip_pruning(pruned)
        info["sparsity"] = round(weight_sparsity(model), 4)
    if quantize:
        float_model = model
        if prune is not None:
            annotated = tfmot.quantization.keras.quantize_annotate_model(model)
            model = tfmot.quantization.keras.quantize_apply(
                annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
        else:
            model = tfmot.quantization.keras.quantize_model(model)
        if calibration is not None:
            images = calibration() if callable(calibration) else calibration
            info["qat_ranges_initialized"] = init_qat_ranges(model, float_model, images)
        info["qat_loss"] = _fit(model, data, steps=steps, config=config, label="QAT", losses=losses)
    return model, info


def graph_to_convert(model, config, *, via: str = "tf_keras", quantize: bool = False,
                     prune: Optional[float] = None, train_data=None, representative=None) -> tuple:
    """The batch-1 graph an export converts: the tf_keras twin, fine-tuned with tfmot for QAT / pruning.

    With ``via="tf_keras"`` a Keras 3 model is replaced by its tf_keras twin.
    QAT and pruning (``optimize_twin``) need the twin with a free batch
    dimension (``fit``), so it is built unbatched then, and a batched tf_keras
    model is rebuilt unbatched; the representative images initialize the QAT
    activation ranges.

    Args:
        model: the trained Keras 3 model (any task) or its tf_keras twin.
        config: the resolved ``Config`` the model was built from.
        via: ``"tf_keras"`` or ``"keras"`` (convert the Keras 3 model as it is;
            no QAT / pruning then).
        quantize: quantization-aware fine-tuning (``qat-int8``).
        prune: target sparsity, or None.
        train_data: ``tf.data.Dataset`` of the task's training batches, or a
            callable returning one (called only when fine-tuning; default:
            ``fpn_export.calibration.train_data_from_config``).
        representative: calibration images (as ``fpn_export.tflite.convert_keras``), or None.

    Returns:
        ``(model with a batch-1 input, its namespace (keras or tf_keras),
        metadata dict: "via" + the fine-tuning info)``.
    """
    import tf_keras

    from fpn_export.tflite import as_batch1, keras_namespace, representative_dataset

    training = quantize or prune is not None
    what = " and ".join(n for n, on in (("qat-int8", quantize), ("--prune", prune is not None)) if on)
    if training and via != "tf_keras":
        raise ExportError(f"{what}: only on the tf_keras twin (tfmot rejects Keras 3 models)")
    ns = keras_namespace(model)
    if (via == "tf_keras" and ns is not tf_keras) or (training and model.inputs[0].shape[0] is not None):
        from keras_fpn.models.twin import build_twin

        model = build_twin(config.model, model, batch_size=None if training else 1)
        ns = tf_keras
    extra = {"via": "tf_keras" if ns is tf_keras else "keras"}
    if training:
        if train_data is None:
            from fpn_export.calibration import train_data_from_config

            train_data = train_data_from_config(config)
        data = train_data() if callable(train_data) else train_data
        calib = representative_dataset(representative, *config.model.image_size)
        model, train_info = optimize_twin(
            model, data, config=config, quantize=quantize, prune=prune,
            calibration=(lambda: (x[0] for x in calib())) if calib is not None else None)
        extra.update(train_info)
    return as_batch1(model), ns, extra
