"""fpn_edge: the TF-free on-device runtime (numpy, Pillow, ai-edge-litert).

Never imports TensorFlow or Keras. Main entry points::

    from fpn_edge import Detector
    det = Detector.from_file("model_int8.tflite", threads=2, delegate="cpu")
    for d in det.detect("image.jpg"):
        print(d.label, d.score, d.box_xyxy)

    from fpn_edge import Segmenter
    seg = Segmenter.from_file("model_seg_int8.tflite")
    class_map = seg.segment("image.jpg")   # uint8 [h, w], index into seg.labels
"""
from fpn_edge.errors import EdgeError

__all__ = ["Detector", "Detection", "Segmenter", "EdgeError", "read_metadata", "write_metadata"]


def __getattr__(name):  # lazy: `import fpn_edge` stays cheap (no interpreter import)
    if name in ("Detector", "Detection"):
        from fpn_edge import detector
        return getattr(detector, name)
    if name == "Segmenter":
        from fpn_edge import segmenter
        return segmenter.Segmenter
    if name in ("read_metadata", "write_metadata"):
        from fpn_edge import metadata
        return getattr(metadata, name)
    raise AttributeError(f"module 'fpn_edge' has no attribute {name!r}")
