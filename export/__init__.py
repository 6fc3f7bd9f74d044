"""fpn_export: Keras -> TFLite conversion, quantization (PTQ, QAT, pruning), the in-graph post-process."""
