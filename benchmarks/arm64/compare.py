"""Compare the arm64 (qemu) runs of verify.sh with the x86 reference; write arm64.md / arm64.json.

Run by verify.sh on the host (needs numpy and fpn_edge for the atomic writes). Reads
``WORK/out/{x86,<cpu>}/<model>/{detect/detections.json, raw.npz, raw.json, bench.json}``,
``WORK/out/env_*.json``, ``WORK/out/timings.tsv``. Exit status 0 when every model gives the
same detections (within tolerance) on every emulated CPU, 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fpn_edge.atomic import write_text_atomic


def _load_json(p: Path):
    return json.loads(p.read_text())


def _git(repo: str, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_state(out: Path, repo: str) -> dict:
    """Commit and uncommitted edge/ pyproject.toml paths when the wheel was built (verify.sh records them)."""
    if (out / "git_commit.txt").exists():
        return {"commit": (out / "git_commit.txt").read_text().strip(),
                "dirty_paths": (out / "git_dirty.txt").read_text().splitlines()}
    return {"commit": _git(repo, "rev-parse", "HEAD"),
            "dirty_paths": _git(repo, "status", "--porcelain", "--", "edge", "pyproject.toml").splitlines()}


def compare_tensors(a: np.ndarray, b: np.ndarray) -> dict:
    """max |a-b| (as float64), number of differing elements, size; integer tensors in LSB."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return {"comparable": False, "x86": f"{a.dtype}{list(a.shape)}", "arm64": f"{b.dtype}{list(b.shape)}"}
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"comparable": True, "dtype": a.dtype.name, "size": int(a.size),
            "differing": int(np.count_nonzero(a != b)), "max_abs_diff": float(d.max()) if d.size else 0.0,
            "max_abs_ref": float(np.abs(a.astype(np.float64)).max()) if a.size else 0.0}


def compare_raw(ref_dir: Path, arm_dir: Path) -> dict:
    """Input and output tensors of every image, summed over the images."""
    ra, rb = np.load(ref_dir / "raw.npz"), np.load(arm_dir / "raw.npz")
    meta = _load_json(ref_dir / "raw.json")
    n_img = len(meta["images"])
    out = {"input": None, "outputs": []}

    def total(keys):
        parts = [compare_tensors(ra[k], rb[k]) for k in keys]
        if not all(p["comparable"] for p in parts):
            return next(p for p in parts if not p["comparable"])
        return {"comparable": True, "dtype": parts[0]["dtype"], "size": sum(p["size"] for p in parts),
                "differing": sum(p["differing"] for p in parts),
                "max_abs_diff": max(p["max_abs_diff"] for p in parts),
                "max_abs_ref": max(p["max_abs_ref"] for p in parts)}

    out["input"] = total([f"in_{i}" for i in range(n_img)])
    for j, d in enumerate(meta["outputs"]):
        r = total([f"out_{i}_{j}" for i in range(n_img)])
        r.update(name=d["name"], role=d.get("role"), shape=d["shape"], scale=d["scale"],
                 zero_point=d["zero_point"])
        out["outputs"].append(r)
    return out


CONFIDENT, MATCH_IOU, MOVED_IOU = 0.3, 0.5, 0.9


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pair(src: list, dst: list):
    """Greedy one-to-one pairing, highest score first: each ``src`` detection takes the unpaired
    ``dst`` detection of the same class with the highest IoU. Yields (src, dst or None, iou)."""
    used = set()
    for d in sorted(src, key=lambda d: -d["score"]):
        best, best_iou = None, 0.0
        for j, e in enumerate(dst):
            if j not in used and e["class_id"] == d["class_id"]:
                iou = _iou(d["box_xyxy"], e["box_xyxy"])
                if iou > best_iou:
                    best, best_iou = j, iou
        if best is not None and best_iou >= MATCH_IOU:
            used.add(best)
            yield d, dst[best], best_iou
        else:
            yield d, None, best_iou


