"""fpn_export.qat: tfmot QAT / pruning of the tf_keras twin, and the qat-int8 export."""
from __future__ import annotations

import numpy as np
import pytest

import export_helpers as H


def _train_data(raccoon_dir, n=4, batch=2):
    from keras_fpn.data.pipeline import build_detection_dataset
    from keras_fpn.ops.anchors import model_anchors

    ds = H.raccoon(raccoon_dir).subset(range(n))
    cfg = H.tiny_config()
    return build_detection_dataset(ds, image_size=H.SIZE, anchors=model_anchors(cfg.model),
                                   normalization=H.NORM, batch_size=batch, training=True, seed=0)


def test_tf_keras_losses_equal_the_training_losses():
    """The tf_keras wrappers return the Keras 3 losses' values, also for C == 1 (no squeeze)."""
    import tensorflow as tf

    from fpn_export.qat import tf_keras_losses
    from keras_fpn.config import Config
    from keras_fpn.ops.losses import BoxLoss, FocalLoss

    rng = np.random.default_rng(0)
    cls_t = rng.choice([-2.0, -1.0, 0.0], size=(2, 50)).astype(np.float32)
    cls_p = rng.normal(size=(2, 50, 1)).astype(np.float32)
    box_t = np.concatenate([rng.normal(size=(2, 50, 4)), (cls_t >= 0)[..., None]], -1).astype(np.float32)
    box_p = rng.normal(size=(2, 50, 4)).astype(np.float32)
    losses, weights = tf_keras_losses(Config())
    assert weights == {"box_deltas": 50.0, "class_logits": 1.0}
    got_c = float(losses["class_logits"](tf.constant(cls_t), tf.constant(cls_p)))
    got_b = float(losses["box_deltas"](tf.constant(box_t), tf.constant(box_p)))
    assert got_c == pytest.approx(float(FocalLoss()(cls_t, cls_p)), rel=1e-5)
    assert got_b == pytest.approx(float(BoxLoss()(box_t, box_p)), rel=1e-5)


def test_init_qat_ranges_sets_activation_ranges_from_data():
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from fpn_export.qat import init_qat_ranges

    x = tf_keras.Input((8, 8, 3))
    y = tf_keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    y = tf_keras.layers.ReLU(name="relu")(y)
    y = tf_keras.layers.Conv2D(2, 1, name="head")(y)
    model = tf_keras.Model(x, y)
    q = tfmot.quantization.keras.quantize_model(model)
    ranges = {w.name: float(w.numpy()) for w in q.weights if w.name.endswith(("_min:0", "_max:0"))
              and w.shape.rank == 0}
    assert ranges["quant_head/post_activation_max:0"] == 6.0   # tfmot's start
    imgs = [np.random.default_rng(i).normal(size=(1, 8, 8, 3)).astype(np.float32) for i in range(3)]
    assert init_qat_ranges(q, model, imgs) == 2
    head = np.concatenate([np.asarray(model(i)) for i in imgs])
    got = {w.name: float(w.numpy()) for w in q.weights if w.shape.rank == 0}
    assert got["quant_head/post_activation_min:0"] == pytest.approx(min(head.min(), 0.0), rel=1e-5)
    assert got["quant_head/post_activation_max:0"] == pytest.approx(max(head.max(), 0.0), rel=1e-5)
    relu = np.concatenate([np.asarray(tf_keras.Model(x, model.get_layer("relu").output)(i)) for i in imgs])
    assert got["quant_relu/output_max:0"] == pytest.approx(relu.max(), rel=1e-5)


