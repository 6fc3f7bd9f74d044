"""Standard TFLite metadata, the SSD output convention and the one stored archive of every export.

The standard runtimes themselves run in ``tests/interop`` (their own venv); here the exports are
read back with fpn_edge's TF-free reader and checked against the graph.
"""
from __future__ import annotations

import io
import json
import zipfile

import export_helpers as H
import numpy as np
import pytest

from fpn_edge.metadata import META_NAME, read_metadata, strip_metadata, write_metadata
from fpn_edge.standard_metadata import read_standard_metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mobilenet_v2_weights, raccoon_dir):
    root = tmp_path_factory.mktemp("interop_exports")
    return lambda mode, raw=False: H.export(root, mobilenet_v2_weights[0.35], raccoon_dir, mode, raw=raw)


def _op_output_names(path) -> list:
    """The standard name each model output must have: by its position in the op's output list."""
    from fpn_export.flatbuffer import read_graph
    from fpn_export.interop import DETECTION_OUTPUT_NAMES
    from fpn_export.postprocess_op import OP_NAME

    g = read_graph(path.read_bytes())
    op = next(o for o in g.ops if o.name == OP_NAME)
    where = {t.index: k for k, t in enumerate(op.outputs)}
    return [DETECTION_OUTPUT_NAMES[where[t.index]] for t in g.outputs]


@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_detector_standard_metadata(exported, mode):
    path = exported(mode)
    meta, _ = read_metadata(path)
    std = read_standard_metadata(path)
    assert std["min_parser_version"] == "1.2.0" and std["author"] == "keras-fpn"
    (image,) = std["inputs"]
    assert image["content"] == "image"
    assert image["normalization"] == {"mean": meta["input"]["normalization"]["mean"],
                                      "std": meta["input"]["normalization"]["std"]}
    names = [t["name"] for t in std["outputs"]]
    assert names == _op_output_names(path) == ["location", "category", "score", "number of detections"]
    assert [t.get("content") for t in std["outputs"]] == ["bounding box", "feature", "feature", None]
    assert std["outputs"][1]["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_VALUE_LABELS"}]
    assert std["output_groups"] == {"detection_result": ["location", "category", "score"]}
    assert std["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_VALUE_LABELS", "in_archive": "stored"}]


def test_one_stored_archive_with_our_labels(exported):
    path = exported("int8")
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert set(infos) == {META_NAME, "labels.txt"}
        assert {i.compress_type for i in infos.values()} == {zipfile.ZIP_STORED}
        assert zf.read("labels.txt").decode() == "".join(f"{s}\n" for s in H.LABELS)


def test_outputs_named_by_the_op_not_by_their_order(exported):
    """Permute a converted model's outputs, attach again: the names follow the tensors, and the outputs end in
    the op's order under pycoral's signature names."""
    from fpn_export.flatbuffer import read_graph, read_model, signature_outputs, set_outputs, write_model
    from fpn_export.interop import CORAL_SIGNATURE, attach_standard_metadata
    from fpn_export.postprocess_op import OP_NAME

    path = exported("fp32")
    meta, _ = read_metadata(path)
    model = read_model(strip_metadata(path.read_bytes()))
    outs = [int(i) for i in model.subgraphs[0].outputs]
    shuffled = [outs[k] for k in (2, 0, 3, 1)]
    set_outputs(model, shuffled, {t: f"x{t}" for t in shuffled})
    data = attach_standard_metadata(write_model(model), meta)
    g = read_graph(data)
    op = next(o for o in g.ops if o.name == OP_NAME)
    assert [t.index for t in g.outputs] == [t.index for t in op.outputs]
    assert signature_outputs(read_model(data)) == {CORAL_SIGNATURE[k]: t.index for k, t in enumerate(op.outputs)}
    out = path.with_name("permuted.tflite")
    write_metadata(data, meta, None, out)
    assert [t["name"] for t in read_standard_metadata(out)["outputs"]] == _op_output_names(out)


def test_raw_export_names_its_two_outputs(exported):
    std = read_standard_metadata(exported("fp32", raw=True))
    assert sorted(t["name"] for t in std["outputs"]) == ["box_deltas", "class_logits"]
    logits = next(t for t in std["outputs"] if t["name"] == "class_logits")
    assert logits["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS"}]


def test_segmenter_standard_metadata(tiny_seg_exports):
    path = tiny_seg_exports["int8"]
    std = read_standard_metadata(path)
    assert std["min_parser_version"] == "1.5.0" and std["custom_metadata"] == ["SEGMENTER_METADATA"]
    (out,) = std["outputs"]
    assert out["name"] == "segmentation_masks"
    assert out["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS"}]
    labels = zipfile.ZipFile(path).read("labels.txt").decode().splitlines()
    assert labels == read_metadata(path)[0]["labels"] and labels[0] == "background"


def test_old_compressed_archive_still_reads(exported, tmp_path, capsys):
    """Exports before the standard metadata: no TFLITE_METADATA, a deflated archive. fpn-edge reads both kinds."""
    from fpn_edge.cli import main

    path = exported("int8")
    meta, _ = read_metadata(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(META_NAME, json.dumps(meta))
        zf.writestr("labels.txt", "".join(f"{s}\n" for s in meta["labels"]))
    old = tmp_path / "old.tflite"
    old.write_bytes(strip_metadata(path.read_bytes()) + buf.getvalue())
    assert read_metadata(old)[0]["labels"] == meta["labels"]
    assert read_standard_metadata(old)["associated_files"][0]["in_archive"] == "compressed"
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "standard metadata (TFLITE_METADATA, min parser 1.2.0)" in text
    assert "outputs 'location', 'category', 'score', 'number of detections'" in text
    assert "labels.txt (TENSOR_VALUE_LABELS; in the archive: stored)" in text and "task     detection" in text
    assert main(["info", str(old), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["labels"] == meta["labels"] and info["standard_metadata"]["name"]


def test_no_standard_metadata_is_none_and_garbage_is_an_error(exported, tmp_path):
    from fpn_edge.errors import EdgeError
    from fpn_export.flatbuffer import read_model, set_metadata, write_model

    bare = tmp_path / "bare.tflite"
    bare.write_bytes(_without_standard(exported("fp32")))
    assert read_standard_metadata(bare) is None
    model = read_model(strip_metadata(exported("fp32").read_bytes()))
    set_metadata(model, "TFLITE_METADATA", b"\x08\x00\x00\x00XXXX" + bytes(8))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(write_model(model))
    with pytest.raises(EdgeError, match=r"bad\.tflite: TFLITE_METADATA is not a metadata flatbuffer"):
        read_standard_metadata(bad)


def _without_standard(path) -> bytes:
    from fpn_export.flatbuffer import read_model, write_model

    model = read_model(strip_metadata(path.read_bytes()))
    model.metadata = [m for m in model.metadata if m.name not in (b"TFLITE_METADATA", "TFLITE_METADATA")]
    return write_model(model)


def test_metadata_buffer_is_the_standard_one(exported):
    """The ``M001`` flatbuffer sits in a model buffer (fpn_edge reads it without TensorFlow)."""
    from fpn_export.flatbuffer import read_model

    model = read_model(strip_metadata(exported("fp32").read_bytes()))
    entry = next(m for m in model.metadata if m.name in (b"TFLITE_METADATA", "TFLITE_METADATA"))
    blob = np.asarray(model.buffers[entry.buffer].data, np.uint8).tobytes()
    assert blob[4:8] == b"M001"
