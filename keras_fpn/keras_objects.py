"""The Keras objects a run's saved model names, registered with Keras as soon as Keras is loaded.

``RUN/best.keras`` and ``RUN/last.keras`` hold the compiled model: besides the
built-in layers, its losses (``keras_fpn>FocalLoss``, ``keras_fpn>BoxLoss``,
``keras_fpn>SegmentationLoss``) and its optimizer's learning-rate schedule
(``keras_fpn>WarmupCosine``) by registered name. ``keras.saving.load_model``
finds them only once the modules defining them have run. ``import keras_fpn``
arranges that without loading TensorFlow itself: if Keras is already imported,
the modules are imported at once; otherwise a finder on ``sys.meta_path`` waits
for the import of ``keras`` and imports them right after it (the finder finds
nothing itself and removes itself once Keras has loaded).
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys

#: the modules whose import registers the objects (``@keras.saving.register_keras_serializable``)
MODULES = ("keras_fpn.ops.losses", "keras_fpn.ops.seg_losses", "keras_fpn.training.optimizer")


def register() -> None:
    """Import the modules of ``MODULES`` (this imports Keras and TensorFlow)."""
    for name in MODULES:
        importlib.import_module(name)


def _register_after_keras() -> None:
    try:
        register()
    except ImportError:
        # Keras was first imported by one of MODULES, part-way through a chain of keras_fpn imports
        # that cannot complete yet: that chain finishes the registration of its module itself.
        pass


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``keras`` so that ``register`` runs right after the module has executed.

    A look-up alone (``importlib.util.find_spec("keras")``, as TensorFlow's import does) loads
    nothing: the finder stays until a spec it returned is executed, then removes itself.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        spec = None
        for finder in sys.meta_path:  # the finders after this one locate keras
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_keras = loader.exec_module

        def exec_module(module):
            run_keras(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_after_keras()

        loader.exec_module = exec_module
        return spec


def register_when_keras_loads() -> None:
    """Register the objects now if Keras is loaded, else right after Keras is first imported."""
    if "keras" in sys.modules:
        _register_after_keras()
    elif not any(isinstance(f, _AfterKerasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())
