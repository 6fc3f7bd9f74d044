"""The one exception type fpn_edge raises for user errors (bad file, missing library)."""


class EdgeError(Exception):
    """A user-facing error: a one-line message that names the file or library at fault.

    The CLI prints ``fpn-edge: error: <message>`` and exits with status 2 instead
    of showing a traceback.
    """