def pair_confident(ref_dets: list, arm_dets: list) -> dict:
    """Confident (score >= CONFIDENT) detections of one side without a twin on the other side.

    Each confident x86 detection is paired with an arm64 detection of any score (same class,
    highest IoU): **lost** when none has IoU >= MATCH_IOU, **moved** when the IoU is < MOVED_IOU.
    Confident arm64 detections without an x86 twin of any score are **new**. A score that only
    crosses CONFIDENT is therefore no change.
    """
    c = {"x86": 0, "lost": 0, "moved": 0, "new": 0, "max_abs_score": 0.0}
    for d, e, iou in _pair([d for d in ref_dets if d["score"] >= CONFIDENT], arm_dets):
        c["x86"] += 1
        if e is None:
            c["lost"] += 1
            continue
        if iou < MOVED_IOU:
            c["moved"] += 1
        else:  # score change of the same box (a moved pair may be another, overlapping box)
            c["max_abs_score"] = max(c["max_abs_score"], abs(d["score"] - e["score"]))
    c["new"] = sum(e is None for _, e, _ in _pair([d for d in arm_dets if d["score"] >= CONFIDENT], ref_dets))
    return c


def compare_detections(ref: dict, arm: dict, box_tol: float, score_tol: float) -> dict:
    """Full-precision detections of the probe (per image, in score order)."""
    res = {"images": 0, "detections": 0, "count_mismatch": [], "class_mismatch": [],
           "max_abs_box_px": 0.0, "max_abs_score": 0.0, "bit_identical": True,
           "confident": {"rule": f"x86 score >= {CONFIDENT} paired with any-score arm64 detection; lost: no "
                                 f"same-class IoU >= {MATCH_IOU}; moved: IoU < {MOVED_IOU}; new: confident "
                                 "arm64 detection without any-score x86 twin",
                         "x86": 0, "lost": 0, "moved": 0, "new": 0, "max_abs_score": 0.0}}
    arm_by = {im["file"]: im for im in arm["images"]}
    conf = res["confident"]
    for im in ref["images"]:
        res["images"] += 1
        a, b = im["detections"], arm_by.get(im["file"], {"detections": None})["detections"]
        pc = pair_confident(a, b or [])
        for k in ("x86", "lost", "moved", "new"):
            conf[k] += pc[k]
        conf["max_abs_score"] = max(conf["max_abs_score"], pc["max_abs_score"])
        if b is None or len(a) != len(b):
            res["count_mismatch"].append({"file": im["file"], "x86": len(a), "arm64": None if b is None else len(b)})
            res["bit_identical"] = False
            continue
        res["detections"] += len(a)
        if [d["class_id"] for d in a] != [d["class_id"] for d in b]:
            res["class_mismatch"].append(im["file"])
            res["bit_identical"] = False
            continue
        for da, db in zip(a, b):
            if da != db:
                res["bit_identical"] = False
            res["max_abs_box_px"] = max(res["max_abs_box_px"],
                                        *(abs(x - y) for x, y in zip(da["box_xyxy"], db["box_xyxy"])))
            res["max_abs_score"] = max(res["max_abs_score"], abs(da["score"] - db["score"]))
    if res["bit_identical"]:
        res["status"] = "identical"
    elif (not res["count_mismatch"] and not res["class_mismatch"]
          and res["max_abs_box_px"] <= box_tol and res["max_abs_score"] <= score_tol):
        res["status"] = "within tolerance"
    elif not (conf["lost"] or conf["moved"] or conf["new"]):
        res["status"] = "same confident detections"  # only low scores / near-ties reordered
    else:
        res["status"] = "DIFFERENT"
    return res


def compare_cli_json(ref: dict, arm: dict) -> dict:
    """The detections in two ``fpn-edge detect`` detections.json (rounded as written), file paths aside."""
    def key(report):
        return {Path(im["file"]).name: im.get("detections") or [] for im in report["images"]}
    ka, kb = key(ref), key(arm)
    total = sum(len(v) for v in ka.values())
    differing = 0
    for name, da in ka.items():
        db = kb.get(name, [])
        differing += sum(x != y for x, y in zip(da, db)) + abs(len(da) - len(db))
    return {"equal": ka == kb and not ref["errors"] and not arm["errors"],
            "differing_detections": differing, "detections": total,
            "errors": len(ref["errors"]) + len(arm["errors"])}


