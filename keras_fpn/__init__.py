"""keras-fpn: Feature Pyramid Network detectors in Keras 3.

Importing this package selects the TensorFlow backend for Keras
(``KERAS_BACKEND=tensorflow``) before Keras is loaded anywhere.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
