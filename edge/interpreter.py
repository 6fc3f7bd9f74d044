"""Load a .tflite model into a TFLite interpreter (ai-edge-litert or tflite-runtime), with delegates.

Delegate specs (the ``delegate`` argument and ``--delegate`` on the CLI):

``"cpu"`` (default)
    The built-in CPU kernels with XNNPACK (applied by default by both
    interpreters), ``threads`` threads.
``"edgetpu"`` or ``"edgetpu:DEVICE"``
    The Coral Edge TPU delegate: ``libedgetpu.so.1`` (Linux),
    ``libedgetpu.1.dylib`` (macOS) or ``edgetpu.dll`` (Windows). ``DEVICE`` is
    passed as the delegate's ``device`` option (``usb``, ``usb:0``, ``pci:0``).
    The model must have been compiled by ``edgetpu_compiler``; ops the compiler
    did not map run on the CPU.
``"gpu:/path/to/libdelegate.so"``
    A GPU delegate shared library given by path; none ships with the Python
    wheels. Like every delegate loaded from Python it must export TFLite's
    external-delegate plugin API (``tflite_plugin_create_delegate``).
``"/path/to/lib.so"`` or ``"external:/path/to/lib.so"``
    Any other external delegate library.
"""
from __future__ import annotations

import ctypes
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from fpn_edge.errors import EdgeError

TFLITE_IDENTIFIER = b"TFL3"
EDGETPU_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
PIP_HINT = "pip install ai-edge-litert  (or, where no wheel exists: pip install tflite-runtime)"

__all__ = ["load_interpreter", "interpreter_backend", "parse_delegate", "check_tflite_file",
           "check_tflite_bytes", "ops_details", "describe_model", "DelegateSpec", "LoadedInterpreter"]


def interpreter_backend():
    """Return ``(Interpreter class, load_delegate function, backend name)``.

    Prefers ``ai_edge_litert.interpreter``, falls back to ``tflite_runtime.interpreter``.

    Raises:
        EdgeError: neither package is installed (the message gives the pip command).
    """
    try:
        from ai_edge_litert import interpreter as mod
        return mod.Interpreter, mod.load_delegate, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod
        return mod.Interpreter, mod.load_delegate, "tflite-runtime"
    except ImportError:
        raise EdgeError(f"no TFLite interpreter installed: {PIP_HINT}") from None


@dataclass(frozen=True)
class DelegateSpec:
    """A parsed delegate spec: kind ``cpu`` | ``edgetpu`` | ``gpu`` | ``external``."""

    kind: str
    library: str | None = None
    options: dict | None = None

    def describe(self, threads: int | None) -> str:
        t = f"{threads} thread{'s' if threads != 1 else ''}" if threads else "default threads"
        if self.kind == "cpu":
            return f"cpu (XNNPACK, {t})"
        return f"{self.kind} ({self.library}; CPU fallback {t})"


def parse_delegate(spec: str | None) -> DelegateSpec:
    """Parse a delegate spec string (see the module docstring).

    Raises:
        EdgeError: an unknown spec, or ``gpu`` without a library path.
    """
    spec = (spec or "cpu").strip()
    kind, _, arg = spec.partition(":")
    kind_l = kind.lower()
    if kind_l in ("cpu", "xnnpack") and not arg:
        return DelegateSpec("cpu")
    if kind_l == "edgetpu":
        lib = EDGETPU_LIBRARIES.get(platform.system(), "libedgetpu.so.1")
        return DelegateSpec("edgetpu", lib, {"device": arg} if arg else None)
    if kind_l == "gpu":
        if not arg:
            raise EdgeError("the gpu delegate needs its library path: --delegate gpu:/path/to/"
                            "libtensorflowlite_gpu_delegate.so")
        return DelegateSpec("gpu", arg)
    if kind_l == "external" and arg:
        return DelegateSpec("external", arg)
    if spec.endswith((".so", ".dll", ".dylib")) or ".so." in spec:
        return DelegateSpec("external", spec)
    raise EdgeError(f"unknown delegate {spec!r}: use cpu, edgetpu[:DEVICE], gpu:/path/lib.so "
                    "or a delegate library path")


def check_tflite_bytes(data: bytes, where) -> None:
    """Check that ``data`` (a whole model or its first 8 bytes) starts like a TFLite flatbuffer.

    Raises:
        EdgeError: naming ``where``, when there is no ``TFL3`` file identifier at bytes 4..8.
    """
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise EdgeError(f"{where}: not a TFLite model (no 'TFL3' file identifier)")


