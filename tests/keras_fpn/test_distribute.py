"""tf.distribute training on CPU (``keras_fpn.training.distribute``): config checks, the losses and one
training step under ``mirrored`` against one device, float16 mixed precision against float32, and a
2-worker ``multi_worker`` run on localhost that is killed and resumed.

Two logical CPU devices (mirrored) must be configured before TensorFlow starts, and a
``MultiWorkerMirroredStrategy`` needs a process of its own: those tests run
``tests/distribute_child.py`` or ``keras-fpn train`` in subprocesses.

Tolerances (measured values on the 2-core AMD EPYC in the comments):

- losses alone (focal, box, segmentation; replicas with 4 vs 2 positives / different valid
  pixels): the value within 1e-6 relative, gradients within 1e-7 absolute (measured: equal,
  grads 3e-9);
- one training step, mirrored vs default on the same global batch (SGD, clipnorm 0.1 so that
  clipping acts): loss within 1e-5 relative, weights ``|w_m - w_d| / |w_d - w_0| < 1e-3`` (measured
  2e-7 relative loss, 6e-5 weights; the same step with per-replica positive counts, with Keras'
  clip-before-sum or without synchronized BN measured 0.135, 0.30 and 1.35); BN statistics after
  precise BN within 5e-3 of the channel's variance (measured 2e-5; 1e-3 on 128 px images:
  synchronized BN computes E[x^2] - E[x]^2, one device the centred variance);
- float16 mixed precision, 3 steps under mirrored: each loss within 1e-3 relative of float32
  (measured 4e-5); the fp32 TFLite export of a float16-trained checkpoint within 1e-4 of the
  float32 Keras model (measured 3e-6 on logits up to 4.7).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_fpn.cli import main
from keras_fpn.config import ConfigError, load_config
from keras_fpn.config.schema import TrainConfig
from keras_fpn.training.checkpoints import BACKUP_METADATA, read_backup

CHILD = Path(__file__).resolve().parents[1] / "distribute_child.py"

#: 64 px MobileNetV3-Small (minimalistic, random init): the fewest layers to trace of the backbones
TINY = """
data: {train: data/train.json, val: data/val.json}
train:
  epochs: 3
  steps_per_epoch: 4
  batch_size: 4
  optimizer: sgd
  learning_rate: 0.01
  warmup_epochs: 0
  clipnorm: 0.1
  eval_every: 0
  precise_bn_batches: 1
