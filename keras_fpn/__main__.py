"""``python -m keras_fpn ...``: the ``keras-fpn`` command."""
import sys

from keras_fpn.cli import main

sys.exit(main())
