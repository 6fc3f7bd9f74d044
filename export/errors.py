"""The one exception of ``fpn_export``: an export that cannot be done, with a one-line reason."""
from __future__ import annotations

__all__ = ["ExportError"]


class ExportError(RuntimeError):
    """An export failed; the message names the mode, and the op/layer where the converter says."""
