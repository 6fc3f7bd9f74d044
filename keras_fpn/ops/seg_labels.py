"""Class-map label values: the one definition of the ignore label, shared by the segmentation data, loss and metrics.

A class map is uint8 ``[H, W]``: 0 = background, ``c + 1`` = contiguous class
``c``, ``IGNORE_LABEL`` = pixels that the loss and the metrics skip (crowd,
overlaps of two classes, unknown outlines, the letterbox padding). The value
is configurable per model (``model.segmentation.ignore_label``); this is its default.
"""

IGNORE_LABEL = 255
