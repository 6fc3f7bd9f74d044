"""fpn_edge.atomic: the one atomic writer (temp file + fsync + rename, umask-honouring mode)."""
import json
import os
import stat

import pytest

from fpn_edge import atomic
from fpn_edge.atomic import atomic_path, current_umask, write_bytes_atomic, write_json_atomic, write_text_atomic

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _leftovers(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


@posix_only
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mode_follows_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    write_text_atomic(tmp_path / "b.txt", "x")
    write_json_atomic(tmp_path / "c.json", {"x": 1})
    with atomic_path(tmp_path / "d.png") as tmp:
        tmp.write_bytes(b"png")
    for name in ("a.bin", "b.txt", "c.json", "d.png"):
        assert _mode(tmp_path / name) == mode, name
    # a file that was there (with another mode) gets the umask's mode too, as a new file would
    (tmp_path / "a.bin").chmod(0o600 if mode != 0o600 else 0o644)
    write_bytes_atomic(tmp_path / "a.bin", b"y")
    assert _mode(tmp_path / "a.bin") == mode


@posix_only
def test_umask_read_without_proc(tmp_path, umask, monkeypatch):
    """Where /proc/self/status cannot be read the umask is read by setting it back."""
    umask(0o027)

    def no_proc(*args, **kwargs):
        raise OSError("no /proc")

    monkeypatch.setattr(atomic, "open", no_proc, raising=False)
    assert current_umask() == 0o027
    monkeypatch.undo()
    assert current_umask() == 0o027
    write_bytes_atomic(tmp_path / "a", b"x")
    assert _mode(tmp_path / "a") == 0o640


def test_bytes_text_json_content(tmp_path):
    assert write_bytes_atomic(tmp_path / "new" / "a.bin", b"\x00\x01") == tmp_path / "new" / "a.bin"
    assert (tmp_path / "new" / "a.bin").read_bytes() == b"\x00\x01"
    write_text_atomic(tmp_path / "t.txt", "caf\u00e9\nline\r\n")
    assert (tmp_path / "t.txt").read_bytes() == "caf\u00e9\nline\r\n".encode("utf-8")
    obj = {"b": [1, 2.5, None], "a": "x"}
    write_json_atomic(tmp_path / "j.json", obj)
    assert (tmp_path / "j.json").read_text() == json.dumps(obj, indent=2) + "\n"
    write_json_atomic(tmp_path / "k.json", obj, indent=None, separators=(",", ":"), trailing_newline=False)
    assert (tmp_path / "k.json").read_text() == '{"b":[1,2.5,null],"a":"x"}'
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "new") == []


def test_unserialisable_json_keeps_old_file(tmp_path):
    target = tmp_path / "r.json"
    target.write_bytes(b'{"old": true}\n')
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomic(target, _circular())
    assert target.read_bytes() == b'{"old": true}\n'
    assert _leftovers(tmp_path) == []


def _circular():
    a = []
    a.append(a)
    return a


def test_writer_failing_midway_keeps_old_file(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old model")
    seen = {}
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            seen["tmp"] = tmp
            tmp.write_bytes(b"half a new mod")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old model"
    assert not seen["tmp"].exists() and _leftovers(tmp_path) == []
    # KeyboardInterrupt too
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old model" and _leftovers(tmp_path) == []


def test_failed_rename_removes_temp(tmp_path):
    """A target that cannot be replaced (a non-empty folder) raises and leaves no temp file."""
    target = tmp_path / "out.json"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_json_atomic(target, {"a": 1})
    assert (target / "keep").read_text() == "x" and _leftovers(tmp_path) == []


def test_temp_path_keeps_the_suffix_and_folder(tmp_path):
    """Writers that pick the format from the name (Keras, PIL) see the target's full suffix."""
    for name in ("last.weights.h5", "last.keras", "grid.png"):
        with atomic_path(tmp_path / "sub" / name) as tmp:
            assert tmp.parent == tmp_path / "sub"
            assert tmp.name.startswith(".tmp-") and tmp.name.endswith("-" + name)
            assert tmp.is_file()  # reserved: no other writer gets the same name
            tmp.write_bytes(name.encode())
        assert (tmp_path / "sub" / name).read_bytes() == name.encode()
    assert _leftovers(tmp_path / "sub") == []


def test_pil_save_through_atomic_path_gives_the_same_bytes(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    for fmt, kw, name in (("JPEG", {"quality": 92}, "a.jpg"), ("PNG", {}, "a.png")):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        with atomic_path(tmp_path / name) as tmp:
            img.save(tmp, format=fmt, **kw)
        assert (tmp_path / name).read_bytes() == buf.getvalue()


@posix_only
def test_keras_fpn_writers_use_it(tmp_path, umask):
    """The keras_fpn writers (config, labels, COCO JSON) write through fpn_edge.atomic."""
    from keras_fpn.config import config_from_dict, config_to_dict, save_config
    from keras_fpn.data.dataset import write_json_atomic as write_coco_json
    from keras_fpn.rundir import save_labels

    umask(0o022)
    cfg = config_from_dict({})
    save_config(cfg, tmp_path / "config.yaml")
    import yaml

    assert (tmp_path / "config.yaml").read_text() == yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    save_labels(tmp_path / "labels.txt", ["a", "b"])
    assert (tmp_path / "labels.txt").read_bytes() == b"a\nb\n"
    write_coco_json(tmp_path / "c.json", {"images": [{"id": 1}], "x": "y"})
    assert (tmp_path / "c.json").read_bytes() == b'{"images":[{"id":1}],"x":"y"}'
    for name in ("config.yaml", "labels.txt", "c.json"):
        assert _mode(tmp_path / name) == 0o644, name
    assert _leftovers(tmp_path) == []


def test_a_failed_write_names_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "old.json").write_text("{}")
    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError) as info:
        write_text_atomic(tmp_path / "old.json", "new")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "old.json")
    assert (tmp_path / "old.json").read_text() == "{}" and _leftovers(tmp_path) == []


def test_check_writable_fails_before_any_work(tmp_path):
    from fpn_edge.atomic import check_writable

    assert check_writable(tmp_path / "new" / "sub", folder=True).is_dir()  # made, and nothing left in it
    assert list((tmp_path / "new" / "sub").iterdir()) == []
    assert check_writable(tmp_path / "out" / "report.json") == tmp_path / "out" / "report.json"
    assert not (tmp_path / "out" / "report.json").exists() and _leftovers(tmp_path / "out") == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        check_writable(tmp_path / "f", folder=True)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder") as info:
        check_writable(tmp_path / "f" / "x.json")
    assert info.value.filename == str(tmp_path / "f" / "x.json")
    with pytest.raises(IsADirectoryError, match="is a folder, not a file"):
        check_writable(tmp_path / "new")
