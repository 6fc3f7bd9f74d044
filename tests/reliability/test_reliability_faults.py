"""Faults during training lose nothing: SIGKILL at several points, a full disk in every writer.

A 3-epoch training (1 step of 2 images per epoch, evaluation and precise BN every epoch) is
interrupted again and again in one run directory; after every interruption the completed epochs
are still recorded, every checkpoint present reads back and loads, and the backup never claims an
epoch whose checkpoints are not on disk. The last run finishes: the history holds epochs 0, 1, 2
once each, the optimizer made exactly 3 steps, and nothing temporary is left.

The kills run ``tests/reliability/fault_child.py`` in a subprocess (SIGKILL ends it); the full-disk
faults run in this process. Both train a stand-in network (``fault_child.tiny_network``: the real
``train`` with its data pipeline, losses, evaluation, checkpoints and backup, around a network that
traces in a second), so that 16 interruptions fit in the suite's time; the real FPN is killed and
resumed in ``tests/keras_fpn/test_training.py``.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

import fault_child
from keras_fpn.cli import main as fpn_main
from reliability_helpers import run_command

HERE = Path(__file__).resolve().parent
EPOCHS = 3

#: (fault, what the error line names): a full disk in every file train writes, in the order they come
#: (TensorBoard's event files are left out: TensorFlow's own writer, not ours)
ENOSPC = [
    ("enospc:commit:config.yaml:1", "config.yaml"),
    ("enospc:commit:labels.txt:1", "labels.txt"),
    ("enospc:commit:fingerprint.json:1", "fingerprint.json"),
    ("enospc:h5:last.weights.h5:1", "last.weights.h5"),        # the HDF5 write itself, epoch 1
    ("enospc:h5:last.keras:1", "last.keras"),
    ("enospc:commit:best.weights.h5:1", "best.weights.h5"),    # the copy of last.* as best.*
    ("enospc:commit:best.keras:1", "best.keras"),
    ("enospc:commit:best.json:1", "best.json"),
    ("enospc:commit:eval.json:1", "eval.json"),
    ("enospc:csv:history.csv:1", "history.csv"),               # half a row written first
    ("enospc:h5:state-*.weights.h5:1", ".weights.h5"),         # the resume backup's weights
    ("enospc:replace:training_metadata.json:2", "training_metadata.json"),  # epoch 2's backup commit
    ("enospc:commit:state.json:1", "state.json"),              # after the last epoch, before the backup goes
]
#: (fault, epochs complete before it): SIGKILL in the middle of a step, while writing a checkpoint,
#: while committing the backup
KILLS = [
    ("kill:batch:-:2", 1),                                 # epoch 2's step done in memory only
    ("kill:commit:last.keras:1", 1),                       # epoch 2: last.weights.h5 written, last.keras half
    ("kill:commit:training_metadata.json:1", 1),           # epoch 2: checkpoints and history written, backup not
]


def _config(ws, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faults.yaml"
    text = (ws["cfg"].read_text().replace("../data/", f"{ws['data']}/")
            .replace("epochs: 1", f"epochs: {EPOCHS}"))
    path.write_text(text)
    return path


def _history(run: Path) -> list:
    if not (run / "history.csv").is_file():
        return []
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _iterations(path: Path) -> int:
    """The optimizer step counter stored in a weights file (what the LR schedule reads)."""
    if path.name.endswith(".keras"):
        import io
        import zipfile

        with zipfile.ZipFile(path) as zf:
            return _iterations_h5(io.BytesIO(zf.read("model.weights.h5")))
    return _iterations_h5(path)


def _iterations_h5(source) -> int:
    with h5py.File(source, "r") as f:
        return int(f["optimizer/vars/0"][()])


def _completed(run: Path) -> int:
    """Epochs the run directory records as finished: the backup's (at an epoch end) or all of them."""
    state = run / "state.json"
    if state.is_file() and json.loads(state.read_text()).get("phase_done") == "full":
        return EPOCHS
    meta = run / "backup" / "training_metadata.json"  # "epoch": the epochs finished when it was taken
    return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else 0


