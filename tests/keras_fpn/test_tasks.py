"""The task registry: every task implements the whole interface, and no flow branches on the task name."""
import inspect
import re
from pathlib import Path

import pytest

from keras_fpn.tasks import TASK_NAMES, get_task
from keras_fpn.tasks.base import Task

ROOT = Path(__file__).resolve().parents[2]


def test_registry_names_and_unknown_task():
    assert TASK_NAMES == ("detection", "segmentation")
    with pytest.raises(ValueError, match=r"unknown model.task 'panoptic' \(known: detection, segmentation\)"):
        get_task("panoptic")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_implements_the_interface(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
    required = ["build_model", "pipeline", "losses", "epoch_evaluator", "evaluate", "format_metrics", "summary",
                "export"]
    for method in required + (["predict"] if task.can_predict else []):
        assert getattr(type(task), method) is not getattr(Task, method), f"{name} does not implement {method}"
    assert type(task).report is not Task.report
    assert task.checkpoint_metrics[-1] == "val_loss" and len(task.checkpoint_metrics) == 2
    if not task.can_predict:
        assert "fpn-edge" in task.predict_hint


def test_task_reports_and_edge_runners_line_up():
    from fpn_edge.metadata import TASK_SCHEMAS
    from fpn_edge.runner import RUNNERS

    assert set(TASK_NAMES) == set(RUNNERS) == set(TASK_SCHEMAS)
    for name in TASK_NAMES:
        report = get_task(name).report
        assert report.task == name and report.metric in report.metrics


def test_no_flow_branches_on_the_task_name():
    """Adding a task adds modules and registry entries; it must not add an `if task == ...` elsewhere."""
    branch = re.compile(r"\btask\s*(==|!=)\s*|\btask\s+(not\s+)?in\s+\(")
    hits = []
    for package in ("keras_fpn", "export", "edge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if branch.search(code) and '"""' not in code and "``" not in code:
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


def test_task_modules_import_without_tensorflow():
    """The config validates through its task: the task modules must not load TensorFlow at import."""
    import subprocess
    import sys

    code = ("import sys; import keras_fpn.tasks.detection, keras_fpn.tasks.segmentation, keras_fpn.config; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", inspect.cleandoc(out.stderr)[-500:]
