"""Helpers of the reliability suite: running a CLI in this process, hashing a tree, making bad files."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    code: int
    out: str
    err: str
    warnings: list

    @property
    def lines(self) -> list:
        return [line for line in self.err.splitlines() if line.strip()]


class Tree:
    """Content hashes of every file under a folder, for before / after comparisons."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict = {}

    def snapshot(self) -> dict:
        out = {}
        for path in self.root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            st = path.stat()
            key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
            digest = self._cache.get(key)
            if digest is None:
                digest = self._cache[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(self.root))] = digest
        return out


def run_command(main, argv, capsys, caplog) -> Result:
    """Run a CLI ``main(argv)`` in this process: argparse's exit is a status, anything else raised is a
    traceback the user would see (the test fails with it)."""
    capsys.readouterr()
    caplog.clear()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return Result(code, out, err, warnings)


# --------------------------------------------------------------------------- bad files


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` and holds one empty IDAT: Pillow sees the size at open."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def truncate_copy(src: Path, dst: Path, keep: float | int) -> Path:
    data = src.read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    dst.write_bytes(data[:n] if n >= 0 else data[:len(data) + n])
    return dst


def voc_folder(folder: Path, images: list, broken: bool = False) -> None:
    folder.mkdir(parents=True)
    for k, src in enumerate(images):
        shutil.copy(src, folder / f"v{k}.jpg")
        (folder / f"v{k}.xml").write_text(
            f"<annotation><filename>v{k}.jpg</filename><size><width>64</width><height>64</height></size>"
            "<object><name>circle</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>40</xmax><ymax>40</ymax>"
            "</bndbox></object></annotation>")
    if broken:
        (folder / "v0.xml").write_text("<annotation><filename>v0.jpg</filename><object>")


def yolo_folder(folder: Path, images: list, broken: bool = False) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    (folder / "classes.txt").write_text("circle\nsquare\n")
    for k, src in enumerate(images):
        shutil.copy(src, folder / "images" / f"y{k}.jpg")
        (folder / "labels" / f"y{k}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    if broken:
        (folder / "labels" / "y0.txt").write_text("0 0.5 0.5\n")


def coco_with(src: Path, dst: Path, *, names=None, images=None) -> Path:
    """A copy of a COCO JSON with absolute image paths, other class names, or other image files."""
    from keras_fpn.data import read_coco

    data = json.loads(src.read_text())
    paths = {r.image_id: r.image_path for r in read_coco(src).records}
    for i, img in enumerate(data["images"]):
        img["file_name"] = str(images[i] if images and i < len(images) else paths[img["id"]])
    if names:
        for cat, name in zip(data["categories"], names):
            cat["name"] = name
    dst.write_text(json.dumps(data))
    return dst
