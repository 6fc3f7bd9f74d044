"""The configs shipped with the package: list them, read one, load a config by file path or by name.

The project's ``configs/`` folder is installed as the package ``keras_fpn.configs``
(``pyproject.toml`` maps it), so the YAML files are read with ``importlib.resources``
the same way from a wheel and from an editable install. A shipped config's name is
its file name without ``.yaml``; its first comment line says what it is for.

Relative paths in a config (``data.*``, ``model.backbone.weights``) resolve against
the folder of a config *file*; a shipped config loaded *by name* resolves them against
the current directory (its own folder is inside the installed package), and so do
relative paths given as overrides to it.
"""
from __future__ import annotations

import json
import os
import typing
from importlib import resources
from pathlib import Path

from keras_fpn.config.schema import Config, ConfigError

#: the package that holds the shipped YAML files
PACKAGE = "keras_fpn.configs"
SUFFIX = ".yaml"

#: ``section.key=value`` strings, or ``{"section.key": value}`` (values as YAML / Python values)
Overrides = typing.Union[typing.Sequence[str], typing.Mapping[str, object]]


def _entries():
    return sorted((e for e in resources.files(PACKAGE).iterdir() if e.name.endswith(SUFFIX)),
                  key=lambda e: e.name)


def _first_comment(text: str) -> str:
    """The first comment line of a YAML text (before its first key), without the ``#``."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            break
    return ""


def shipped_configs() -> dict[str, str]:
    """``{name: first comment line}`` of every shipped config, sorted by name."""
    return {e.name[:-len(SUFFIX)]: _first_comment(e.read_text()) for e in _entries()}


def _stem(name: str) -> str:
    return name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name


def is_shipped(name) -> bool:
    """``name`` (with or without ``.yaml``) is a shipped config's name (a bare name, not a path)."""
    name = os.fspath(name)
    return len(Path(name).parts) == 1 and resources.files(PACKAGE).joinpath(_stem(name) + SUFFIX).is_file()


def shipped_config_text(name: str) -> str:
    """The YAML text of a shipped config, comments included (``keras-fpn configs show NAME``)."""
    if not is_shipped(name):
        raise ConfigError(f"no shipped config named {name!r} (shipped: {', '.join(shipped_configs())})")
    return resources.files(PACKAGE).joinpath(_stem(os.fspath(name)) + SUFFIX).read_text()


def override_strings(overrides: Overrides | None) -> list[str]:
    """``section.key=value`` strings of ``overrides``; a mapping's values are written as JSON (which
    YAML reads back as the same value; a path becomes its string)."""
    if not overrides:
        return []
    if isinstance(overrides, typing.Mapping):
        return [f"{key}={json.dumps(os.fspath(v) if isinstance(v, os.PathLike) else v)}"
                for key, v in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"overrides: expected a list of section.key=value strings or a mapping, got {overrides!r}")
    return list(overrides)


def load_path_or_name(path_or_name: str | os.PathLike, overrides: Overrides | None = None) -> Config:
    """A config from a YAML file or, when no such file exists and the value is a bare name, from the
    shipped config of that name; plus overrides (see the module docstring for relative paths)."""
    from keras_fpn.config.loader import load_config

    items = override_strings(overrides)
    path = Path(path_or_name)
    if not path.is_file() and is_shipped(path_or_name):
        with resources.as_file(resources.files(PACKAGE).joinpath(_stem(path.name) + SUFFIX)) as file:
            return load_config(file, items, base_dir=Path.cwd())
    if not path.is_file() and len(path.parts) == 1:
        raise ConfigError(f"{path}: no such config file, and no shipped config of that name "
                          f"(shipped: {', '.join(shipped_configs())})")
    return load_config(path, items)