def fmt_tensor(r: dict) -> str:
    if not r["comparable"]:
        return f"shape/dtype differ: {r['x86']} vs {r['arm64']}"
    if r["differing"] == 0:
        return "identical"
    if r["dtype"] in ("int8", "uint8", "int16", "int32", "int64"):
        return f"{r['differing']}/{r['size']} differ (max {int(r['max_abs_diff'])} LSB)"
    return f"{r['differing']}/{r['size']} differ, max abs {r['max_abs_diff']:.3g} (max abs value {r['max_abs_ref']:.3g})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--cpus", required=True)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--start", type=float, required=True, help="epoch seconds when the check started")
    p.add_argument("--end", type=float, default=None,
                   help="epoch seconds when the runs ended (default: now); to re-render old data")
    p.add_argument("--results", required=True)
    p.add_argument("--wheel", default="")
    p.add_argument("--edge-reqs", default="")
    p.add_argument("--images-dir", default="")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--qemu", default="")
    p.add_argument("--root", default="")
    p.add_argument("--repo", default=".")
    p.add_argument("--fresh-venv", type=int, default=1)
    p.add_argument("--box-tol", type=float, default=0.5)
    p.add_argument("--score-tol", type=float, default=1e-3)
    a = p.parse_args(argv)

    work, out = Path(a.work), Path(a.work) / "out"
    cpus = a.cpus.split()
    env_x86, env_arm = _load_json(out / "env_x86.json"), _load_json(out / "env_arm64.json")
    cpuinfo = {c: (out / f"cpuinfo_{c}.txt").read_text().strip() for c in cpus
               if (out / f"cpuinfo_{c}.txt").exists()}
    images = sorted(f.name for f in (work / "images").iterdir())
    problems, models = [], {}
    for mpath in a.model:
        b = Path(mpath).name
        rx = out / "x86" / b
        raw_meta = _load_json(rx / "raw.json")
        det_x86 = _load_json(rx / "detect" / "detections.json")
        entry = {"path": mpath, "size_bytes": Path(mpath).stat().st_size,
                 "output_kind": raw_meta["output_kind"], "input": raw_meta["input"],
                 "outputs": raw_meta["outputs"],
                 "n_detections": {"x86": sum(len(im["detections"]) for im in raw_meta["images"])},
                 "latency_ms": {"x86": _load_json(rx / "bench.json")["latency_ms"]},
                 "vs_x86": {}}
        for cpu in cpus:
            ra = out / cpu / b
            arm_meta = _load_json(ra / "raw.json")
            bench = _load_json(ra / "bench.json")
            entry["n_detections"][cpu] = sum(len(im["detections"]) for im in arm_meta["images"])
            entry["latency_ms"][cpu] = bench["latency_ms"]
            entry.setdefault("arm64_bench_machine", bench["machine"])
            v = {"detections": compare_detections(raw_meta, arm_meta, a.box_tol, a.score_tol),
                 "cli_detections_json": compare_cli_json(det_x86, _load_json(ra / "detect" / "detections.json")),
                 **compare_raw(rx, ra)}
            entry["vs_x86"][cpu] = v
            if bench["machine"] != "aarch64" or arm_meta["machine"] != "aarch64":
                problems.append(f"{b} {cpu}: not run on aarch64 ({bench['machine']})")
            if v["detections"]["status"] == "DIFFERENT":
                c = v["detections"]["confident"]
                problems.append(f"{b} {cpu}: detections differ from x86 (confident: {c['lost']} lost, "
                                f"{c['moved']} moved, {c['new']} new of {c['x86']}; max abs score change of "
                                f"kept boxes {c['max_abs_score']:.3g})")
        models[b] = entry

    timings = {}
    if (out / "timings.tsv").exists():
        for line in (out / "timings.tsv").read_text().splitlines():
            k, _, s = line.partition("\t")
            timings[k] = float(s)
    numpy_exp = None
    if (out / "env_x86.exp.npy").exists() and (out / "env_arm64.exp.npy").exists():
        ex, ea = np.load(out / "env_x86.exp.npy"), np.load(out / "env_arm64.exp.npy")
        ulp = np.abs(ex.view(np.int32).astype(np.int64) - ea.view(np.int32).astype(np.int64))
        numpy_exp = {"grid": "np.exp(np.linspace(-20, 5, 100001, dtype=float32))", "size": int(ex.size),
                     "differing": int(np.count_nonzero(ulp)), "max_ulp": int(ulp.max())}
    if env_arm["tensorflow"]["importable"]:
        problems.append("tensorflow is importable in the arm64 venv")
    wall = (time.time() if a.end is None else a.end) - a.start
    report = {
        "title": "fpn_edge on arm64 (qemu-user emulation) vs x86",
        "generated": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "verdict": "pass" if not problems else "differences found",
        "problems": problems,
        "wall_time_s": round(wall, 1),
        "host_cpus": os.cpu_count(),
        "host_load_avg": list(os.getloadavg()),
        "phase_times_s": timings,
        "settings": {"threads": a.threads, "bench_runs": a.runs, "bench_warmup": a.warmup,
                     "cpus": cpus, "images_dir": a.images_dir, "images": images,
                     "box_tol_px": a.box_tol, "score_tol": a.score_tol},
        "git": git_state(out, a.repo),
        "install": {"wheel": a.wheel, "edge_requirements": a.edge_reqs.split(),
                    "method": "pip install --no-deps WHEEL; pip install <[edge] requirements>, "
                              + ("fresh venv" if a.fresh_venv else "reused venv (KEEP_VENV=1)")},
        "environment": {
            "numpy_float32_exp_x86_vs_arm64": numpy_exp,
            "qemu": a.qemu, "root": a.root, "qemu_cpu_models": cpus, "guest_cpuinfo": cpuinfo,
            "x86": {k: env_x86.get(k) for k in ("machine", "python", "numpy", "pillow", "ai_edge_litert",
                                                 "fpn_edge_file")},
            "arm64": {k: env_arm[k] for k in ("machine", "python", "numpy", "pillow", "ai_edge_litert",
                                              "keras_fpn", "tensorflow", "installed")}},
        "latency_note": "arm64 latencies are qemu-user emulation on an x86 host: they say nothing "
                        "about a Raspberry Pi's speed",
        "models": models,
    }
    results = Path(a.results)
    for name, text in (("arm64.json", json.dumps(report, indent=2) + "\n"), ("arm64.md", render_md(report))):
        os.chmod(write_text_atomic(results / name, text), 0o644)  # mkstemp makes 0600
    print(render_summary(report))
    return 0 if not problems else 1


