"""Latency benchmark of a .tflite model with fpn_edge: percentiles, throughput, memory."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from fpn_edge.errors import EdgeError
from fpn_edge.machine import cpu_name, has_int8_dot_product, int8_flags, peak_rss_mb, rss_mb

__all__ = ["benchmark", "interleaved_latency", "latency_stats"]


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
    subject = _Subject(model_path, threads=threads, delegate=delegate, image=image, seed=seed)
    # preallocated so that the loop itself allocates nothing (flat RSS over long runs)
    invoke_ms, e2e_ms = np.empty(runs), np.empty(runs)
    rss_after_warmup = None
    total = warmup + runs
    for i in range(total):
        if i == warmup:
            rss_after_warmup = rss_mb()
        invoke, e2e = subject.run_once()
        if i >= warmup:
            invoke_ms[i - warmup], e2e_ms[i - warmup] = invoke, e2e
        if progress is not None:
            progress(i + 1, total)

    rss_end = rss_mb()  # before the statistics below allocate anything
    latency = {"invoke": latency_stats(invoke_ms)}
    if subject.runner is not None:
        latency["end_to_end"] = latency_stats(e2e_ms)
    main = latency.get("end_to_end", latency["invoke"])
    path, loaded, inp, meta = subject.path, subject.loaded, subject.input, subject.meta
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
        "cpu_flags": int8_flags(),
        "int8_dot_product": has_int8_dot_product(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def interleaved_latency(model_paths, *, threads: int | None = None, delegate: str | None = "cpu",
                        runs: int = 50, warmup: int = 5, image=None, seed: int = 0) -> dict:
    """Time several models round-robin: each round runs every model once, in order.

    A load that comes and goes (another process, thermal throttling) then hits every
    model alike, where timing them one after the other gives the first ones and the
    last ones different machines. Same per-run path as :func:`benchmark`.

    Returns:
        ``{str(path): {"invoke": stats, "end_to_end": stats (with metadata)}}``
        (``latency_stats`` of the ``runs`` timed rounds).
    """
    if runs < 1 or warmup < 0:
        raise EdgeError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    subjects = [_Subject(p, threads=threads, delegate=delegate, image=image, seed=seed) for p in model_paths]
    times = np.empty((len(subjects), runs, 2))
    for i in range(warmup + runs):
        for k, subject in enumerate(subjects):
            timed = subject.run_once()
            if i >= warmup:
                times[k, i - warmup] = timed
    out = {}
    for k, subject in enumerate(subjects):
        latency = {"invoke": latency_stats(times[k, :, 0])}
        if subject.runner is not None:
            latency["end_to_end"] = latency_stats(times[k, :, 1])
        out[str(subject.path)] = latency
    return out


class _Subject:
    """One model ready to be timed: its interpreter, its runner (with keras-fpn metadata) and input.

    With metadata a run is the whole path (preprocess the image, ``invoke``, outputs ->
    detections or the class map); without, ``invoke`` on a random input tensor.
    """

    def __init__(self, model_path, *, threads, delegate, image, seed):
        from fpn_edge.interpreter import load_interpreter
        from fpn_edge.metadata import read_metadata
        from fpn_edge.runner import open_runner

        self.path = Path(model_path)
        self.loaded = load_interpreter(self.path, threads=threads, delegate=delegate)
        try:
            self.meta, anchors = read_metadata(self.path)
        except EdgeError:
            self.meta, anchors = None, None
        rng = np.random.default_rng(seed)
        self.interp = self.loaded.interpreter
        self.input = self.interp.get_input_details()[0]
        self.runner = None
        if self.meta is not None:
            self.runner = open_runner(self.loaded, self.meta, anchors)  # Detector or Segmenter, by meta['task']
            self.image = (self.runner.load(image) if image is not None
                          else rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        else:
            dt = np.dtype(self.input["dtype"])
            if np.issubdtype(dt, np.integer):
                info = np.iinfo(dt)
                x = rng.integers(info.min, info.max + 1, self.input["shape"], dtype=dt)
            else:
                x = rng.uniform(-1, 1, self.input["shape"]).astype(dt)
            self.raw_input = x

    def run_once(self) -> tuple:
        """One run: ``(invoke ms, end-to-end ms)`` (equal without metadata)."""
        if self.runner is None:  # another interleaved model may have run in between: set the input again
            self.interp.set_tensor(self.input["index"], self.raw_input)
            t1 = t0 = time.perf_counter()
            self.interp.invoke()
            t3 = t2 = time.perf_counter()
        else:
            t0 = time.perf_counter()
            _, info = self.runner.preprocess(self.image)
            self.runner.set_input(self.runner._norm)
            t1 = time.perf_counter()
            self.interp.invoke()
            t2 = time.perf_counter()
            self.runner.postprocess(info)
            t3 = time.perf_counter()
        return (t2 - t1) * 1e3, (t3 - t0) * 1e3
