"""Training on several devices or machines with ``tf.distribute`` (``train.strategy``).

Strategies (Keras 3 on the TensorFlow backend, ``Model.fit``):

- ``default``: one device, no strategy; exactly the single-device training.
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over ``train.devices`` (default: every
  GPU of the machine), one process.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``, one process per
  machine, each using every GPU it sees; the cluster comes from ``TF_CONFIG``. Keras 3
  does not support it in ``fit`` as shipped (keras-team/keras#20585); the two failures
  and their work-arounds are in ``work_around_keras_multi_worker``.

Not supported (a one-line error, never a hang): ``TPUStrategy``, parameter servers,
``keras.distribution`` (JAX only), ``train.devices`` with ``multi_worker``, a global
batch not divisible by the number of replicas, ``multi_worker`` without ``TF_CONFIG``
or after TensorFlow has started in the process. Workers must see the same number of
GPUs (a TensorFlow requirement).

Decisions (the same math as one device on the same global batch; measured by
``tests/keras_fpn/test_distribute.py``):

- **Batch**: ``train.batch_size`` is the *global* batch; each of R replicas gets
  ``batch_size / R`` consecutive examples of it. The steps per epoch do not change.
- **Learning rate**: not scaled. The same config trains the same way on 1 or 8 GPUs.
  To use more GPUs with a larger batch, raise ``batch_size`` and scale
  ``learning_rate`` linearly with it yourself (keep the warmup).
- **Losses** are normalised over the global batch: the positive-anchor (valid-pixel)
  count and the batch size are summed over the replicas (``keras_fpn.ops.losses``).
- **Gradients** are summed over the replicas before clipping and the float16 finite
  check (``keras_fpn.training.optimizer.GlobalGradients``).
- **BatchNorm is synchronized** (Keras' ``synchronized=True``: mean and variance over
  the global batch) whenever R > 1: detection fits few images per GPU, per-replica
  statistics would differ from one device, and replicas' moving averages would drift
  apart. Costs three small all-reduces per BN layer and step. Keras computes the
  variance as E[x^2] - E[x]^2, which loses precision where a channel's |mean| >> std
  (one device: the centred two-pass variance); measured on the models here the
  statistics agree with one device's to 1e-4 of the variance.
- **Data**: every worker builds the same seeded pipeline; ``tf.data`` splits each
  global batch (``AutoShardPolicy.DATA``: a worker keeps its slice of every batch, so
  batches are the single-device batches; each worker decodes and augments the whole
  stream). Under ``multi_worker`` the pipeline is deterministic (needed for that split).
- **Chief** (task ``chief``, else ``worker`` 0) writes the run directory: config,
  labels, checkpoints, ``history.csv``, TensorBoard, ``best.json`` / ``eval.json``.
  Other workers write their backups and checkpoints into ``RUN/.tmp_<task>`` (deleted
  when they finish), as Keras' multi-worker guide does, and restore from the chief's
  ``RUN/backup``: the run directory must be on a file system every worker sees.
- **Evaluation** (COCO AP, mIoU) runs on the chief only; precise BN runs on every
  replica of every worker at the same epochs (a distributed forward with synchronized
  BN: the statistics of each global batch, as on one device).
- **Mixed precision** (``train.mixed_precision``): Keras' ``mixed_float16`` /
  ``mixed_bfloat16`` policy while the model is built and trained: float16/bfloat16
  compute, float32 variables, float32 model outputs (the builders' output layers) and
  losses; dynamic loss scaling for float16 only. Checkpoints hold float32 weights, so
  export and evaluation are unchanged.
- **QAT fine-tuning** in ``fpn_export`` stays on one device (it runs tf_keras on a
  few hundred steps; no strategy there).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from keras_fpn.config.schema import ConfigError

logger = logging.getLogger("keras_fpn.training")

_CREATED: dict = {}   # one MultiWorkerMirroredStrategy per process (TensorFlow allows no second one)


@dataclass(frozen=True)
class Placement:
    """Where training runs: the strategy, its replica count and this process' role."""
    kind: str                       # train.strategy
    strategy: tf.distribute.Strategy
    replicas: int
    task: str = "chief"             # "worker1"... for the non-chief workers of multi_worker
    chief: bool = True

    @property
    def distributed(self) -> bool:
        return self.kind != "default"

    def scope(self):
        """``strategy.scope()`` (variables become distributed), or nothing for ``default``."""
        return self.strategy.scope() if self.distributed else contextlib.nullcontext()

    def write_dir(self, run: Path) -> Path:
        """Where this process writes checkpoints and backups: ``run`` on the chief, else
        ``run/.tmp_<task>`` (deleted by ``finish``)."""
        return run if self.chief else run / f".tmp_{self.task}"

    def finish(self, run: Path) -> None:
        if not self.chief:
            shutil.rmtree(self.write_dir(run), ignore_errors=True)


