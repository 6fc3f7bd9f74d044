"""What this process runs on: CPU name and flags, cores, load, memory. TF-free, numpy-free.

The one probe of the machine for ``fpn-edge bench`` and the benchmarks. Linux
facts come from ``/proc`` (and ``lscpu`` where a caller asks for it); elsewhere
the functions fall back to :mod:`platform` / :mod:`resource` or return None / [].
Memory values are MiB.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["INT8_FLAGS", "DOT_PRODUCT_FLAGS", "lscpu", "cpu_name", "cpu_flags", "int8_flags",
           "has_int8_dot_product", "usable_cpus", "loadavg", "memory_total_gib", "vm_status",
           "rss_mb", "peak_rss_mb", "reset_peak_rss"]

#: CPU flags that decide which XNNPACK int8 kernels run (x86 ``/proc/cpuinfo`` "flags", arm64 "Features").
#: Without an int8 dot product (AVX-512 VNNI, AVX-VNNI, arm64 asimddp) XNNPACK's int8 convolutions are
#: not faster than its fp32 ones (benchmarks/results/int8_latency.md).
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
              "asimd", "asimddp", "i8mm", "sve")
#: the flags that give an int8 dot-product instruction
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp")


def lscpu() -> dict:
    """``lscpu`` as a dict (``{"Model name": ..., "Flags": ...}``); empty when lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)}


def _cpuinfo_value(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line whose name starts with one of ``keys`` (lower case)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(keys):
                    return line.split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    return None


def cpu_name(lscpu_info: dict | None = None) -> str:
    """The CPU model name.

    ``lscpu_info["Model name"]`` when given (the name of arm64 cores, which
    ``/proc/cpuinfo`` lacks), else ``/proc/cpuinfo`` (model name / hardware /
    cpu model), else ``platform.processor()`` or ``platform.machine()``.
    """
    name = (lscpu_info or {}).get("Model name") or _cpuinfo_value("model name", "hardware", "cpu model")
    return name or platform.processor() or platform.machine()


def cpu_flags() -> list:
    """All CPU flags in ``/proc/cpuinfo`` order (x86 "flags", arm64 "Features"); [] off Linux."""
    return (_cpuinfo_value("flags", "features") or "").split()


def int8_flags(flags=None, names=INT8_FLAGS) -> list:
    """The ``names`` (default :data:`INT8_FLAGS`) this CPU has, in ``names`` order.

    ``flags``: a flag list to pick from (default :func:`cpu_flags`).
    """
    have = set(cpu_flags() if flags is None else flags)
    return [f for f in names if f in have]


def has_int8_dot_product(flags=None) -> bool:
    """Whether the CPU (or the ``flags`` given) has an int8 dot product (:data:`DOT_PRODUCT_FLAGS`)."""
    return bool(int8_flags(flags, DOT_PRODUCT_FLAGS))


def usable_cpus() -> int | None:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def loadavg() -> list | None:
    """1/5/15-minute load averages rounded to 0.01 (None where unavailable)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def memory_total_gib() -> float | None:
    """Physical memory in GiB rounded to 0.1 (Linux ``/proc/meminfo``), None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def vm_status(*keys: str) -> dict:
    """Values from ``/proc/self/status`` in MiB (``VmRSS``, ``VmHWM``, ...); empty off Linux."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0]) / 1024  # kB -> MiB
    except (OSError, ValueError, IndexError):
        pass
    return out


def rss_mb() -> float | None:
    """Current resident set size (``VmRSS``), None off Linux."""
    return vm_status("VmRSS").get("VmRSS")


def peak_rss_mb() -> float | None:
    """Peak resident set size since start or the last :func:`reset_peak_rss`, None where unavailable.

    Linux: ``VmHWM`` (``ru_maxrss`` would report a parent's peak in a process
    started by a bigger one, e.g. a bench run from a TF process). Elsewhere:
    ``resource.getrusage``.
    """
    peak = vm_status("VmHWM").get("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) so a later read covers only what follows (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