def check_tflite_file(path) -> Path:
    """Check that ``path`` exists and starts like a TFLite flatbuffer (:func:`check_tflite_bytes`).

    Raises:
        EdgeError: missing file, a directory, or no ``TFL3`` identifier at bytes 4..8.
    """
    path = Path(path)
    if not path.exists():
        raise EdgeError(f"{path}: model file not found")
    if not path.is_file():
        raise EdgeError(f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise EdgeError(f"{path}: cannot read model file ({e.strerror or e})") from None
    check_tflite_bytes(head, path)
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class LoadedInterpreter:
    """An allocated interpreter and how it was built."""

    interpreter: object
    backend: str
    delegate: DelegateSpec
    threads: int | None
    path: Path

    @property
    def delegate_description(self) -> str:
        return self.delegate.describe(self.threads)


def _load_delegate(load_delegate, spec: DelegateSpec):
    what = {"edgetpu": "Edge TPU delegate", "gpu": "GPU delegate"}.get(spec.kind, "delegate")
    hint = ""
    if spec.kind == "edgetpu":
        hint = (" (install libedgetpu1-std from the Coral apt repository and plug in the "
                "Edge TPU; see https://coral.ai/docs/accelerator/get-started)")
    # Probe the library first: a failed LoadLibrary inside load_delegate leaves a
    # half-built Delegate whose __del__ prints a traceback.
    try:
        lib = ctypes.CDLL(spec.library)
    except OSError as e:
        msg = _first_line(e)
        msg = msg[len(spec.library) + 2:] if msg.startswith(f"{spec.library}: ") else msg
        raise EdgeError(f"cannot load the {what} library {spec.library}: {msg}{hint}") from None
    if not hasattr(lib, "tflite_plugin_create_delegate"):
        raise EdgeError(f"{spec.library} is not a TFLite external delegate "
                        "(it has no tflite_plugin_create_delegate symbol)")
    try:
        return load_delegate(spec.library, spec.options or {})
    except (ValueError, OSError, RuntimeError) as e:
        raise EdgeError(f"cannot load the {what} library {spec.library}: {_first_line(e)}{hint}") from None


def load_interpreter(path, *, threads: int | None = None, delegate: str | None = "cpu",
                     default_delegates: bool = True) -> LoadedInterpreter:
    """Load and allocate a .tflite model.

    Args:
        path: the .tflite file (a keras-fpn metadata archive after it is fine).
        threads: CPU threads (XNNPACK and CPU fallback ops); None = interpreter default.
        delegate: a delegate spec (module docstring).
        default_delegates: False to skip XNNPACK (plain builtin kernels), e.g. to
            list the model's own ops rather than the delegated graph.

    Returns:
        A :class:`LoadedInterpreter` with tensors allocated.

    Raises:
        EdgeError: missing/not-TFLite/truncated file, missing delegate library,
            no interpreter package, or a model the interpreter cannot run.
    """
    path = check_tflite_file(path)
    spec = parse_delegate(delegate)
    if threads is not None and int(threads) < 1:
        raise EdgeError(f"threads must be >= 1, got {threads}")
    interpreter_cls, load_delegate, backend = interpreter_backend()
    delegates = [] if spec.kind == "cpu" else [_load_delegate(load_delegate, spec)]
    kwargs = {}
    if not default_delegates:
        resolver = getattr(sys.modules[interpreter_cls.__module__], "OpResolverType", None)
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = interpreter_cls(model_path=str(path), num_threads=threads,
                                 experimental_delegates=delegates or None, **kwargs)
    except (ValueError, RuntimeError) as e:
        raise EdgeError(f"{path}: cannot load the TFLite model, the file is truncated or corrupt "
                        f"({_first_line(e)})") from None
    try:
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise EdgeError(f"{path}: the interpreter cannot prepare the model ({_first_line(e)})") from None
    return LoadedInterpreter(interp, backend, spec, threads, path)


def ops_details(interp) -> list | None:
    """The operators of an allocated interpreter, in execution order.

    Returns:
        Dicts with ``op_name``, ``inputs`` and ``outputs`` (tensor indices), or
        None when the interpreter cannot list them (older tflite-runtime builds).
    """
    try:
        return list(interp._get_ops_details())
    except Exception:
        return None


def _tensor_info(d: dict) -> dict:
    import numpy as np

    q = d.get("quantization_parameters") or {}
    scales = [float(v) for v in q.get("scales", [])]
    zps = [int(v) for v in q.get("zero_points", [])]
    info = {"name": d["name"], "index": int(d["index"]), "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name}
    if scales:
        if len(scales) == 1:
            info["quantization"] = {"scale": scales[0], "zero_point": zps[0] if zps else 0}
        else:
            info["quantization"] = {"scales": scales, "zero_points": zps,
                                    "axis": int(q.get("quantized_dimension", 0))}
    return info


def describe_model(path) -> dict:
    """Inputs, outputs (name, shape, dtype, quantization) and the op list of a .tflite model.

    The model is loaded without default delegates, so ``ops`` is the model's own
    graph (not XNNPACK's partitions).

    Returns:
        ``{"path", "size_bytes", "backend", "inputs": [...], "outputs": [...],
        "ops": [op names in execution order] or None when the interpreter cannot list them}``.
    """
    loaded = load_interpreter(path, default_delegates=False)
    interp = loaded.interpreter
    details = ops_details(interp)
    ops = None if details is None else [op["op_name"] for op in details if op.get("op_name") != "DELEGATE"]
    return {"path": str(loaded.path), "size_bytes": loaded.path.stat().st_size,
            "backend": loaded.backend,
            "inputs": [_tensor_info(d) for d in interp.get_input_details()],
            "outputs": [_tensor_info(d) for d in interp.get_output_details()],
            "ops": ops}
