"""Configs written before the model section became a tree: the key map, the error, the rewrite.

Until keras-fpn 0.1 ``model`` was one flat mapping (``fpn_width``, ``anchor_scale``,
``seg_width``, ...). A flat key now fails with a ``ConfigError`` that names its new
place; ``keras-fpn configs migrate FILE`` (``migrate_yaml_text``) rewrites a
file's model section, moving each one-line key with its comment (where a file's
lines do not allow that, a YAML dump without comments, and the command says so).
"""
from __future__ import annotations

#: old flat ``model.<key>`` -> its dotted place under ``model`` now
FLAT_MODEL_KEYS = {
    "backbone_alpha": "backbone.alpha", "backbone_weights": "backbone.weights",
    "min_level": "neck.min_level", "max_level": "neck.max_level", "fpn_width": "neck.width",
    "fpn_lite": "neck.lite", "fpn_batch_norm": "neck.batch_norm", "extra_levels_from": "neck.extra_levels_from",
    "fpn_finer_input": "neck.finer_input",
    "head_width": "head.width", "head_depth": "head.depth", "prior_probability": "head.prior_probability",
    "anchor_scale": "anchors.scale", "scales_per_octave": "anchors.scales_per_octave",
    "aspect_ratios": "anchors.aspect_ratios", "box_scale_factors": "anchors.box_scale_factors",
    "score_threshold": "postprocess.score_threshold", "iou_threshold": "postprocess.iou_threshold",
    "max_detections": "postprocess.max_detections",
    "max_detections_per_class": "postprocess.max_detections_per_class",
    "seg_width": "segmentation.width", "seg_c2_skip": "segmentation.c2_skip",
    "seg_final_upsample": "segmentation.final_upsample", "ignore_label": "segmentation.ignore_label",
}
#: old flat keys whose value was a string and is now a mapping with that string as one field
FLAT_STRING_KEYS = {"backbone": "backbone.name", "neck": "neck.kind", "head": "head.kind"}


def moved_key(key: str, value=None) -> str | None:
    """The new dotted place (under ``model``) of an old flat model key, or None."""
    if key in FLAT_MODEL_KEYS:
        return FLAT_MODEL_KEYS[key]
    if key in FLAT_STRING_KEYS and isinstance(value, str):
        return FLAT_STRING_KEYS[key]
    return None


def moved_key_error(key: str, value=None) -> str:
    return (f"model.{key} is now model.{moved_key(key, value)} (the model section is a tree; "
            f"`keras-fpn configs migrate FILE` rewrites an old config)")


def set_dotted(tree: dict, dotted: str, value) -> None:
    """``tree[a][b][c] = value`` for ``dotted == "a.b.c"``, creating the mappings on the way."""
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def migrate_model_section(model: dict) -> tuple[dict, list]:
    """A flat (or partly flat) ``model`` mapping in the tree layout, and ``["old -> new", ...]``."""
    out, changes = {}, []
    for key, value in model.items():
        new = moved_key(key, value)
        if new is None:
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key].update(value)
            else:
                out[key] = value
            continue
        set_dotted(out, new, value)
        changes.append(f"model.{key} -> model.{new}")
    return out, changes


def _model_block(lines: list) -> tuple[int, int]:
    """``(first, end)`` line indices of the ``model:`` section's body (-1, -1 when there is none)."""
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "model:" or line.startswith("model: ")), -1)
    if start < 0 or lines[start].split("#")[0].strip() != "model:":
        return -1, -1
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " #"):
        end += 1
    return start + 1, end


def migrate_yaml_text(text: str) -> tuple[str, list, bool]:
    """An old config file's text with the tree layout: ``(new text, changes, comments kept)``.

    Each one-line ``  key: value  # comment`` of the model section moves, comment and
    all, under its new parent mapping (``  neck:`` then ``    width: 64``); anything the
    line rewrite cannot prove right (multi-line values, a result that parses differently
    from ``migrate_model_section``) falls back to a YAML dump without comments.
    """
    import yaml

    raw = yaml.safe_load(text) or {}
    expected_model, changes = migrate_model_section(dict(raw.get("model") or {}))
    expected = {**raw, "model": expected_model} if "model" in raw else raw
    if not changes:
        return text, [], True
    lines = text.splitlines(keepends=True)
    first, end = _model_block(lines)
    kept, moved = [], {}
    for line in lines[first:end] if first >= 0 else []:
        body = line.split("#")[0]
        key = body.split(":")[0].strip()
        if line.startswith("  ") and not line.startswith("   ") and ":" in body and key:
            value = yaml.safe_load(body.split(":", 1)[1]) if body.split(":", 1)[1].strip() else None
            new = moved_key(key, value)
            if new:
                parent, _, leaf = new.rpartition(".")
                rest = line.split(":", 1)[1]
                moved.setdefault(parent, []).append(f"    {leaf}:{rest}")
                continue
        kept.append(line)
    block, trailing = kept[:], []
    while block and not block[-1].strip():
        trailing.insert(0, block.pop())
    for parent, entries in moved.items():
        block.append(f"  {parent}:\n")
        block.extend(e if e.endswith("\n") else e + "\n" for e in entries)
    out = "".join(lines[:first] + block + trailing + lines[end:]) if first >= 0 else text
    try:
        if yaml.safe_load(out) == expected:
            return out, changes, True
    except yaml.YAMLError:
        pass
    return yaml.safe_dump(expected, sort_keys=False), changes, False
