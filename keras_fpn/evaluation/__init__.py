"""Evaluation of each task: metrics of a Keras model or an exported .tflite on a dataset."""