model:
  preset: retinanet_mobilenetv2_fpn
  image_size: [64, 64]
  backbone: {name: mobilenetv3small_minimalistic, alpha: 0.75, weights: null}
  neck: {max_level: 5, width: 16}
  head: {width: 16, depth: 1}
  anchors: {scales_per_octave: 1, aspect_ratios: [1.0]}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny config beside 24 + 4 synthetic 64 px images (COCO JSON), shared by the module."""
    from keras_fpn.data.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("distribute")
    (root / "tiny.yaml").write_text(TINY)
    generate_synthetic_coco(root / "data", num_train=24, num_val=4, image_size=64, seed=1, masks=False)
    return root


def _env(**extra):
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), root) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _child(*args, timeout=420, **env):
    done = subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, text=True,
                          env=_env(**env), timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


# ------------------------------------------------------------------ config and errors (no TensorFlow work)

def test_config_values_and_checks(setup):
    assert TrainConfig(mixed_precision=True).mixed_precision == "float16"
    assert TrainConfig(mixed_precision="bfloat16").mixed_precision == "bfloat16"
    assert TrainConfig().mixed_precision is False and TrainConfig().strategy == "default"
    cfg = load_config(setup / "tiny.yaml", ["train.strategy=mirrored", "train.devices=[/gpu:0, /gpu:1]"])
    assert cfg.train.devices == ("/gpu:0", "/gpu:1")
    for overrides, message in [
        (["train.strategy=tpu"], "train.strategy must be one of default, mirrored, multi_worker"),
        (["train.devices=[/gpu:0]"], "train.devices applies to train.strategy mirrored"),
        (["train.strategy=mirrored", "train.devices=[/gpu:0, /gpu:1, /gpu:2]"], "divisible by the 3"),
        (["train.mixed_precision=fp16"], "train.mixed_precision must be false, true (= float16)"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(setup / "tiny.yaml", overrides)


def test_unsupported_choices_are_one_line_errors(setup, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    cases = [
        (["--strategy", "multi_worker"], "train.strategy multi_worker needs TF_CONFIG"),
        (["--strategy", "mirrored", "--set", "train.devices=[/gpu:7]"], "train.devices: /gpu:7 not found"),
    ]
    for extra, message in cases:
        assert main(["train", str(setup / "tiny.yaml"), "--run-dir", str(setup / "never"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}')
    assert main(["train", str(setup / "tiny.yaml"), "--run-dir", str(setup / "never"), "--strategy", "multi_worker"]) == 2
    assert "is not a chief or worker" in capsys.readouterr().err
    assert not (setup / "never").exists()


def test_multi_worker_after_tensorflow_started_is_an_error(tmp_path):
    (port,) = _free_ports(1)
    one = json.dumps({"cluster": {"worker": [f"localhost:{port}"]}, "task": {"type": "worker", "index": 0}})
    _child("late", tmp_path / "late.json", timeout=120, TF_CONFIG=one)
    error = json.loads((tmp_path / "late.json").read_text())["error"]
    assert "multi_worker could not start (Collective ops must be configured at program startup)" in error


def test_tf_config_and_chief():
    from keras_fpn.training.distribute import is_chief, read_tf_config

    two = {"worker": ["a:1", "b:2"]}
    conf = read_tf_config(json.dumps({"cluster": two, "task": {"type": "worker", "index": 1}}))
    assert not is_chief(conf)
    assert is_chief(read_tf_config(json.dumps({"cluster": two, "task": {"type": "worker", "index": 0}})))
    with_chief = {"chief": ["c:0"], **two}
    assert not is_chief(read_tf_config(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})))
    assert is_chief(read_tf_config(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}})))
    for bad in ("not json", '{"cluster": {}}', json.dumps({"cluster": two, "task": {"type": "worker", "index": 2}})):
        with pytest.raises(ConfigError):
            read_tf_config(bad)


# ------------------------------------------------------------------ the math under mirrored (2 logical CPUs)

def test_losses_are_normalised_over_the_global_batch(tmp_path):
    _child("losses", tmp_path / "losses.json")
    result = json.loads((tmp_path / "losses.json").read_text())
    for name, r in result.items():
        assert r["mirrored"] == pytest.approx(r["single"], rel=1e-6), name
        assert r["max_grad_diff"] <= 1e-7 and r["max_grad"] > 1e-4, (name, r)


def test_mirrored_step_equals_default_step_and_float16_is_close(setup, tmp_path):
    _child("parity", setup / "tiny.yaml", tmp_path / "parity.json")
    r = json.loads((tmp_path / "parity.json").read_text())
    a, b, half = r["losses"]["default"], r["losses"]["mirrored"], r["losses"]["mirrored_float16"]
    assert r["same_init"] and r["positives_per_replica"][0] != r["positives_per_replica"][1]
    assert b == pytest.approx(a, rel=1e-5)
    assert r["weight_diff_norm"] < 1e-3 * r["update_norm"], r
    assert r["moving_rel_diff"] < 1e-4, r
    assert r["precise_bn_rel_diff"] < 5e-3 < 1.0 < r["precise_bn_rel_change"], r
    assert half == pytest.approx(a, rel=1e-3)


# ------------------------------------------------------------------ 2 workers on localhost

def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(setup, run):
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    cmd = [sys.executable, str(CHILD), "cli", "train", str(setup / "tiny.yaml"), "--run-dir", str(run),
           "--strategy", "multi_worker", "--set", "train.mixed_precision=float16", "--quiet"]
    return [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})))
            for i in range(2)]


def _rows(run):
    path = run / "history.csv"
    return path.read_text().splitlines()[1:] if path.is_file() else []


def _weights(path):
    import h5py
    import numpy as np

    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: out.setdefault(name, np.array(obj)) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_two_workers_train_chief_writes_and_a_killed_worker_resumes(setup):
    """Two localhost workers (float16 mixed precision: loss scaling under multi_worker too) train 3
    epochs of 4 steps; worker 1 is killed after the chief's first epoch, both are restarted."""
    run = setup / "mw_run"
    chief, worker = _start_workers(setup, run)
    deadline = time.time() + 300
    meta = [run / "backup" / BACKUP_METADATA, run / ".tmp_worker1" / "backup" / BACKUP_METADATA]
    while time.time() < deadline and chief.poll() is None and not (_rows(run) and all(p.is_file() for p in meta)):
        time.sleep(0.2)  # both workers backed up their first epoch (the backup is the epoch end's last write)
    assert chief.poll() is None and worker.poll() is None, (chief.stdout.read() + worker.stdout.read())[-3000:]
    worker.send_signal(signal.SIGKILL)   # a worker dies: the chief must stop by itself, not hang
    worker.wait()
    chief.wait(timeout=120)
    assert chief.returncode != 0
    done = len(_rows(run))
    assert 1 <= done < 3
    # The chief writes the run directory; the other worker writes its copies into RUN/.tmp_worker1.
    tmp = run / ".tmp_worker1"
    assert (run / "backup").is_dir() and (tmp / "backup").is_dir() and (tmp / "last.weights.h5").is_file()
    assert not any((tmp / name).exists() for name in ("history.csv", "config.yaml", "logs", "best.json"))
    chief_meta, worker_meta = (read_backup(folder) for folder in (run / "backup", tmp / "backup"))
    if worker_meta["epoch"] == chief_meta["epoch"]:
        a, b = _weights(run / "backup" / chief_meta["weights"]), _weights(tmp / "backup" / worker_meta["weights"])
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)   # the replicas agree bit for bit

    procs = _start_workers(setup, run)     # rerun both commands: training resumes
    outs = [p.communicate(timeout=420)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert f"Epoch {done + 1}/3" in out and f"Epoch {done}/3" not in out, out[-3000:]
    rows = [r.split(",") for r in _rows(run)]
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert [r[0] for r in rows] == ["0", "1", "2"]
    steps = [float(r[header.index("step")]) for r in rows]
    # the step counter survived the restart: the resumed epochs added their 4 steps each to the restored
    # count (float16 loss scaling skips the first overflowing steps without counting them: <= 12 in all)
    assert steps[-1] - steps[done - 1] == 4 * (3 - done) and 0 < steps[-1] <= 12, steps
    assert "epoch 3: val AP" in outs[0] and "epoch 3: val AP" not in outs[1]   # COCO evaluation on the chief only
    assert {p.name for p in run.iterdir()} == {"config.yaml", "labels.txt", "history.csv", "logs", "state.json",
                                               "last.weights.h5", "last.keras", "best.weights.h5", "best.keras",
                                               "best.json", "eval.json", "fingerprint.json"}


# ------------------------------------------------------------------ mixed precision -> float32 export

def test_mixed_precision_checkpoint_exports_float32_tflite_parity(setup, tmp_path):
    """A float16-trained checkpoint holds float32 weights: the fp32 export equals the float32 Keras model."""
    import numpy as np

    from fpn_export.convert import export_model
    from keras_fpn.rundir import open_run
    from keras_fpn.training.train import train
    from export_helpers import run_tflite

    run = setup / "mw_run"   # the float16 run of the 2-worker test; trained here when that test did not run
    if not (run / "best.weights.h5").is_file():
        run = tmp_path / "run"
        train(load_config(setup / "tiny.yaml", ["train.mixed_precision=float16", "train.epochs=1"]), run, verbose=0)
    assert '"mixed_float16"' in _keras_config(run / "best.keras")   # trained in float16
    path = export_model(run, "fp32", raw=True, out=tmp_path / "fp32.tflite")
    model = open_run(run).build_model(batch_size=1)                # float32 Keras model of the checkpoint
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    ref, got = model(x, training=False), run_tflite(path, x)
    for name in ("box_deltas", "class_logits"):
        assert np.abs(got[name] - np.asarray(ref[name])).max() <= 1e-4, name


def _keras_config(path) -> str:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return z.read("config.json").decode()
