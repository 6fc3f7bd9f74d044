"""What a benchmark ran on: CPU model and the ISA flags that decide TFLite/TF kernel paths,
core count, load, memory, library versions. TF-free (used by the edge-only scripts too).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

#: flag prefixes that matter for float/int8 kernels (XNNPACK, oneDNN): AVX2/FMA, AVX-512 (incl.
#: VNNI/BF16/FP16), AVX-VNNI, AMX; arm64: dot product (asimddp), i8mm, bf16, sve
_FLAG_PREFIXES = ("avx2", "avx512", "avx_vnni", "avx_ne_convert", "avx_ifma", "amx", "fma", "f16c",
                  "vnni", "asimd", "i8mm", "bf16", "sve")


def lscpu() -> dict:
    """``lscpu`` as a dict (empty when lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)}


def relevant_flags(flags) -> list:
    """The kernel-relevant subset of a CPU flag list (sorted)."""
    return sorted({f for f in flags if f.startswith(_FLAG_PREFIXES)})


def _cpuinfo_flags() -> list:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


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


def loadavg() -> list | None:
    """1/5/15-minute load averages (None where unavailable)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """The machine, recorded with every result: CPU model, relevant flags, cores, memory, versions."""
    info = lscpu()
    flags = info.get("Flags", "").split() or _cpuinfo_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    model = info.get("Model name")
    if not model:
        from fpn_edge.bench import cpu_name  # /proc/cpuinfo, then platform (TF-free)
        model = cpu_name()
    return {
        "cpu_model": model,
        "architecture": info.get("Architecture", platform.machine()),
        "cpus": info.get("CPU(s)", str(os.cpu_count())),
        "usable_cpus": usable,
        "threads_per_core": info.get("Thread(s) per core"),
        "hypervisor": info.get("Hypervisor vendor"),
        "flags": relevant_flags(flags),
        "has": {"avx2": "avx2" in flags, "avx512": any(f.startswith("avx512") for f in flags),
                "vnni": any("vnni" in f for f in flags), "amx": any(f.startswith("amx") for f in flags)},
        "memory_gib": mem,
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
        "git": _git_commit(),
        "argv": sys.argv,
    }


def machine_line(m: dict) -> str:
    """One line: ``AMD EPYC (x86_64, 2 CPUs; avx2 fma f16c)``."""
    flags = " ".join(m.get("flags") or []) or "no avx2/avx512/vnni/amx"
    return f"{m['cpu_model']} ({m['architecture']}, {m['usable_cpus']} usable CPUs; {flags})"


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
    """Current resident set size (``VmRSS``) in MiB."""
    return vm_status("VmRSS").get("VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) so a later read covers only what follows (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident set size (``VmHWM``) since start or the last ``reset_peak_rss``, MiB."""
    return vm_status("VmHWM").get("VmHWM")
