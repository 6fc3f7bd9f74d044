"""What a benchmark ran on: the CPU facts of ``fpn_edge.machine`` (model, the ISA flags that decide
TFLite/TF kernel paths, cores, load, memory) plus library versions and the git commit. TF-free (used
by the edge-only scripts too).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from fpn_edge.machine import cpu_flags, cpu_name, lscpu, memory_total_gib, usable_cpus

#: flag prefixes that matter for float/int8 kernels (XNNPACK, oneDNN): AVX2/FMA, AVX-512 (incl.
#: VNNI/BF16/FP16), AVX-VNNI, AMX; arm64: dot product (asimddp), i8mm, bf16, sve
_FLAG_PREFIXES = ("avx2", "avx512", "avx_vnni", "avx_ne_convert", "avx_ifma", "amx", "fma", "f16c",
                  "vnni", "asimd", "i8mm", "bf16", "sve")


def relevant_flags(flags) -> list:
    """The kernel-relevant subset of a CPU flag list (sorted)."""
    return sorted({f for f in flags if f.startswith(_FLAG_PREFIXES)})


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "tf-keras", "ai-edge-litert", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """The machine, recorded with every result: CPU model, relevant flags, cores, memory, versions."""
    info = lscpu()
    flags = cpu_flags()
    return {
        "cpu_model": cpu_name(info),
        "architecture": info.get("Architecture", platform.machine()),
        "cpus": info.get("CPU(s)", str(os.cpu_count())),
        "usable_cpus": usable_cpus(),
        "threads_per_core": info.get("Thread(s) per core"),
        "hypervisor": info.get("Hypervisor vendor"),
        "flags": relevant_flags(flags),
        "has": {"avx2": "avx2" in flags, "avx512": any(f.startswith("avx512") for f in flags),
                "vnni": any("vnni" in f for f in flags), "amx": any(f.startswith("amx") for f in flags)},
        "memory_gib": memory_total_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
        "git": _git_commit(),
        "argv": sys.argv,
    }


def machine_line(m: dict) -> str:
    """One line: ``AMD EPYC (x86_64, 2 CPUs; avx2 fma f16c)``."""
    flags = " ".join(m.get("flags") or []) or "no avx2/avx512/vnni/amx"
    return f"{m['cpu_model']} ({m['architecture']}, {m['usable_cpus']} usable CPUs; {flags})"
