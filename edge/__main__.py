"""``python -m fpn_edge ...``: the ``fpn-edge`` command (no TensorFlow)."""
import sys

from fpn_edge.cli import main

sys.exit(main())
