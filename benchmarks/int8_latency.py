"""int8 vs fp32 latency of an exported detector on this CPU, and where the difference comes from.

    source .venv/bin/activate; export KERAS_FPN_DATA=/work/shared/data
    python benchmarks/int8_latency.py /tmp/demo/rund --work /tmp/int8lat \
        --json benchmarks/results/int8_latency.json --md /tmp/int8lat/tables.md

Exports (with the current ``fpn_export`` code, into ``--work``; ``--reuse`` keeps
files already there) the run's detector as fp32 and int8, each with the
post-process op and ``--raw``, plus a raw int8 export with int8 instead of
uint8 input, then measures:

1. **per op** (1 thread, XNNPACK on and off): every operator of the raw fp32
   and raw int8 graphs cut out as a one-op model (its constant inputs kept)
   and timed alone, the fp32 and int8 op of the same layer interleaved; which
   ops XNNPACK takes (a DELEGATE node in the one-op interpreter) and which
   fall back to the builtin kernels;
2. **whole invoke** (1 and 2 threads, one validation image, the models loaded
   as fpn_edge loads them): all models interleaved round by round; the
   int8/fp32 ratio is the median of per-round ratios;
3. **end to end through fpn_edge** (``Detector``, 1 and 2 threads, real
   validation images): letterbox + normalize, input quantization, invoke,
   outputs -> detections, timed per phase; the quantization also with the old
   float64 ``fpn_edge.preprocess.quantize`` (the "before" row);
4. **single convolutions** (1 thread): one Conv2D layer at the shapes of this
   network (few input channels) and wider ones, fp32 vs int8, to show what the
   int8 kernels of this CPU gain or lose per layer shape.

Timings on a shared machine: 1-thread numbers are also given as the calling
thread's CPU time (``time.thread_time``: XNNPACK runs a 1-thread interpreter on
the caller's thread), which other processes disturb much less than wall time;
2-thread numbers are wall time only. Compare ratios from one run, never across
machines. The CPU model and its int8-relevant ISA flags are recorded.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from fpn_edge.machine import cpu_flags, cpu_name, has_int8_dot_product, int8_flags, loadavg, lscpu

#: the flags this report lists: ``fpn_edge.machine.INT8_FLAGS`` plus f16c (fp16 conversion) and avx512vl
#: (which XNNPACK's AVX-512 kernels need besides avx512f/avx512bw)
REPORT_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                "amx_int8", "asimd", "asimddp", "i8mm", "sve")


# --------------------------------------------------------------------------- machine

def machine() -> dict:
    """CPU model, int8-relevant flags, core count, load (``fpn_edge.machine``), library versions."""
    from importlib import metadata

    info = lscpu()
    flags = cpu_flags()
    versions = {}
    for dist in ("ai-edge-litert", "tensorflow", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"model_name": cpu_name(info),
            "vendor": info.get("Vendor ID"), "cpu_family": info.get("CPU family"), "model": info.get("Model"),
            "hypervisor": info.get("Hypervisor vendor"), "cpus": os.cpu_count(),
            "int8_flags": int8_flags(flags, REPORT_FLAGS),
            "int8_dot_product": has_int8_dot_product(flags),
            "all_flags": flags, "loadavg_start": loadavg(), "machine": platform.machine(),
            "versions": versions}


# --------------------------------------------------------------------------- models

def ensure_models(run_dir: str, work: Path, reuse: bool) -> dict:
    """Export the variants into ``work`` (fp32 / int8, post-process / raw, raw int8 with int8 input)."""
    from fpn_export.convert import export_model
    from keras_fpn.rundir import open_run

    run = open_run(run_dir)
    cfg_int8io = dataclasses.replace(run.config, export=dataclasses.replace(run.config.export, int8_io="int8"))
    variants = {"fp32": ("fp32", False, None), "int8": ("int8", False, None),
                "fp32_raw": ("fp32", True, None), "int8_raw": ("int8", True, None),
                "int8_raw_int8io": ("int8", True, cfg_int8io)}
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (mode, raw, cfg) in variants.items():
        out = work / f"model_{name}.tflite"
        if not (reuse and out.is_file()):
            t0 = time.perf_counter()
            export_model(run_dir, mode, raw=raw, out=out, config=cfg)
            print(f"exported {out} ({time.perf_counter() - t0:.0f} s)", flush=True)
        paths[name] = out
    return paths


def _interpreter(path_or_bytes, threads: int, xnnpack: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    kw = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": str(path_or_bytes)}
    it = Interpreter(num_threads=threads, experimental_op_resolver_type=kind, **kw)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        dt = np.dtype(d["dtype"])
        if dt == np.int32:
            continue
        if np.issubdtype(dt, np.integer):
            x = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, d["shape"], dtype=dt, endpoint=True)
        else:
            x = rng.normal(0.0, 1.0, d["shape"]).astype(dt)
        it.set_tensor(d["index"], x)
    return it


# --------------------------------------------------------------------------- 1. per op

def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _graph(path):
    schema = _schema()
    data = Path(path).read_bytes()
    return schema, schema.ModelT.InitFromPackedBuf(bytearray(data), 0)


def _op_name(schema, m, op) -> str:
    code = m.operatorCodes[op.opcodeIndex]
    b = max(code.builtinCode, code.deprecatedBuiltinCode)
    if b == schema.BuiltinOperator.CUSTOM:
        c = code.customCode
        return c.decode() if isinstance(c, bytes) else str(c)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return names[b]


def _const(m, t) -> bool:
    return 0 < t.buffer < len(m.buffers) and m.buffers[t.buffer].data is not None and len(m.buffers[t.buffer].data) > 0


def single_op_model(schema, m, k: int) -> bytes:
    """Operator ``k`` of subgraph 0 as a model of its own (constants kept, other inputs become inputs)."""
    import flatbuffers

    sg = m.subgraphs[0]
    op = sg.operators[k]
    nm = schema.ModelT()
    nm.version, nm.operatorCodes, nm.buffers = m.version, m.operatorCodes, [schema.BufferT()]
    nsg = schema.SubGraphT()
    nsg.tensors, remap = [], {}

    def tensor(i: int) -> int:
        if i < 0 or i in remap:
            return remap.get(i, i)
        t = sg.tensors[i]
        nt = schema.TensorT()
        nt.shape, nt.shapeSignature, nt.type, nt.name, nt.quantization = (t.shape, t.shapeSignature, t.type,
                                                                          t.name, t.quantization)
        nt.buffer = 0
        if _const(m, t):
            buf = schema.BufferT()
            buf.data = m.buffers[t.buffer].data
            nm.buffers.append(buf)
            nt.buffer = len(nm.buffers) - 1
        nsg.tensors.append(nt)
        remap[i] = len(nsg.tensors) - 1
        return remap[i]

    nop = schema.OperatorT()
    for f in ("opcodeIndex", "builtinOptionsType", "builtinOptions", "customOptions", "customOptionsFormat"):
        setattr(nop, f, getattr(op, f))
    nop.inputs = [tensor(int(i)) for i in op.inputs]
    nop.outputs = [tensor(int(i)) for i in op.outputs]
    nsg.inputs = [remap[int(i)] for i in op.inputs if i >= 0 and not _const(m, sg.tensors[int(i)])]
    nsg.outputs, nsg.operators = list(nop.outputs), [nop]
    nm.subgraphs = [nsg]
    b = flatbuffers.Builder(1024)
    b.Finish(nm.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _ops(path) -> list:
    """``[(index, op name, output shape, output dtype, one-op model bytes)]`` of a .tflite."""
    schema, m = _graph(path)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sg = m.subgraphs[0]
    out = []
    for k, op in enumerate(sg.operators):
        t = sg.tensors[op.outputs[0]]
        out.append((k, _op_name(schema, m, op), [int(d) for d in t.shape], types[t.type],
                    single_op_model(schema, m, k)))
    return out


def _time_calls(fns: list, reps: int) -> list:
    """Median thread-CPU ms of each callable, the callables interleaved rep by rep."""
    for f in fns:
        for _ in range(3):
            f()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            c0 = time.thread_time()
            f()
            ts[i].append(time.thread_time() - c0)
    return [1e3 * float(np.median(t)) for t in ts]


def op_profile(fp32_path, int8_path, reps: int = 40) -> dict:
    """One-op models of the fp32 and int8 graphs, timed alone (1 thread), XNNPACK on and off."""
    def profile(path):
        rows = []
        for k, name, shape, dtype, data in _ops(path):
            row = {"index": k, "op": name, "out_shape": shape, "out_dtype": dtype}
            try:
                xnn = _interpreter(data, 1, True)
                ref = _interpreter(data, 1, False)
            except Exception as exc:  # noqa: BLE001 - e.g. a custom op with no kernel registered
                row["error"] = str(exc).splitlines()[0][:120]
                rows.append(row)
                continue
            row["xnnpack_delegated"] = any(o["op_name"] == "DELEGATE" for o in xnn._get_ops_details())
            row["xnnpack_ms"], row["builtin_ms"] = _time_calls([xnn.invoke, ref.invoke], reps)
            rows.append(row)
        return rows

    fp32, int8 = profile(fp32_path), profile(int8_path)
    # Pair the ops of the same layer: the int8 graph is the fp32 graph plus QUANTIZE/DEQUANTIZE ops.
    core = [r for r in int8 if r["op"] not in ("QUANTIZE", "DEQUANTIZE")]
    paired = len(core) == len(fp32) and all(a["op"] == b["op"] and a["out_shape"] == b["out_shape"]
                                            for a, b in zip(fp32, core))
    pairs = []
    if paired:
        for a, b in zip(fp32, core):
            if "xnnpack_ms" in a and "xnnpack_ms" in b:
                pairs.append({"op": a["op"], "out_shape": a["out_shape"], "fp32_ms": a["xnnpack_ms"],
                              "int8_ms": b["xnnpack_ms"], "int8_delegated": b["xnnpack_delegated"],
                              "index_fp32": a["index"], "index_int8": b["index"]})
    by_type = {}
    for key, rows in (("fp32", fp32), ("int8", int8)):
        for r in rows:
            e = by_type.setdefault(r["op"], {"count_fp32": 0, "count_int8": 0, "fp32_ms": 0.0, "int8_ms": 0.0,
                                             "fp32_builtin_ms": 0.0, "int8_builtin_ms": 0.0,
                                             "int8_not_delegated": 0})
            e[f"count_{key}"] += 1
            e[f"{key}_ms"] += r.get("xnnpack_ms", 0.0)
            e[f"{key}_builtin_ms"] += r.get("builtin_ms", 0.0)
            if key == "int8" and not r.get("xnnpack_delegated", True):
                e["int8_not_delegated"] += 1
    return {"fp32": fp32, "int8": int8, "paired": paired, "pairs": pairs, "by_type": by_type}


# --------------------------------------------------------------------------- 2. whole invoke

#: the fp32 model each model's ratio is taken against
BASELINE = {"fp32": "fp32", "int8": "fp32", "fp32_raw": "fp32_raw", "int8_raw": "fp32_raw",
            "int8_raw_int8io": "fp32_raw"}


def invoke_ab(paths: dict, threads: int, rounds: int, image) -> dict:
    """All models interleaved round by round: p50/min wall ms, p50 thread-CPU ms, ratios to the fp32 baseline.

    Each model is loaded as fpn_edge loads it (``Detector``: XNNPACK with
    ``threads``; post-process models get their CPU kernels pinned to one
    thread) and fed the same real image (the post-process op's time depends
    on how many anchors pass the score threshold). ``ratio_wall`` is the
    median over rounds of (model / baseline) wall time of the same round;
    ``ratio_cpu`` the ratio of the p50 thread-CPU times.
    """
    from fpn_edge.detector import Detector

    names = list(paths)
    its = []
    for n in names:
        d = Detector.from_file(paths[n], threads=threads)
        d.preprocess(d.load(image))
        d.set_input(d._norm)
        its.append(d.interpreter)
    for it in its:
        for _ in range(5):
            it.invoke()
    wall = np.zeros((rounds, len(its)))
    cpu = np.zeros((rounds, len(its)))
    for r in range(rounds):
        for i, it in enumerate(its):
            c0, t0 = time.thread_time(), time.perf_counter()
            it.invoke()
            wall[r, i], cpu[r, i] = time.perf_counter() - t0, time.thread_time() - c0
    out = {}
    for i, n in enumerate(names):
        b = names.index(BASELINE.get(n, names[0]))
        out[n] = {"baseline": names[b],
                  "wall_p50_ms": 1e3 * float(np.median(wall[:, i])), "wall_min_ms": 1e3 * float(wall[:, i].min()),
                  "cpu_p50_ms": 1e3 * float(np.median(cpu[:, i])),
                  "ratio_wall": float(np.median(wall[:, i] / wall[:, b])),
                  "ratio_cpu": float(np.median(cpu[:, i]) / np.median(cpu[:, b]))}
    return out


# --------------------------------------------------------------------------- 3. end to end

def quantize_float64(x, scale, zero_point, dtype, out):
    """The fpn_edge quantization before this benchmark (float64 rounding), for the "before" row."""
    info = np.iinfo(dtype)
    v = (np.asarray(x, dtype=np.float32) / np.float32(scale)).astype(np.float64)
    q = np.copysign(np.floor(np.abs(v) + 0.5), v) + zero_point
    np.clip(q, info.min, info.max, out=q)
    out[...] = q
    return out


def end_to_end(paths: dict, images: list, threads: int, rounds: int) -> dict:
    """fpn_edge ``Detector`` per phase on real images, the models interleaved image by image.

    Each phase is timed in wall time and in the calling thread's CPU time (all
    the work of a 1-thread interpreter; with more threads the workers' share
    is missing from it). ``*_before`` replaces the input quantization by the
    old float64 one.
    """
    from fpn_edge.detector import Detector
    from fpn_edge.preprocess import quantize

    def now():
        return np.array([time.perf_counter(), time.thread_time()])

    dets = {n: Detector.from_file(p, threads=threads) for n, p in paths.items()}
    imgs = [dets[next(iter(dets))].load(p) for p in images]
    keys = ("preprocess", "quantize", "invoke", "postprocess", "total", "quantize_float64", "total_before")
    t = {n: {k: [] for k in keys} for n in dets}
    for r in range(rounds + 1):
        for img in imgs:
            for n, d in dets.items():
                t0 = now()
                _, info = d.preprocess(img)
                t1 = now()
                d.set_input(d._norm)
                t2 = now()
                d.invoke()
                t3 = now()
                d.postprocess(info)
                t4 = now()
                q64 = np.zeros(2)
                if d._qinput is not None:
                    scale, zp = d._input["quantization"]
                    a = now()
                    quantize_float64(d._norm, scale, zp, d.input_dtype, d._qinput)
                    q64 = now() - a
                    quantize(d._norm, scale, zp, d.input_dtype, out=d._qinput)  # the same values anyway
                if r == 0:
                    continue   # warm-up round
                before = t4 - t0 - (t2 - t1) + q64 if d._qinput is not None else t4 - t0
                for k, v in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, q64, before)):
                    t[n][k].append(v)
    out = {}
    first = next(iter(dets))
    for n in dets:
        o = {"input_dtype": str(dets[n].input_dtype)}
        for k, v in t[n].items():
            v = np.array(v)
            o[f"{k}_p50_ms"] = 1e3 * float(np.median(v[:, 0]))
            o[f"{k}_cpu_p50_ms"] = 1e3 * float(np.median(v[:, 1]))
        base = np.array(t[first]["total"])
        for clock, j in (("", 0), ("_cpu", 1)):
            o[f"ratio_total{clock}"] = float(np.median(np.array(t[n]["total"])[:, j] / base[:, j]))
            o[f"ratio_total_before{clock}"] = float(np.median(np.array(t[n]["total_before"])[:, j] / base[:, j]))
        out[n] = o
    return out


def val_images(run_dir: str, n: int) -> list:
    from keras_fpn.data.formats import read_dataset
    from keras_fpn.rundir import open_run

    cfg = open_run(run_dir).config
    ds = read_dataset(cfg.data.val)
    return [r.image_path for r in ds.records[:n]]


# --------------------------------------------------------------------------- 4. single convolutions

#: (label, input size, input channels, output channels, kernel, stride); the first ones are this network's
CONV_SHAPES = [("first conv 3x3/2, 3->16", 256, 3, 16, 3, 2),
               ("1x1 expand 8->48 @128", 128, 8, 48, 1, 1),
               ("1x1 project 48->8 @64", 64, 48, 8, 1, 1),
               ("1x1 expand 16->96 @32", 32, 16, 96, 1, 1),
               ("3x3 head 32->32 @32", 32, 32, 32, 3, 1),
               ("1x1 64->64 @64", 64, 64, 64, 1, 1),
               ("1x1 256->256 @32", 32, 256, 256, 1, 1),
               ("3x3 128->128 @32", 32, 128, 128, 3, 1)]


def conv_micro(work: Path, reps: int) -> list:
    """One Conv2D (+ReLU) per shape, fp32 vs int8 (int8 I/O), 1 thread, interleaved."""
    import tensorflow as tf
    import tf_keras

    rows = []
    rng = np.random.default_rng(0)
    for label, hw, cin, cout, k, s in CONV_SHAPES:
        inp = tf_keras.Input((hw, hw, cin), batch_size=1)
        model = tf_keras.Model(inp, tf_keras.layers.Conv2D(cout, k, strides=s, padding="same",
                                                           activation="relu")(inp))
        data = {}
        for mode in ("fp32", "int8"):
            c = tf.lite.TFLiteConverter.from_keras_model(model)
            if mode == "int8":
                c.optimizations = [tf.lite.Optimize.DEFAULT]
                c.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, hw, hw, cin)).astype(np.float32)]
                                                    for _ in range(8))
                c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                c.inference_input_type = c.inference_output_type = tf.int8
            data[mode] = c.convert()
        a, b = _interpreter(data["fp32"], 1), _interpreter(data["int8"], 1)
        f, i = _time_calls([a.invoke, b.invoke], reps)
        macs = (hw // s) ** 2 * cout * cin * k * k
        rows.append({"layer": label, "fp32_ms": f, "int8_ms": i, "ratio": i / f, "mmacs": macs / 1e6,
                     "k_depth": cin * k * k})
    return rows


# --------------------------------------------------------------------------- report

def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"CPU: **{m['model_name']}** (family {m['cpu_family']} model {m['model']}, {m['cpus']} CPUs, "
             f"hypervisor {m['hypervisor']}); int8-relevant flags: `{' '.join(m['int8_flags'])}`; "
             f"int8 dot product (VNNI / asimddp): **{'yes' if m['int8_dot_product'] else 'no'}**. "
             f"Load average at start {m['loadavg_start'][0]:.1f}, at end {res['loadavg_end'][0]:.1f}. "
             f"{', '.join(f'{k} {v}' for k, v in m['versions'].items())}.", ""]
    for threads, ab in res["invoke"].items():
        lines += [f"**Invoke only, {threads} thread(s)** ({res['rounds']} interleaved rounds; ratio = median of "
                  "per-round int8/fp32 wall ratios; CPU = the calling thread's CPU time; one validation image)", "",
                  "| model | wall p50 (ms) | wall min (ms) | CPU p50 (ms) | vs | ratio (wall) | ratio (CPU) |",
                  "|---|---|---|---|---|---|---|"]
        for n, v in ab.items():
            vs, rw, rc = ("-", "-", "-") if v["baseline"] == n else (
                v["baseline"], f"{v['ratio_wall']:.2f}", f"{v['ratio_cpu']:.2f}")
            lines.append(f"| {n} | {v['wall_p50_ms']:.2f} | {v['wall_min_ms']:.2f} | {v['cpu_p50_ms']:.2f} | "
                         f"{vs} | {rw} | {rc} |")
        lines.append("")
    for threads, e2e in res["end_to_end"].items():
        clocks = [("", "wall")] + ([("_cpu", "calling-thread CPU")] if threads == "1" else [])
        for c, label in clocks:
            lines += [f"**End to end through fpn_edge `Detector`, {threads} thread(s), {label} p50 ms per phase** "
                      f"({res['n_images']} validation images x {res['e2e_rounds']} rounds)", "",
                      "| model | input | letterbox+normalize | input copy/quantize | quantize before (float64) | "
                      "invoke | outputs->detections | total | ratio to fp32 | ratio to fp32 before |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for n, v in e2e.items():
                q64 = f"{v[f'quantize_float64{c}_p50_ms']:.2f}" if v["input_dtype"] != "float32" else "-"
                lines.append(f"| {n} | {v['input_dtype']} | {v[f'preprocess{c}_p50_ms']:.2f} | "
                             f"{v[f'quantize{c}_p50_ms']:.2f} | {q64} | {v[f'invoke{c}_p50_ms']:.2f} | "
                             f"{v[f'postprocess{c}_p50_ms']:.2f} | {v[f'total{c}_p50_ms']:.2f} | "
                             f"{v[f'ratio_total{c}']:.2f} | {v[f'ratio_total_before{c}']:.2f} |")
            lines.append("")
    prof = res["op_profile"]
    lines += ["**Per op type** (raw models, each op alone, 1 thread, thread CPU ms summed; XNNPACK vs the builtin "
              "kernels; 'int8 off XNNPACK' = int8 ops XNNPACK did not take)", "",
              "| op | count fp32/int8 | fp32 XNNPACK | int8 XNNPACK | int8/fp32 | fp32 builtin | int8 builtin | "
              "int8 off XNNPACK |", "|---|---|---|---|---|---|---|---|"]
    tot = {"fp32_ms": 0.0, "int8_ms": 0.0}
    for op, v in sorted(prof["by_type"].items(), key=lambda kv: -max(kv[1]["int8_ms"], kv[1]["fp32_ms"])):
        r = f"{v['int8_ms'] / v['fp32_ms']:.2f}" if v["fp32_ms"] > 0 else "-"
        lines.append(f"| {op} | {v['count_fp32']}/{v['count_int8']} | {v['fp32_ms']:.3f} | {v['int8_ms']:.3f} | {r} | "
                     f"{v['fp32_builtin_ms']:.3f} | {v['int8_builtin_ms']:.3f} | {v['int8_not_delegated']} |")
        tot["fp32_ms"] += v["fp32_ms"]
        tot["int8_ms"] += v["int8_ms"]
    lines += [f"| **sum** | | {tot['fp32_ms']:.3f} | {tot['int8_ms']:.3f} | "
              f"{tot['int8_ms'] / max(tot['fp32_ms'], 1e-9):.2f} | | | |", ""]
    if prof["pairs"]:
        worst = sorted(prof["pairs"], key=lambda p: p["fp32_ms"] - p["int8_ms"])[:12]
        lines += ["**Layers where int8 loses most** (same layer, fp32 vs int8 op alone, 1 thread)", "",
                  "| op | output | fp32 (ms) | int8 (ms) | int8/fp32 | int8 on XNNPACK |", "|---|---|---|---|---|---|"]
        for p in worst:
            lines.append(f"| {p['op']} | {'x'.join(map(str, p['out_shape']))} | {p['fp32_ms']:.3f} | "
                         f"{p['int8_ms']:.3f} | {p['int8_ms'] / p['fp32_ms']:.2f} | {p['int8_delegated']} |")
        lines.append("")
    if res.get("conv_micro"):
        lines += ["**One Conv2D+ReLU alone, fp32 vs int8** (1 thread, thread CPU ms)", "",
                  "| layer | reduction depth (Cin*k*k) | MMACs | fp32 (ms) | int8 (ms) | int8/fp32 |",
                  "|---|---|---|---|---|---|"]
        for r in res["conv_micro"]:
            lines.append(f"| {r['layer']} | {r['k_depth']} | {r['mmacs']:.1f} | {r['fp32_ms']:.3f} | "
                         f"{r['int8_ms']:.3f} | {r['ratio']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run directory of a trained detector (e.g. /tmp/demo/rund)")
    ap.add_argument("--work", default="/tmp/int8lat", help="folder for the exported models")
    ap.add_argument("--reuse", action="store_true", help="keep models already exported into --work")
    ap.add_argument("--rounds", type=int, default=200, help="interleaved rounds of the invoke A/B")
    ap.add_argument("--e2e-rounds", type=int, default=5, help="rounds over the images, end to end")
    ap.add_argument("--images", type=int, default=20, help="validation images for the end-to-end runs")
    ap.add_argument("--op-reps", type=int, default=40, help="timed invokes per one-op model")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-micro", action="store_true", help="skip the single-convolution table")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--md", help="write the markdown tables here")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    res = {"machine": machine(), "run": str(args.run), "rounds": args.rounds, "e2e_rounds": args.e2e_rounds}
    print(f"CPU {res['machine']['model_name']}, int8 flags {res['machine']['int8_flags']}", flush=True)
    paths = ensure_models(args.run, Path(args.work), args.reuse)
    res["models"] = {k: str(v) for k, v in paths.items()}
    print("per-op profile ...", flush=True)
    res["op_profile"] = op_profile(paths["fp32_raw"], paths["int8_raw"], reps=args.op_reps)
    res["invoke"], res["end_to_end"] = {}, {}
    images = val_images(args.run, args.images)
    res["n_images"] = len(images)
    for t in args.threads:
        print(f"invoke A/B, {t} thread(s) ...", flush=True)
        res["invoke"][str(t)] = invoke_ab({k: paths[k] for k in ("fp32", "int8", "fp32_raw", "int8_raw",
                                                                  "int8_raw_int8io")}, t, args.rounds, images[0])
        print(f"end to end, {t} thread(s) ...", flush=True)
        res["end_to_end"][str(t)] = end_to_end({k: paths[k] for k in ("fp32", "int8")}, images, t, args.e2e_rounds)
    if not args.no_micro:
        print("single convolutions ...", flush=True)
        res["conv_micro"] = conv_micro(Path(args.work), reps=max(50, args.op_reps))
    res["loadavg_end"] = loadavg()
    md = markdown(res)
    print(md)
    if args.json:
        slim = dict(res)
        slim["machine"] = {k: v for k, v in res["machine"].items() if k != "all_flags"}
        Path(args.json).write_text(json.dumps(slim, indent=1, default=float))
    if args.md:
        Path(args.md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
