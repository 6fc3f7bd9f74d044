"""``ModelRunner``: the input side shared by every keras-fpn TFLite model (detector, segmenter).

Checks the one ``[1, H, W, 3]`` input against the metadata, keeps the
preprocessing buffers (allocated once, reused for every frame), letterboxes
or stretches (the metadata's ``input.resize``) and normalizes images (:mod:`fpn_edge.preprocess`) and quantizes them for
uint8/int8 inputs. Subclasses map and decode the outputs.

The metadata's ``task`` picks the subclass through :data:`RUNNERS`: a task is
added to fpn_edge by its runner module, one entry there and one in
``fpn_edge.metadata.TASK_SCHEMAS``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from fpn_edge.errors import EdgeError
from fpn_edge.interpreter import LoadedInterpreter, load_interpreter
from fpn_edge.metadata import read_metadata
from fpn_edge.preprocess import RESIZE_MODES, as_rgb_uint8, letterbox, load_image, normalize, quantize

__all__ = ["ModelRunner", "RUNNERS", "open_runner", "runner_class", "dequantize"]

#: metadata ``task`` -> ``"module:class"`` of its runner (a :class:`ModelRunner`), imported on first use
RUNNERS = {"detection": "fpn_edge.detector:Detector", "segmentation": "fpn_edge.segmenter:Segmenter"}


def dequantize(arr: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor as float32: ``(q - zero_point) * scale`` for integer tensors."""
    if np.issubdtype(arr.dtype, np.integer):
        scale, zp = detail["quantization"]
        if scale == 0:
            return arr.astype(np.float32)
        return (arr.astype(np.float32) - np.float32(zp)) * np.float32(scale)
    return arr.astype(np.float32, copy=False)


