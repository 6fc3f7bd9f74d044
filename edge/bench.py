"""Latency benchmark of a .tflite model with fpn_edge: percentiles, throughput, memory."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from fpn_edge.errors import EdgeError

__all__ = ["benchmark", "peak_rss_mb", "current_rss_mb", "cpu_name", "cpu_int8_flags", "latency_stats"]

#: CPU flags that decide which XNNPACK int8 kernels run (x86 ``/proc/cpuinfo`` "flags", arm64 "Features").
#: Without an int8 dot product (AVX-512 VNNI, AVX-VNNI, arm64 asimddp) XNNPACK's int8 convolutions are
#: not faster than its fp32 ones (benchmarks/results/int8_latency.md).
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
              "asimd", "asimddp", "i8mm", "sve")
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp")


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB, None where unavailable.

    Linux: ``VmHWM`` of ``/proc/self/status`` (``ru_maxrss`` would report a parent's
    peak in a process started by a bigger one, e.g. a bench run from a TF process).
    Elsewhere: ``resource.getrusage``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def current_rss_mb() -> float | None:
    """Current resident set size in MiB (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, AttributeError, IndexError):
        return None


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_int8_flags() -> list:
    """The int8-relevant ``INT8_FLAGS`` this CPU has (Linux ``/proc/cpuinfo``; [] elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in INT8_FLAGS if flag in have]
    except OSError:
        pass
    return []


def latency_stats(ms) -> dict:
    """p50/p90/p99/mean/min/max of a sequence of milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max())}


def benchmark(model_path, *, threads: int | None = None, delegate: str | None = "cpu",
              runs: int = 100, warmup: int = 10, image=None, seed: int = 0,
              progress=None) -> dict:
    """Time ``runs`` inferences after ``warmup`` untimed ones.

    With keras-fpn metadata the whole path is timed per run (letterbox +
    normalize + quantize, ``invoke``, outputs -> detections or, for a
    segmenter, -> the class map of the original image) and
    ``invoke`` alone; without metadata only ``invoke`` on a random input tensor.

    Args:
        model_path: the .tflite file.
        threads: CPU threads (None: interpreter default).
        delegate: delegate spec (see :mod:`fpn_edge.interpreter`).
        runs, warmup: timed and untimed iterations.
        image: image path or ``[h, w, 3]`` uint8 array; default a random 640x480 image.
        seed: seed of the random image.
        progress: optional callable ``(done, total)``.

    Returns:
        A JSON-ready dict: model, model_size_bytes, backend, delegate, threads,
        runs, warmup, input, output_kind, latency_ms {invoke, end_to_end (when
        metadata)} each {p50, p90, p99, mean, min, max}, throughput_fps,
        peak_rss_mb, rss_mb {after_warmup, end}, cpu, cpu_flags (the
        int8-relevant ones), int8_dot_product, machine, python.
    """
    if runs < 1 or warmup < 0:
        raise EdgeError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    from fpn_edge.interpreter import load_interpreter
    from fpn_edge.metadata import read_metadata
    from fpn_edge.runner import open_runner

    path = Path(model_path)
    loaded = load_interpreter(path, threads=threads, delegate=delegate)
    try:
        meta, anchors = read_metadata(path)
    except EdgeError:
        meta, anchors = None, None
    rng = np.random.default_rng(seed)
    det = None
    if meta is not None:
        det = open_runner(loaded, meta, anchors)  # Detector or Segmenter, by meta['task']
        img = det.load(image) if image is not None else rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    interp = loaded.interpreter
    inp = interp.get_input_details()[0]
    if det is None:
        dt = np.dtype(inp["dtype"])
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            x = rng.integers(info.min, info.max + 1, inp["shape"], dtype=dt)
        else:
            x = rng.uniform(-1, 1, inp["shape"]).astype(dt)
        interp.set_tensor(inp["index"], x)

    # preallocated so that the loop itself allocates nothing (flat RSS over long runs)
    invoke_ms, e2e_ms = np.empty(runs), np.empty(runs)
    rss_after_warmup = None
    total = warmup + runs
    for i in range(total):
        if i == warmup:
            rss_after_warmup = current_rss_mb()
        if det is not None:
            t0 = time.perf_counter()
            _, info = det.preprocess(img)
            det.set_input(det._norm)
            t1 = time.perf_counter()
            interp.invoke()
            t2 = time.perf_counter()
            det.postprocess(info)
            t3 = time.perf_counter()
        else:
            t1 = t0 = time.perf_counter()
            interp.invoke()
            t3 = t2 = time.perf_counter()
        if i >= warmup:
            invoke_ms[i - warmup] = (t2 - t1) * 1e3
            e2e_ms[i - warmup] = (t3 - t0) * 1e3
        if progress is not None:
            progress(i + 1, total)

    rss_end = current_rss_mb()  # before the statistics below allocate anything
    latency = {"invoke": latency_stats(invoke_ms)}
    if det is not None:
        latency["end_to_end"] = latency_stats(e2e_ms)
    main = latency.get("end_to_end", latency["invoke"])
    flags = cpu_int8_flags()
    return {
        "model": str(path),
        "model_size_bytes": path.stat().st_size,
        "backend": loaded.backend,
        "delegate": loaded.delegate_description,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "input": {"shape": [int(v) for v in inp["shape"]], "dtype": np.dtype(inp["dtype"]).name},
        "output_kind": meta["output"] if meta else None,
        "latency_ms": latency,
        "throughput_fps": 1000.0 / main["mean"] if main["mean"] > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        "rss_mb": {"after_warmup": rss_after_warmup, "end": rss_end},
        "cpu": cpu_name(),
        "cpu_flags": flags,
        "int8_dot_product": any(f in flags for f in DOT_PRODUCT_FLAGS),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
