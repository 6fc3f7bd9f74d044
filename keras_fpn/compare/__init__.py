"""keras_fpn.compare: the before/after quantization report and the end-to-end demo."""