def _check(run: Path, model, completed_before: int, spec: str = "") -> int:
    """The invariants after an interruption; returns the epochs recorded as finished."""
    from keras_fpn.training.checkpoints import load_checkpoint

    completed = _completed(run)
    assert completed >= completed_before, f"{spec}: finished epochs lost: {completed_before} -> {completed}"
    for name in ("last.weights.h5", "last.keras", "best.weights.h5", "best.keras"):
        if (run / name).is_file():
            load_checkpoint(model, run / name)  # reads back whole and fits the network
    if completed:  # the backup never runs ahead of the checkpoints it stands for
        for name in ("last.weights.h5", "last.keras"):
            assert _iterations(run / name) >= completed, (spec, name, _iterations(run / name), completed)
    rows = [r for r in _history(run) if r.get("epoch", "").isdigit()]
    assert [int(r["epoch"]) for r in rows][:completed] == list(range(completed)), (spec, rows)
    return completed


@pytest.fixture
def stub(monkeypatch):
    """Train ``fault_child.tiny_network`` in this process; return a builder of that network."""
    fault_child.tiny_network(monkeypatch.setattr)
    from keras_fpn.training import train

    def build(run):
        from keras_fpn.rundir import open_run
        from keras_fpn.training.optimizer import build_optimizer

        cfg = open_run(run).config
        model = train.build_model(cfg.model)
        model.compile(optimizer=build_optimizer(cfg, 1), loss="mse")
        model.optimizer.build(model.trainable_variables)
        return model

    return build


def _finish(cfg, run, stub_build, capsys, caplog):
    r = run_command(fpn_main, ["train", cfg, "--run-dir", run, "--quiet"], capsys, caplog)
    assert r.code == 0, r.err
    rows = _history(run)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(EPOCHS)]
    assert float(rows[-1]["step"]) == EPOCHS
    model = stub_build(run)
    _check(run, model, EPOCHS, "finished")
    assert _iterations(run / "last.weights.h5") == EPOCHS
    assert not (run / "backup").exists()
    assert not list(run.rglob(".tmp-*"))
    assert json.loads((run / "state.json").read_text()) == {"phase_done": "full"}


def test_full_disk_in_every_writer_loses_nothing(ws, tmp_path, stub, monkeypatch, capsys, caplog):
    run = tmp_path / "run"
    cfg = _config(ws, tmp_path)
    completed, model = 0, None
    for spec, name in ENOSPC:
        with monkeypatch.context() as m:
            fault_child.install(spec, m.setattr)
            r = run_command(fpn_main, ["train", cfg, "--run-dir", run, "--quiet"], capsys, caplog)
        assert r.code == 2, (spec, r.code, r.err[-2000:])
        assert len(r.lines) == 1 and "Traceback" not in r.err, (spec, r.err)
        assert name in r.lines[0] and "No space left on device" in r.lines[0], (spec, r.lines[0])
        if (run / "config.yaml").is_file() and (run / "labels.txt").is_file():
            model = model or stub(run)
            completed = _check(run, model, completed, spec)
    assert completed == 3  # the state.json fault came after the last epoch: its backup still says so
    # a resume from a backup taken at an epoch end writes last.* again when they are gone
    (run / "last.weights.h5").unlink()
    (run / "last.keras").unlink()
    _finish(cfg, run, stub, capsys, caplog)


def test_sigkill_at_every_point_loses_nothing(ws, tmp_path, stub, capsys, caplog):
    run = tmp_path / "run"
    cfg = _config(ws, tmp_path)
    env = {**os.environ, "FAULT_TINY_NETWORK": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    completed, model = 0, None
    for spec, finished in KILLS:
        proc = subprocess.run([sys.executable, str(HERE / "fault_child.py"), spec, "--", "train", str(cfg),
                               "--run-dir", str(run), "--quiet"], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == -signal.SIGKILL, (spec, proc.returncode, proc.stderr[-3000:])
        model = model or stub(run)
        completed = _check(run, model, completed, spec)
        assert completed == finished, (spec, completed)
    assert list(run.rglob(".tmp-*")), "a kill while writing leaves the writer's temporary file"
    _finish(cfg, run, stub, capsys, caplog)