def test_qat_int8_export_converts_and_runs(tmp_path, mobilenet_v2_weights, raccoon_dir):
    """2 QAT steps on 4 raccoon images (batch 2), full integer, uint8 input, Edge-TPU-clean."""
    from fpn_edge.detector import Detector
    from fpn_edge.metadata import read_metadata
    from fpn_export.detection import export_detector
    from fpn_export.edgetpu import check_edgetpu
    from fpn_export.flatbuffer import op_counts

    path = export_detector(H.tiny_model(mobilenet_v2_weights[0.35]), H.tiny_config(raccoon_dir), H.LABELS,
                           "qat-int8", out=tmp_path / "qat.tflite", raw=True,
                           representative=H.calibration(raccoon_dir), train_data=_train_data(raccoon_dir))
    meta, _ = read_metadata(path)
    assert meta["export"]["mode"] == "qat-int8" and meta["export"]["qat_steps"] == 2
    assert meta["export"]["qat_ranges_initialized"] > 50 and np.isfinite(meta["export"]["qat_loss"])
    counts = op_counts(path)
    assert counts["CONV_2D"] == 63 and counts["RESIZE_NEAREST_NEIGHBOR"] == 2 and "TILE" not in counts
    assert check_edgetpu(path).clean
    det = Detector.from_file(path)
    assert det.input_dtype == np.uint8
    out = det.raw_outputs(H.evaluation(raccoon_dir)[0])
    assert out["box_deltas"].shape == (1, 3069, 4) and out["class_logits"].shape == (1, 3069, 1)
    assert all(np.all(np.isfinite(v)) for v in out.values())


@pytest.mark.slow
def test_prune_then_qat_keeps_sparsity(tmp_path, mobilenet_v2_weights, raccoon_dir):
    """--prune 0.5 with qat-int8: the int8 conv kernels of the .tflite are >= ~45 % zeros."""
    from fpn_export.detection import export_detector
    from fpn_export.flatbuffer import read_graph

    cfg = H.with_export(H.tiny_config(raccoon_dir), qat_steps=3)
    path = export_detector(H.tiny_model(mobilenet_v2_weights[0.35]), cfg, H.LABELS, "qat-int8",
                           out=tmp_path / "pqat.tflite", raw=True, prune=0.5,
                           representative=H.calibration(raccoon_dir), train_data=_train_data(raccoon_dir))
    from tensorflow.lite.python import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    sg = m.subgraphs[0]
    zeros = total = 0
    for op in read_graph(path).ops:
        if op.name == "CONV_2D":
            w = op.inputs[1]
            data = np.frombuffer(bytes(bytearray(m.buffers[sg.tensors[w.index].buffer].data)), np.int8)
            zeros += int((data == 0).sum())
            total += data.size
    assert zeros / total >= 0.45


def test_seg_qat_int8_export_runs_in_litert(tiny_seg_run, tiny_seg_exports):
    """qat-int8 of a small trained segmenter (conftest: 40 training steps, then 2 QAT steps of batch 2):
    full integer with uint8 I/O, run through fpn_edge.Segmenter in ai_edge_litert; on the 4 val images its
    mIoU is within 0.05 of the float Keras model's (measured: 0.145 vs 0.133; another training run 0.176 vs
    0.159) and >= 80 % of the pixels keep the float model's class (measured: 92 %)."""
    from fpn_edge.metadata import read_metadata
    from fpn_edge.segmenter import Segmenter
    from keras_fpn.evaluation.segmentation import predict_class_maps, score_class_maps, tflite_class_maps
    from keras_fpn.rundir import open_run
    from keras_fpn.data.splits import load_datasets

    path = tiny_seg_exports["qat-int8"]
    meta, _ = read_metadata(path)
    export = meta["export"]
    assert export["mode"] == "qat-int8" and export["qat_steps"] == 2 and export["io_dtype"] == "uint8"
    assert export["qat_ranges_initialized"] > 20 and np.isfinite(export["qat_loss"])
    seg = Segmenter.from_file(path, threads=1)
    assert seg.backend == "ai-edge-litert"
    assert seg.input_dtype == np.uint8 and seg._logits_detail["dtype"] == np.uint8

    run = open_run(tiny_seg_run)
    val = load_datasets(run.config)[1]
    float_maps = list(predict_class_maps(run.build_model(), val, run.config.model))
    qat_maps = list(tflite_class_maps(path, val, threads=1))
    flt = score_class_maps(float_maps, run.labels)
    qat = score_class_maps(qat_maps, run.labels)
    assert qat["num_images"] == flt["num_images"] == 4
    assert abs(qat["mIoU"] - flt["mIoU"]) < 0.05, (qat["mIoU"], flt["mIoU"])
    assert abs(qat["pixel_accuracy"] - flt["pixel_accuracy"]) < 0.05
    agree = np.mean([np.mean(q == f) for (_, q), (_, f) in zip(qat_maps, float_maps)])
    assert agree > 0.8, agree
