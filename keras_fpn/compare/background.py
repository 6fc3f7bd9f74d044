"""One export in a second process while ``compare_run`` measures the others.

Most of an export is single-threaded Python (cloning the model for tfmot, tracing,
saving the SavedModel, conversion), so on a 2-core machine a second process nearly
doubles the throughput: on the ``--fast`` demo the qat-int8 export (45 s) ran beside
the float evaluation and the fp32 and int8 exports (33 s) in 46 s instead of 78 s.

The process is ``python -m fpn_export.cli export RUN --mode MODE`` (the same code and
config as an in-process export); its output goes to ``export_<mode>.log`` in the
report folder, and a failure raises with the log's last line.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pick_background(missing) -> str | None:
    """The mode to export in the background: the slowest of ``missing`` (by the mode table's
    ``cost``, ``fpn_export.modes.MODES``) when there are two or more."""
    from fpn_export.modes import MODES

    missing = list(missing)
    if len(missing) < 2:
        return None
    return max(missing, key=lambda m: MODES[m].cost if m in MODES else 0)


class BackgroundExport:
    """``keras-fpn export RUN --mode MODE`` in a child process (``start`` .. ``wait`` / ``stop``)."""

    def __init__(self, run_dir, mode: str, log_path, options: dict | None = None):
        self.mode = mode
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in wait / stop)
        # options: export_model keywords as CLI flags (max_ap_drop=1.0 -> --max-ap-drop 1.0)
        flags = [a for k, v in (options or {}).items() for a in (f"--{k.replace('_', '-')}", str(v))]
        self._proc = subprocess.Popen([sys.executable, "-m", "fpn_export.cli", "export", str(run_dir),
                                       "--mode", mode, *flags], stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        """Block until the export ends; raise ``ExportError`` naming the mode and log if it failed."""
        from fpn_export.errors import ExportError

        rc = self._proc.wait()
        self._log.close()
        if rc != 0:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else f"exit status {rc}"
            raise ExportError(f"{self.mode} export (background, log {self.log_path}) failed: {last}")

    def stop(self) -> None:
        """End the child if it still runs (the compare failed or was interrupted)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
