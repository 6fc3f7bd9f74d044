"""Coral / pycoral conventions: an export's detections as pycoral's ``detect.get_objects`` reads them.

``get_objects_like_pycoral`` reimplements (our own code) the output lookup of pycoral 2.x's
``pycoral.adapters.detect.get_objects``:

* a model with one signature: its outputs by name, ``output_0`` count, ``output_1`` scores,
  ``output_2`` class ids, ``output_3`` boxes (a missing name is a KeyError there);
* no signature: by output position, boxes / classes / scores / count when the 4th output
  has one element, else scores / boxes / count / classes;

boxes ``[ymin, xmin, ymax, xmax]`` in 0..1 of the input, scaled to the input size. The tests run it
with the plain interpreter (what pycoral wraps; its Edge TPU delegate does not install here) on the
tiny trained detector's exports and require fpn-edge's detections.
"""
from __future__ import annotations

import numpy as np
import pytest

from fpn_export.interop import CORAL_SIGNATURE

MODES = ("fp32", "int8", "qat-int8")


def get_objects_like_pycoral(interp, score_threshold: float, *, use_signature: bool = True) -> list:
    """``[(class id, score, (xmin, ymin, xmax, ymax) input pixels)]`` the way pycoral 2.x looks outputs up."""
    def value(index):
        return np.asarray(interp.tensor(index)())[0]

    sigs = interp._get_full_signature_list() if use_signature else {}   # pycoral reads the same private call
    if sigs:
        if len(sigs) > 1:
            raise ValueError("pycoral supports one signature")
        outputs = next(iter(sigs.values()))["outputs"]
        count, scores, classes, boxes = (value(outputs[f"output_{k}"]) for k in range(4))
    else:
        details = interp.get_output_details()
        tensors = [value(d["index"]) for d in details]
        if np.asarray(interp.tensor(details[3]["index"])()).size == 1:
            boxes, classes, scores, count = tensors
        else:
            scores, boxes, count, classes = tensors
    _, height, width, _ = interp.get_input_details()[0]["shape"]
    out = []
    for i in range(int(np.asarray(count).reshape(-1)[0])):
        if scores[i] >= score_threshold:
            ymin, xmin, ymax, xmax = boxes[i]
            out.append((int(classes[i]), float(scores[i]), (xmin * width, ymin * height, xmax * width, ymax * height)))
    return out


@pytest.fixture(scope="module")
def val_images(tiny_det_exports):
    """The synthetic validation images: 96 px, the model's input size (boxes in input pixels = image pixels)."""
    from PIL import Image

    data = next(iter(tiny_det_exports.values())).parent.parent / "data" / "val"
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(data.glob("*.jpg"))]


@pytest.mark.parametrize("use_signature", [True, False], ids=["signature", "output-order"])
@pytest.mark.parametrize("mode", MODES)
def test_pycoral_lookup_reads_what_fpn_edge_reads(tiny_det_exports, val_images, mode, use_signature):
    from fpn_edge import Detector

    det = Detector.from_file(tiny_det_exports[mode], threads=1)
    interp = det.interpreter
    # the exported signature and output order, as pycoral looks them up
    assert interp._get_full_signature_list()["serving_default"]["outputs"].keys() == set(CORAL_SIGNATURE.values())
    assert [d["shape"].tolist() for d in interp.get_output_details()] == [[1, 20, 4], [1, 20], [1, 20], [1]]
    total = 0
    for image in val_images:
        ours = det.postprocess(det.run(image))          # fpn-edge finds the outputs through the op
        theirs = sorted(get_objects_like_pycoral(interp, 0.0, use_signature=use_signature), key=lambda o: -o[1])
        assert len(theirs) == len(ours)
        for (cls, score, box), d in zip(theirs, ours):
            assert (cls, score) == (d.class_id, pytest.approx(d.score, abs=1e-6))
            assert np.allclose(np.clip(box, 0, image.shape[0]), d.box_xyxy, atol=1e-3)   # fpn-edge clips
        total += len(ours)
    assert total > 0, "the tiny detector found nothing: the comparison would be empty"
