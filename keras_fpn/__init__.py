"""keras-fpn: Feature Pyramid Network detectors and segmenters in Keras 3.

The public API (the README's "Python API" shows it at work)::

    import keras_fpn

    cfg = keras_fpn.Config.from_yaml("synthetic_retinanet_mobilenetv3small", {"train.epochs": 1})
    run = keras_fpn.train(cfg, "runs/demo")        # -> keras_fpn.Run
    run = keras_fpn.Run("runs/demo")               # an existing run directory
    run.model                                      # the Keras model of the best checkpoint
    run.evaluate()                                 # metrics on the config's val split
    run.predict(["photo.jpg"])                     # detections, boxes in original pixels
    path = run.export("int8")                      # a .tflite for fpn_edge.Detector / Segmenter
    report = run.compare(["fp32", "int8"])         # accuracy, latency and size of each variant

Importing the package is cheap: it selects the TensorFlow backend for Keras
(``KERAS_BACKEND=tensorflow``) before Keras is loaded anywhere, and the names
above load on first use. Once Keras is imported, the Keras objects a saved run
names are registered, so ``keras.saving.load_model("RUN/best.keras")`` works
with plain Keras after ``import keras_fpn`` (``keras_fpn.keras_objects``).
"""
import importlib as _importlib
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_fpn import keras_objects as _keras_objects  # noqa: E402  (after KERAS_BACKEND is set)

_keras_objects.register_when_keras_loads()

#: public name -> the module that defines it (imported on first access)
_API = {"Config": "keras_fpn.config.schema", "ConfigError": "keras_fpn.config.schema",
        "train": "keras_fpn.api", "Run": "keras_fpn.api"}

__all__ = ["Config", "ConfigError", "Run", "train", "__version__"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keras-fpn")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        return _version()
    if name in _API:
        value = globals()[name] = getattr(_importlib.import_module(_API[name]), name)
        return value
    raise AttributeError(f"module 'keras_fpn' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(__all__) | {k for k in globals() if not k.startswith("_")})