def _cli(c: dict) -> str:
    if c["equal"]:
        return "yes"
    return f"no: {c['differing_detections']}/{c['detections']} detections differ" + (
        f", {c['errors']} errors" if c["errors"] else "")


def _conf(c: dict) -> str:
    return f"{c['x86']}: {c['lost']} / {c['moved']} / {c['new']}, {c['max_abs_score']:.3g}"


def _tname(t: dict) -> str:
    return f"{t['role']} (`{t['name']}`)" if t.get("role") else f"`{t['name']}`"


def _outs(outputs: list) -> str:
    diff = [t for t in outputs if not t["comparable"] or t["differing"]]
    if not diff:
        return f"all {len(outputs)} identical"
    return f"{len(diff)} of {len(outputs)} differ (below)"


def _ms(lat: dict, key: str) -> str:
    s = lat.get(key)
    return "–" if s is None else f"{s['p50']:.1f}"


def render_md(r: dict) -> str:
    s = r["settings"]
    e = r["environment"]
    cpus = s["cpus"]
    lines = [
        f"# {r['title']}",
        "",
        f"Generated {r['generated']} by `benchmarks/arm64/verify.sh` (commit `{r['git']['commit'][:12]}`"
        + ("; uncommitted: " + ", ".join(f"`{d[3:]}`" for d in r["git"]["dirty_paths"])
           if r["git"]["dirty_paths"] else "") + "). "
        f"**Verdict: {r['verdict']}.** The whole check took **{r['wall_time_s'] / 60:.1f} min** "
        f"({r['wall_time_s']:.0f} s) of wall time.",
        "",
        f"- arm64: Debian bookworm userland under {e['qemu'] or 'qemu-user'} (`QEMU_CPU` = "
        + ", ".join(f"`{c}`" for c in cpus) + ", fake ARM /proc/cpuinfo), Python "
        f"{e['arm64']['python']}, numpy {e['arm64']['numpy']}, Pillow {e['arm64']['pillow']}, "
        f"ai-edge-litert {e['arm64']['ai_edge_litert']}.",
        f"- Installed like a device: `{r['install']['wheel']}` with `pip install --no-deps`, plus only the "
        f"`[edge]` requirements ({', '.join(f'`{q}`' for q in r['install']['edge_requirements'])}) in a "
        + ("fresh venv" if r["install"]["method"].endswith("fresh venv") else "reused venv (KEEP_VENV=1)")
        + ". `import tensorflow` there: "
        + ("**works (problem)**" if e["arm64"]["tensorflow"]["importable"]
           else f"fails (`{e['arm64']['tensorflow']['error']}`)") + ".",
        f"- x86 reference: the host venv (Python {e['x86']['python']}, numpy {e['x86']['numpy']}, "
        f"Pillow {e['x86']['pillow']}, ai-edge-litert {e['x86']['ai_edge_litert']}) running the same "
        f"wheel's fpn_edge (unpacked first on PYTHONPATH).",
        f"- {len(s['images'])} images: `{s['images_dir']}` first {len(s['images'])} names sorted "
        f"({s['images'][0]} … {s['images'][-1]}); `--threads {s['threads']}` everywhere.",
        ("- numpy's float32 `exp` (used by fpn_edge's decode of raw models) on a fixed grid, arm64 vs x86: "
         + (f"{e['numpy_float32_exp_x86_vs_arm64']['differing']}/{e['numpy_float32_exp_x86_vs_arm64']['size']} "
            f"values differ, max {e['numpy_float32_exp_x86_vs_arm64']['max_ulp']} ULP."
            if e.get("numpy_float32_exp_x86_vs_arm64") else "not measured.")),
        "- Compared: the model input tensor as fed (letterbox + normalize + quantize in numpy), every "
        "output tensor as the interpreter returns it (int8/uint8 not dequantized), the decoded detections "
        "at full float precision, and `fpn-edge detect`'s `detections.json`.",
        "",
        "## Detections and tensors, arm64 vs x86",
        "",
        "| model | output | CPU (qemu) | detections x86 / arm64 | same detections? | max abs Δ box (px) "
        "| max abs Δ score | confident (≥ 0.3) x86: lost / moved / new, max abs Δ score | detections.json equal "
        "| input tensor | output tensors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, m in r["models"].items():
        for cpu in cpus:
            v = m["vs_x86"][cpu]
            d = v["detections"]
            n_off = len(d["count_mismatch"]) + len(d["class_mismatch"])
            extra = f" ({n_off}/{d['images']} images in another order or count)" if n_off else ""
            lines.append(
                f"| `{b}` | {m['output_kind']}, {m['input']['dtype']} in | {cpu} | "
                f"{m['n_detections']['x86']} / {m['n_detections'][cpu]} | {d['status']}{extra} | "
                + (f"{d['max_abs_box_px']:.3g} | {d['max_abs_score']:.3g} | " if n_off < d["images"] else "– | – | ")
                + f"{_conf(d['confident'])} | "
                f"{_cli(v['cli_detections_json'])} | {fmt_tensor(v['input'])} | {_outs(v['outputs'])} |")
    lines += ["", "Detections are compared in score order, image by image: *identical* = bit-equal; *within "
              "tolerance* = same count and classes, box and score differences within the tolerances "
              f"({s['box_tol_px']} px, {s['score_tol']}); the max abs Δ columns cover the images whose lists "
              "align (same count, same classes in the same order). *Same confident detections* = the lists "
              "do not align (near-tied low scores reordered) but every confident x86 detection has a "
              "same-class arm64 twin with IoU ≥ 0.9 and there is no new confident one. *Confident*: x86 detections "
              "with score ≥ 0.3, each paired with an arm64 detection of any score (same class, highest IoU): "
              "lost = none with IoU ≥ 0.5, moved = IoU < 0.9; new = confident arm64 detections without an "
              "x86 twin of any score; max abs Δ score over the pairs with IoU ≥ 0.9.", ""]
    lines += ["Output tensors, all images together (int8/uint8 compared as integers, not dequantized); "
              "identical tensors of a model share one row:", "",
              "| model | CPU (qemu) | output tensor | dtype, shape | arm64 vs x86 |", "|---|---|---|---|---|"]
    for b, m in r["models"].items():
        for cpu in cpus:
            same, diff = [], []
            for t in m["vs_x86"][cpu]["outputs"]:
                (diff if not t["comparable"] or t["differing"] else same).append(t)
            if same:
                lines.append(f"| `{b}` | {cpu} | " + ", ".join(_tname(t) for t in same) + " | "
                             + ", ".join(f"{t.get('dtype', '?')} {t['shape']}" for t in same) + " | identical |")
            for t in diff:
                lines.append(f"| `{b}` | {cpu} | {_tname(t)} | {t.get('dtype', '?')} {t['shape']} | {fmt_tensor(t)} |")
    lines += ["",
              "## Latency: qemu emulation, NOT Raspberry Pi speed",
              "",
              f"`fpn-edge bench --threads {s['threads']} --runs {s['bench_runs']} --warmup {s['bench_warmup']} "
              f"--image {s['images'][0]}`, p50 in ms, `invoke` / end to end. The arm64 columns are an x86 "
              f"CPU emulating ARM instruction by instruction (qemu-user, no KVM), on a {r['host_cpus']}-CPU host shared with other work: "
              "they only show the runtime works; a Pi 4/5 is a different machine. The x86 column is the "
              "same host natively. Under a loaded host the emulated numbers vary several-fold from run to run "
              "(and between rows of one run): do not read int8 vs fp32 or A72 vs A76 speed from them.",
              "",
              "| model | x86 host (native) | " + " | ".join(f"{c} (qemu emulated)" for c in cpus) + " |",
              "|---|---|" + "---|" * len(cpus)]
    for b, m in r["models"].items():
        lat = m["latency_ms"]
        cells = [f"{_ms(lat[k], 'invoke')} / {_ms(lat[k], 'end_to_end')}" for k in ["x86", *cpus]]
        lines.append(f"| `{b}` | " + " | ".join(cells) + " |")
    lines += ["", "Explanations of the differences found so far (qemu quirks, numpy/XNNPACK float kernels): "
              "`benchmarks/arm64/README.md`, section Findings.", "", "## Problems", ""]
    lines += [f"- {p}" for p in r["problems"]] or ["- none"]
    lines += ["", "## Time", "",
              "| phase | s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r["phase_times_s"].items()]
    lines += [f"| **whole check** | **{r['wall_time_s']:.0f}** |", "",
              "Re-run: `sudo benchmarks/arm64/verify.sh MODEL.tflite ...` (see `benchmarks/arm64/README.md`). "
              "Raw data: `arm64.json`.", ""]
    return "\n".join(lines)


def render_summary(r: dict) -> str:
    out = [f"verdict: {r['verdict']}  wall time {r['wall_time_s']:.0f} s"]
    for b, m in r["models"].items():
        for cpu, v in m["vs_x86"].items():
            outs = "; ".join(f"{t.get('role') or t['name']}: {fmt_tensor(t)}" for t in v["outputs"])
            out.append(f"  {b} {cpu}: detections {v['detections']['status']} "
                       f"[confident {_conf(v['detections']['confident'])}] "
                       f"(max box {v['detections']['max_abs_box_px']:.3g} px, score {v['detections']['max_abs_score']:.3g}); "
                       f"input {fmt_tensor(v['input'])}; {outs}")
    out += [f"  problem: {p}" for p in r["problems"]]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
