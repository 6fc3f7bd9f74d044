"""keras_fpn.data: readers, the synthetic dataset, the tf.data pipeline, data tools.

Every reader returns a ``DetectionDataset`` (conventions in
``keras_fpn.data.dataset``). Readers and tools import without TensorFlow;
the pipeline and TFRecord names are loaded on first use.
"""
from keras_fpn.data.coco import read_coco
from keras_fpn.data.dataset import DetectionDataset, DetectionRecord, LabelMap, include_images, verify_images
from keras_fpn.data.formats import FORMATS, detect_format, read_dataset
from keras_fpn.data.images import DataError, load_image, read_image_info
from keras_fpn.data.issues import DataIssue
from keras_fpn.data.synthetic import generate_synthetic_coco
from keras_fpn.data.voc import read_voc
from keras_fpn.data.yolo import read_yolo

_LAZY = {
    "read_tfrecord": "keras_fpn.data.tfrecord",
    "write_tfrecord": "keras_fpn.data.tfrecord",
    "AugmentConfig": "keras_fpn.data.pipeline",
    "letterbox": "keras_fpn.data.pipeline",
    "normalize": "keras_fpn.data.pipeline",
    "preprocess_for_inference": "keras_fpn.data.pipeline",
    "canvas_to_original": "keras_fpn.data.pipeline",
    "build_detection_dataset": "keras_fpn.data.pipeline",
    "build_inference_dataset": "keras_fpn.data.pipeline",
    "representative_images": "keras_fpn.data.pipeline",
}

__all__ = ["DataError", "DataIssue", "DetectionDataset", "DetectionRecord", "FORMATS", "LabelMap",
           "detect_format", "generate_synthetic_coco", "include_images", "load_image", "read_coco",
           "read_dataset", "read_image_info", "read_voc", "read_yolo", "verify_images", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_fpn.data' has no attribute {name!r}")