class ModelRunner:
    """A loaded keras-fpn TFLite model: input checks, buffers and preprocessing. Not thread-safe."""

    #: the metadata ``task`` a subclass runs
    task = None
    #: the ``fpn-edge`` command that runs this task's models
    command = None

    def __init__(self, loaded: LoadedInterpreter, meta: dict):
        self._loaded = loaded
        self._interp = loaded.interpreter
        self.meta = meta
        self.path = loaded.path
        self.labels = list(meta["labels"])
        self.output_kind = meta["output"]
        where = str(self.path)
        runner = runner_class(meta["task"])
        if self.task is not None and not isinstance(self, runner):
            raise EdgeError(f"{where}: a {meta['task']} model, not a {self.task} model "
                            f"(use `fpn-edge {runner.command}`)")

        inputs = self._interp.get_input_details()
        if len(inputs) != 1:
            raise EdgeError(f"{where}: expected 1 input tensor, found {len(inputs)}")
        self._input = inputs[0]
        shape = [int(v) for v in self._input["shape"]]
        h, w = int(meta["input"]["height"]), int(meta["input"]["width"])
        if shape != [1, h, w, 3]:
            raise EdgeError(f"{where}: input tensor shape {shape} does not match the metadata's "
                            f"[1, {h}, {w}, 3]")
        self.input_size = (h, w)
        self.input_dtype = np.dtype(self._input["dtype"])
        if self.input_dtype not in (np.float32, np.uint8, np.int8):
            raise EdgeError(f"{where}: unsupported input dtype {self.input_dtype}")
        self._normalization = meta["input"]["normalization"]
        #: ``letterbox`` | ``stretch`` (``fpn_edge.preprocess``); files written before the key: letterbox
        self.resize = meta["input"].get("resize", RESIZE_MODES[0])
        # Preallocated buffers, reused for every frame.
        self._canvas = np.zeros((h, w, 3), np.float32)
        self._norm = np.zeros((1, h, w, 3), np.float32)
        self._qinput = (np.zeros((1, h, w, 3), self.input_dtype)
                        if self.input_dtype != np.float32 else None)
        self._qwork = np.zeros((2, 1, h, w, 3), np.float32) if self._qinput is not None else None
        self._outputs = self._interp.get_output_details()
        self._out_details = {d["index"]: d for d in self._outputs}

    @classmethod
    def from_file(cls, path, *, threads: int | None = None, delegate: str | None = "cpu"):
        """Load a keras-fpn .tflite (with its embedded metadata).

        Args:
            path: the .tflite file.
            threads: CPU threads (None: the interpreter's default).
            delegate: ``cpu`` | ``edgetpu[:DEVICE]`` | ``gpu:/path/lib.so`` | a library path
                (see :mod:`fpn_edge.interpreter`).

        Raises:
            EdgeError: a one-line message for every user error (file, metadata, delegate).
        """
        loaded = load_interpreter(path, threads=threads, delegate=delegate)
        meta, anchors = read_metadata(path)
        return cls._create(loaded, meta, anchors)

    @classmethod
    def _create(cls, loaded, meta, anchors):
        return cls(loaded, meta)

    # -- properties ---------------------------------------------------------
    @property
    def delegate(self) -> str:
        """What runs the model, e.g. ``cpu (XNNPACK, 2 threads)``."""
        return self._loaded.delegate_description

    @property
    def backend(self) -> str:
        return self._loaded.backend

    @property
    def interpreter(self):
        return self._interp

    # -- pipeline pieces ----------------------------------------------------
    def set_input(self, model_input: np.ndarray) -> None:
        """Copy a normalized float canvas ``[H, W, 3]`` or ``[1, H, W, 3]`` into the input tensor.

        Quantizes with the input tensor's (scale, zero_point) for uint8/int8 models.
        """
        if model_input is self._norm:
            x = self._norm
        else:
            x = np.asarray(model_input, dtype=np.float32).reshape(self._norm.shape)
        if self._qinput is None:
            if x is not self._norm:
                np.copyto(self._norm, x)
            self._interp.set_tensor(self._input["index"], self._norm)
        else:
            scale, zp = self._input["quantization"]
            quantize(x, scale, zp, self.input_dtype, out=self._qinput, work=self._qwork)
            self._interp.set_tensor(self._input["index"], self._qinput)

    def preprocess(self, image: np.ndarray):
        """Letterbox or stretch (``self.resize``) + normalize an ``[h, w, 3]`` uint8 RGB image into the buffers.

        Returns:
            ``(normalized float32 [1, H, W, 3] view of the internal buffer, LetterboxInfo)``.
        """
        h, w = self.input_size
        _, info = letterbox(image, h, w, out=self._canvas, resize=self.resize)
        normalize(self._canvas, self._normalization, out=self._norm[0])
        return self._norm, info

    def invoke(self) -> None:
        """Run the interpreter on the current input tensor."""
        self._interp.invoke()

    def load(self, image) -> np.ndarray:
        """An image path, PIL image or array -> ``[h, w, 3]`` uint8 RGB."""
        if isinstance(image, (str, Path)):
            return load_image(image)
        return as_rgb_uint8(image)

    def run(self, image):
        """Preprocess ``image`` (path, PIL image or uint8 array), invoke; return its ``LetterboxInfo``."""
        _, info = self.preprocess(self.load(image))
        self.set_input(self._norm)
        self._interp.invoke()
        return info

    def postprocess(self, info, **kwargs):  # pragma: no cover - abstract
        """Turn the outputs of the last :meth:`invoke` into results for the image ``info`` describes."""
        raise NotImplementedError

    @staticmethod
    def describe_meta(meta: dict) -> list:  # pragma: no cover - abstract
        """Lines for ``fpn-edge info`` about the metadata keys of this task."""
        raise NotImplementedError


def runner_class(task: str) -> type:
    """The :class:`ModelRunner` subclass of a metadata ``task`` (:data:`RUNNERS`).

    Raises:
        EdgeError: a task fpn_edge has no runner for.
    """
    try:
        module, _, name = RUNNERS[task].partition(":")
    except KeyError:
        raise EdgeError(f"unsupported task {task!r} (expected one of {', '.join(RUNNERS)})") from None
    return getattr(importlib.import_module(module), name)


def open_runner(loaded: LoadedInterpreter, meta: dict, anchors) -> ModelRunner:
    """The runner for an already loaded interpreter, picked by ``meta["task"]``."""
    return runner_class(meta["task"])._create(loaded, meta, anchors)