def read_tf_config(text: str | None) -> dict:
    """The ``TF_CONFIG`` of a ``multi_worker`` process, checked; ``ConfigError`` naming what is wrong."""
    if not text:
        raise ConfigError("train.strategy multi_worker needs TF_CONFIG (the cluster and this process' task), "
                          'e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                          '"task": {"type": "worker", "index": 0}}')
    try:
        conf = json.loads(text)
        cluster, task = conf["cluster"], conf["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"TF_CONFIG is not JSON with cluster and task.type/index: {text[:200]}") from None
    if kind not in ("chief", "worker") or not 0 <= index < len(cluster.get(kind, ())):
        raise ConfigError(f"TF_CONFIG task {kind}:{index} is not a chief or worker of the cluster {cluster}")
    if set(cluster) - {"chief", "worker"} or len(cluster.get("chief", ())) > 1:
        raise ConfigError(f"TF_CONFIG cluster may hold one chief and workers only (multi_worker), got {cluster}")
    return {**conf, "task": {"type": kind, "index": index}}


def is_chief(tf_config: dict) -> bool:
    """The chief writes the run directory: task ``chief``, or ``worker`` 0 when there is no chief."""
    task = tf_config["task"]
    return task["type"] == "chief" or (task["index"] == 0 and "chief" not in tf_config["cluster"])


def _local_devices(names) -> list[str]:
    """``train.devices`` as TensorFlow device names, or ``ConfigError`` naming a missing one."""
    known = {tf.DeviceSpec.from_string(d.name).to_string().upper(): d.name for d in tf.config.list_logical_devices()}
    out = []
    for name in names:
        spec = tf.DeviceSpec.from_string(name if name.startswith("/") else f"/{name}")
        if spec.to_string().upper() not in known:
            raise ConfigError(f"train.devices: {name} not found; this machine has {', '.join(known.values())}")
        out.append(known[spec.to_string().upper()])
    return out


def placement(train_cfg) -> Placement:
    """The strategy of ``train.strategy``. Call it before any other TensorFlow work of the
    process (``multi_worker`` must start TensorFlow's collective runtime itself)."""
    kind = train_cfg.strategy
    if kind == "default":
        return Placement(kind, tf.distribute.get_strategy(), 1)
    if kind == "mirrored":
        devices = _local_devices(train_cfg.devices) if train_cfg.devices else None
        strategy = tf.distribute.MirroredStrategy(devices)
        result = Placement(kind, strategy, strategy.num_replicas_in_sync)
    else:
        conf = read_tf_config(os.environ.get("TF_CONFIG"))
        strategy = _CREATED.get("multi_worker")
        if strategy is None:
            try:
                strategy = _CREATED["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
            except (RuntimeError, ValueError) as exc:
                raise ConfigError(f"train.strategy multi_worker could not start ({str(exc).splitlines()[0]}); "
                                  f"it must be the first TensorFlow work of a fresh process") from None
        task = conf["task"]
        result = Placement(kind, strategy, strategy.num_replicas_in_sync, task=f"{task['type']}{task['index']}",
                           chief=is_chief(conf))
    if result.replicas == 1:
        logger.warning("train.strategy %s has one replica here (no GPU visible?)", kind)
    if train_cfg.batch_size % result.replicas:
        raise ConfigError(f"train.batch_size {train_cfg.batch_size} (the global batch) must be divisible by the "
                          f"{result.replicas} replicas of train.strategy {kind}")
    return result


@contextlib.contextmanager
def precision_policy(mixed_precision):
    """Keras' global dtype policy ``mixed_<name>`` inside the block (``train.mixed_precision``);
    nothing changes when it is false. The previous policy comes back afterwards."""
    if not mixed_precision:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{mixed_precision}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def synchronize_batchnorm(model) -> int:
    """Make every BatchNormalization of ``model`` (nested models included) compute its batch
    statistics over all replicas (Keras' ``synchronized=True``); returns how many layers.
    Without a strategy it changes nothing (a saved ``.keras`` then records the flag)."""
    count, stack = 0, list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", ()))
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


def distribute_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with ``AutoShardPolicy.DATA``: each worker keeps its slice of every (global) batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _rank1_logs(step, data):
    return {name: tf.reshape(value, [1]) for name, value in step(data).items()}


def work_around_keras_multi_worker(model, element_spec) -> None:
    """Let ``model.fit`` / ``evaluate`` run under ``MultiWorkerMirroredStrategy`` (Keras 3.15).

    Two failures, both in Keras' TensorFlow trainer (keras-team/keras#20585):

    1. ``fit`` first builds the model symbolically from a real batch, which it averages
       over the replicas with ``strategy.reduce("MEAN", batch)``; the collective strategy
       cannot reduce that nested structure ("Attempt to convert a value (PerReplica...)").
       Here the symbolic build uses ``element_spec`` (shapes and dtypes are all it needs).
    2. The step's logs (scalars) are averaged with ``strategy.reduce("MEAN", v, axis=0)``,
       which fails on a scalar ("Invalid reduction dimension 0 for input with 0
       dimensions"). The train and test steps return them with shape ``[1]``; the mean
       over replicas of those is the scalar Keras expects.

    Both replace instance attributes of ``model`` only; nothing changes for other models.
    """
    strategy = model.distribute_strategy

    def symbolic_build(iterator=None, data_batch=None):
        with strategy.scope():
            model._symbolic_build(data_batch=element_spec)

    model._maybe_symbolic_build = symbolic_build
    for name in ("train_step", "test_step"):
        step = getattr(model, name)
        setattr(model, name, lambda data, step=step: _rank1_logs(step, data))


def restore_from_chief(run: Path, place: Placement) -> None:
    """A non-chief worker resumes from the chief's backup (``RUN/backup``, when this worker
    sees it): all workers must restart from the same step."""
    chief_backup, own = run / "backup", place.write_dir(run) / "backup"
    if place.chief or not chief_backup.is_dir():
        return
    shutil.rmtree(own, ignore_errors=True)
    shutil.copytree(chief_backup, own)
