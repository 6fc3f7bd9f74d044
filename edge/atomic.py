"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

The artifacts keras-fpn writes (models, checkpoints, configs, labels, reports,
JSON, images; in fpn_edge, fpn_export and keras_fpn) go through this module, so
all of them behave the same way (logs that Keras appends to, such as history.csv
and TensorBoard events, are the exception):

* the data is written to a temporary file beside the target (same file
  system, so the rename is atomic), flushed and fsynced;
* the temporary file is renamed over the target with ``os.replace`` and the
  folder is fsynced where the OS allows it, so the rename survives a crash;
* the final file's mode is ``0o666 & ~umask``, as for a file made by ``open``
  (not the 0600 of ``tempfile.mkstemp``);
* on any error the temporary file is removed and a file already at the
  target is left as it was: a reader sees the old file or the new one, never
  half of one; an ``OSError`` (full disk, read-only folder) names the target
  in its ``filename``, not the temporary file.

Writers that need a file name rather than bytes (``PIL.Image.save``, Keras
``model.save``, TFRecord writers, ``shutil.copyfile``) use :func:`atomic_path`;
its temporary name ends with the target's name, so writers that pick the
format from the suffix (``.keras``, ``.weights.h5``, ``.png``) pick the same one.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json_atomic", "atomic_path", "check_writable",
           "current_umask"]


def current_umask() -> int:
    """This process's umask, read without changing it where the OS says it (Linux >= 4.7).

    Elsewhere it is read by setting it and setting it back, which another thread
    creating a file at that moment could observe.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, give it the umask's mode and rename it to ``path``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    if os.name == "posix":
        os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)
    _fsync_folder(path.parent)


@contextmanager
def atomic_path(path):
    """Yield a temporary path to write ``path``'s content to; commit it when the block ends.

    The temporary file exists (empty) and lies in ``path``'s folder (created if
    missing); its name ends with ``-<path's name>``. When the block ends
    normally it is fsynced, given the mode ``0o666 & ~umask`` and renamed to
    ``path``; when the block raises it is removed and ``path`` is untouched (an
    ``OSError`` about the temporary file is raised naming ``path``).

    Example::

        with atomic_path(run_dir / "last.keras") as tmp:
            model.save(tmp)
    """
    path = Path(path)
    try:
        tmp = _temp_file(path)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        yield tmp
        _commit(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp), os.fspath(tmp)):
            raise _naming(e, path) from None
        raise


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` (same errno, so the same OSError subclass) naming the target file: ``filename`` is
    ``path``, whatever temporary file or folder the failing call named (or none, as writers
    like h5py and ``f.write`` on a full disk give)."""
    return OSError(e.errno, e.strerror or " ".join(str(e).split()) or type(e).__name__, str(path))


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (module docstring); returns ``Path(path)``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` UTF-8 encoded (line ends as given) to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj, *, indent: int | None = 2, separators=None,
                      trailing_newline: bool = True) -> Path:
    """Write ``json.dumps(obj, indent=indent, separators=separators)`` to ``path`` atomically.

    ``trailing_newline`` appends ``"\\n"``. The object is serialised before any
    file is made, so one that JSON cannot hold raises (TypeError, ValueError)
    without touching ``path``. Returns the path.
    """
    text = json.dumps(obj, indent=indent, separators=separators)
    return write_text_atomic(path, text + "\n" if trailing_newline else text)


def check_writable(path, *, folder: bool = False) -> Path:
    """Check before any work that ``path`` can be written: a file (its folder must take one), or
    with ``folder`` a folder. The folder is created if missing; a temporary file is made in it
    and removed. Commands call it first, so a bad output path fails at once, not after the run.

    Returns:
        ``Path(path)``.

    Raises:
        OSError: naming ``path`` (a file where a folder is wanted or the reverse, a folder
            that cannot be made or written).
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path))
    if not folder and path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a folder", str(path))
    try:
        tmp = _temp_file(path / "probe" if folder else path.parent / f"probe-{path.name}")
        tmp.unlink()
    except OSError as e:
        raise _naming(e, path) from None
    return path
