"""``python -m benchmarks.edge_child bench MODEL ... --out FILE``: ``fpn-edge`` in this process, then
this process's own peak RSS added to the ``--out`` JSON as ``vm_hwm_mb`` (and ``tensorflow_imported``).

Why: ``fpn_edge.bench`` reports ``ru_maxrss``, which Linux carries across fork + exec, so a
benchmark started from a large process (the suite holds TensorFlow and a training model, ~5 GB)
reports the parent's peak. ``VmHWM`` in ``/proc/self/status`` starts afresh at exec.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from fpn_edge.cli import main as edge_main

    rc = edge_main(argv)
    if rc == 0 and "--out" in argv:
        from fpn_edge.machine import vm_status

        out = Path(argv[argv.index("--out") + 1])
        data = json.loads(out.read_text())
        data["vm_hwm_mb"] = vm_status("VmHWM").get("VmHWM")
        data["tensorflow_imported"] = "tensorflow" in sys.modules
        out.write_text(json.dumps(data, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
