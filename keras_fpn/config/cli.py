"""``keras-fpn configs [list | show NAME | migrate FILE]``: the shipped configs, and rewriting an old flat config."""
from __future__ import annotations

import sys
from pathlib import Path


def _cmd_list(args) -> int:
    from keras_fpn.config.shipped import shipped_configs

    configs = shipped_configs()
    width = max(map(len, configs), default=0)
    for name, about in configs.items():
        print(f"{name:<{width}}  {about}")
    print("\n`keras-fpn configs show NAME > my.yaml` prints one to start from; `keras-fpn train NAME` "
          "trains it as it is", file=sys.stderr)
    return 0


def _cmd_show(args) -> int:
    from keras_fpn.config.shipped import shipped_config_text

    sys.stdout.write(shipped_config_text(args.name))
    return 0


def _cmd_migrate(args) -> int:
    import yaml

    from keras_fpn.config import ConfigError
    from keras_fpn.config.migrate import migrate_yaml_text

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        new, changes, comments_kept = migrate_yaml_text(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not changes:
        print(f"{path}: already in the tree layout, nothing to change", file=sys.stderr)
        return 0
    for change in changes:
        print(f"  {change}", file=sys.stderr)
    if not comments_kept:
        print(f"{path}: the model section could not be rewritten line by line; its comments are dropped",
              file=sys.stderr)
    if not args.in_place:
        sys.stdout.write(new)
        return 0
    from fpn_edge.atomic import write_text_atomic
    from keras_fpn.config.loader import config_from_dict

    config_from_dict(yaml.safe_load(new))  # the new file must build (paths are not resolved here) before any write
    backup = path.with_name(path.name + ".bak")
    write_text_atomic(backup, path.read_text())
    write_text_atomic(path, new)
    print(f"{path}: rewritten ({len(changes)} keys moved; the old file is {backup})", file=sys.stderr)
    return 0


def add_config_commands(sub) -> None:
    p = sub.add_parser("configs", help="list the shipped configs, print one, migrate an old flat config",
                       description="Config file tools. Without a verb: list the shipped configs.")
    p.set_defaults(func=_cmd_list)
    verbs = p.add_subparsers(dest="configs_command")
    v = verbs.add_parser("list", help="the shipped configs: name and what each is for (the default)")
    v.set_defaults(func=_cmd_list)
    v = verbs.add_parser("show", help="print a shipped config (YAML with its comments) to start from",
                         description="Print a shipped config, e.g. `keras-fpn configs show NAME > my.yaml`.")
    v.add_argument("name", help="a name from `keras-fpn configs`")
    v.set_defaults(func=_cmd_show)
    m = verbs.add_parser("migrate", help="rewrite an old flat `model:` section as the tree layout",
                         description="Move each old flat model key (fpn_width, anchor_scale, seg_width, ...) to its "
                                     "place in the tree (neck.width, anchors.scale, segmentation.width, ...), "
                                     "keeping comments where the file's lines allow it. Prints the new file, "
                                     "or rewrites it with --in-place (the old one is kept as FILE.bak).")
    m.add_argument("file", help="the YAML config (or a run directory's config.yaml)")
    m.add_argument("--in-place", action="store_true", help="rewrite FILE, keeping FILE.bak")
    m.set_defaults(func=_cmd_migrate)
