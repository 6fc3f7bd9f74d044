"""fpn_edge: the TF-free on-device runtime (numpy, Pillow, ai-edge-litert) of keras-fpn's .tflite exports.

Never imports TensorFlow or Keras: ``pip install --no-deps keras-fpn`` plus the ``[edge]``
requirements is all a device needs. The public names (loaded on first use)::

    from fpn_edge import Detector
    det = Detector.from_file("model_int8.tflite", threads=2, delegate="cpu")   # or "edgetpu"
    for d in det.detect("image.jpg"):        # a path, a PIL image or a uint8 RGB array [h, w, 3]
        print(d.label, d.score, d.box_xyxy)  # (x1, y1, x2, y2) in the image's pixels, best first

    from fpn_edge import Segmenter
    seg = Segmenter.from_file("model_seg_int8.tflite")
    class_map = seg.segment("image.jpg")     # uint8 [h, w] of the image, index into seg.labels

``Detection`` is one detection (also ``box_yxyx``, normalized to the image; ``to_dict()``),
``EdgeError`` the one-line error of every user mistake (file, metadata, delegate),
``read_metadata`` / ``write_metadata`` the keras-fpn metadata inside a .tflite. The command
line is ``fpn-edge`` (``python -m fpn_edge``): detect, segment, bench, info.
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
