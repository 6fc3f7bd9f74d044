"""keras_fpn.data: readers, splits, the synthetic dataset, preprocessing, augmentation, the tf.data pipeline, tools.

Every reader returns a ``DetectionDataset`` (conventions in
``keras_fpn.data.dataset``; bad input in ``keras_fpn.data.issues``; model-input
geometry in ``keras_fpn.data.preprocess``). Readers, splits and tools import
without TensorFlow; the preprocessing, augmentation, pipeline and TFRecord
names are loaded on first use.
"""
from keras_fpn.data.coco import read_coco
from keras_fpn.data.dataset import (DetectionDataset, DetectionRecord, LabelMap, drop_undecodable, include_images,
                                    verify_images)
from keras_fpn.data.formats import FORMATS, detect_format, read_dataset
from keras_fpn.data.images import DataError, load_image, read_image_info
from keras_fpn.data.issues import DataIssue
from keras_fpn.data.splits import load_datasets, load_eval_split, load_split
from keras_fpn.data.synthetic import generate_synthetic_coco
from keras_fpn.data.voc import read_voc
from keras_fpn.data.yolo import read_yolo

_LAZY = {
    "read_tfrecord": "keras_fpn.data.tfrecord",
    "write_tfrecord": "keras_fpn.data.tfrecord",
    "AugmentConfig": "keras_fpn.data.augment",
    "augment_example": "keras_fpn.data.augment",
    "augment_with_mask": "keras_fpn.data.augment",
    "letterbox": "keras_fpn.data.preprocess",
    "normalize": "keras_fpn.data.preprocess",
    "preprocess_for_inference": "keras_fpn.data.preprocess",
    "canvas_to_original": "keras_fpn.data.preprocess",
    "build_detection_dataset": "keras_fpn.data.pipeline",
    "build_segmentation_dataset": "keras_fpn.data.pipeline",
    "build_inference_dataset": "keras_fpn.data.pipeline",
    "representative_images": "keras_fpn.data.pipeline",
}

__all__ = ["DataError", "DataIssue", "DetectionDataset", "DetectionRecord", "FORMATS", "LabelMap",
           "detect_format", "drop_undecodable", "generate_synthetic_coco", "include_images", "load_datasets",
           "load_eval_split", "load_image", "load_split", "read_coco", "read_dataset", "read_image_info",
           "read_voc", "read_yolo", "verify_images", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_fpn.data' has no attribute {name!r}")
