"""Reading and writing configs: YAML files, nested dicts, ``--set`` overrides, presets, paths.

``model.preset`` starts the model section from a named preset
(``keras_fpn.models.presets``); keys given next to it override the preset's,
mapping by mapping. Overrides are ``section.key=value`` or deeper
(``model.neck.width=64``), the value parsed as YAML. Unknown keys and wrong
types raise ``ConfigError`` naming the key; a flat key of the old model layout
names its new place (``keras_fpn.config.migrate``). Path keys (``PATH_KEYS``)
expand ``~`` and ``${VAR}`` from the environment (an unset variable is an
error naming it) and are taken relative to the config file's folder when not
absolute.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path

import yaml

from keras_fpn.config.migrate import moved_key, moved_key_error
from keras_fpn.config.schema import Config, ConfigError

#: dotted paths of the keys that hold file paths
PATH_KEYS = ("data.train", "data.val", "data.train_include", "data.val_include", "model.backbone.weights")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _coerce(key: str, value, hint):
    """Check/convert one YAML value to the annotated type; raise ConfigError naming ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if dataclasses.is_dataclass(hint):
        return _build(key, hint, value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _build(name: str, cls, values):
    """The dataclass ``cls`` from a mapping (nested mappings for nested dataclasses)."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if name == "model" and moved_key(key, value):
            raise ConfigError(moved_key_error(key, value))
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config key {name}.{unknown[0]} (known: {', '.join(sorted(hints))})")
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def deep_merge(base: dict, top: dict) -> dict:
    """``base`` updated by ``top``, mapping by mapping (``top`` wins)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def _with_preset(model: dict) -> dict:
    preset = model.get("preset")
    if not preset:
        return model
    from keras_fpn.models.presets import PRESETS

    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    return deep_merge(PRESETS[preset], model)


def _check_flat_keys(model: dict) -> None:
    """A key of the old flat model layout names its new place (before anything merges beside it)."""
    for key, value in model.items():
        if moved_key(key, value):
            raise ConfigError(moved_key_error(key, value))


def _parse_override(item: str) -> tuple[list, object]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: key must be section.key (e.g. train.epochs, model.neck.width)")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return parts, value


def config_from_dict(raw: dict | None, overrides: typing.Sequence[str] = (),
                     base_dir: str | os.PathLike | None = None) -> Config:
    """Build a ``Config`` from a nested dict plus ``section.key[.key]=value`` overrides."""
    raw = dict(raw or {})
    sections = typing.get_type_hints(Config)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r} (known: {', '.join(sections)})")
    for name in sections:
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {raw[name]!r}")
    merged = {name: dict(raw.get(name) or {}) for name in sections}
    _check_flat_keys(merged["model"])
    for item in overrides:  # into the file's values; the preset (perhaps an overridden one) goes under them
        parts, value = _parse_override(item)
        if parts[0] not in sections:
            raise ConfigError(f"--set {item!r}: unknown section {parts[0]!r}")
        if parts[0] == "model" and len(parts) == 2 and moved_key(parts[1], value):
            raise ConfigError(f"--set {item!r}: " + moved_key_error(parts[1], value))
        node = merged[parts[0]]
        for depth, part in enumerate(parts[1:-1], start=2):
            child = node.get(part)
            if child is not None and not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:depth])} is {child!r}, not a mapping")
            node[part] = dict(child or {})
            node = node[part]
        node[parts[-1]] = value
    merged["model"] = _with_preset(merged["model"])
    cfg = Config(**{name: _build(name, cls, merged[name]) for name, cls in sections.items()})
    if base_dir is not None:
        cfg = _resolve_paths(cfg, Path(base_dir))
    return cfg


def get_dotted(obj, dotted: str):
    """``obj.a.b`` for ``dotted == "a.b"`` (dataclasses)."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def replace_dotted(obj, dotted: str, value):
    """A copy of the frozen dataclass tree ``obj`` with ``obj.a.b = value`` for ``dotted == "a.b"``."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: replace_dotted(getattr(obj, head), rest, value)})


def _expand(key: str, value: str) -> str:
    def var(match):
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{key}: ${{{name}}} is not set (export {name}=/path/to/it)")
        return os.environ[name]

    return os.path.expanduser(_VAR.sub(var, value))


def _resolve_paths(cfg: Config, base_dir: Path) -> Config:
    """Expand ``${VAR}`` / ``~`` in the path keys and make them absolute against ``base_dir``."""
    for dotted in PATH_KEYS:
        value = get_dotted(cfg, dotted)
        if value and value != "imagenet":
            path = Path(_expand(dotted, value))
            cfg = replace_dotted(cfg, dotted, str(path if path.is_absolute() else (base_dir / path).resolve()))
    return cfg


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = (), *,
                base_dir: str | os.PathLike | None = None) -> Config:
    """Load a YAML config file (plus overrides); relative paths resolve against ``base_dir``
    (default: the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return config_from_dict(raw, overrides, base_dir=path.parent if base_dir is None else base_dir)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def config_yaml(cfg: Config) -> str:
    """The YAML text ``save_config`` writes."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (``fpn_edge.atomic``)."""
    from fpn_edge.atomic import write_text_atomic

    write_text_atomic(path, config_yaml(cfg))
