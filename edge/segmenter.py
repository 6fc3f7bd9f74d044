"""``Segmenter``: run a keras-fpn semantic-segmentation .tflite and return class maps in image pixels.

The model has one output ``seg_logits [1, H, W, K]`` on the model canvas
(float32, or int8/uint8 with a scale and zero point); channel ``k`` is
``labels[k]``, and ``meta["segmentation"]["background_id"]`` (0) means "no
object". A class map is a uint8 ``[h, w]`` array over the ORIGINAL image:
the logits are cropped to the image's content ``[:new_h, :new_w]`` (the
letterbox's, or the whole canvas for a ``stretch`` model: ``fpn_edge.preprocess``),
resized bilinearly per axis (half-pixel centres, = ``tf.image.resize``) to
``h x w`` when the sizes differ, and arg-maxed. When no resize is needed the argmax
runs on the raw integer logits (dequantization is monotonic, so the result
is the same, without a float copy).
"""
from __future__ import annotations

import json

import numpy as np

from fpn_edge.errors import EdgeError
from fpn_edge.interpreter import LoadedInterpreter
from fpn_edge.preprocess import resize_bilinear
from fpn_edge.runner import ModelRunner, dequantize

__all__ = ["Segmenter", "class_fractions"]


class Segmenter(ModelRunner):
    """A loaded keras-fpn TFLite segmenter. Not thread-safe: use one per thread.

    Build with :meth:`from_file` (see :class:`fpn_edge.runner.ModelRunner`).
    """

    task = "segmentation"
    command = "segment"

    def __init__(self, loaded: LoadedInterpreter, meta: dict):
        super().__init__(loaded, meta)
        h, w = self.input_size
        k = len(self.labels)
        found = [d for d in self._outputs if [int(v) for v in d["shape"]] == [1, h, w, k]]
        if len(found) != 1:
            shapes = [[int(v) for v in d["shape"]] for d in self._outputs]
            raise EdgeError(f"{self.path}: expected one output of shape [1, {h}, {w}, {k}] "
                            f"(seg_logits for {k} labels), found {shapes}")
        self._logits_detail = found[0]
        self.background_id = int(meta["segmentation"]["background_id"])

    @staticmethod
    def describe_meta(meta: dict) -> list:
        """``fpn-edge info`` lines: the segmentation settings (background id, ignore label)."""
        return [f"segmentation {json.dumps(meta['segmentation'])}"]

    def logits(self) -> np.ndarray:
        """The last :meth:`invoke`'s logits on the canvas, dequantized: float32 ``[H, W, K]``."""
        d = self._logits_detail
        return dequantize(self._interp.get_tensor(d["index"])[0], d)

    def postprocess(self, info) -> np.ndarray:
        """The last :meth:`invoke`'s class map for the image ``info`` (a ``LetterboxInfo``, either mode) describes.

        Returns:
            uint8 ``[info.orig_h, info.orig_w]`` class ids (index into ``labels``).
        """
        d = self._logits_detail
        raw = self._interp.get_tensor(d["index"])[0, :info.new_h, :info.new_w]
        if (info.new_h, info.new_w) != (info.orig_h, info.orig_w):
            raw = resize_bilinear(dequantize(raw, d), info.orig_h, info.orig_w)
        return np.argmax(raw, axis=-1).astype(np.uint8)

    def segment(self, image) -> np.ndarray:
        """Segment one image (path, PIL image or ``[h, w, 3]`` uint8 RGB array).

        Returns:
            uint8 ``[h, w]`` class map of the original image.
        """
        return self.postprocess(self.run(image))


def class_fractions(class_map: np.ndarray, labels) -> dict:
    """``{label: fraction of the image's pixels}`` for the classes present, largest first."""
    counts = np.bincount(np.asarray(class_map).reshape(-1), minlength=len(labels))
    total = max(int(counts.sum()), 1)
    order = np.argsort(-counts, kind="stable")
    return {str(labels[k]): round(int(counts[k]) / total, 6) for k in order if counts[k] and k < len(labels)}
