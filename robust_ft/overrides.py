"""Settings as data: dotted overrides to nested dicts, and which keys the user's flags set.

Pure Python (imports nothing heavy): ``runner.run`` applies config files, then the user's flags,
then the orchestration's overrides ``without`` the keys the user set, then ``fixed`` ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def nested(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"a.b": 1, "a": {"c": 2}}`` -> ``{"a": {"b": 1, "c": 2}}``.

    Only the keys of ``overrides`` are split at dots; keys inside values (e.g. tag names such as
    ``optuna.study`` in ``tracking.tags``) are kept as they are.
    """
    out: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(node.get(last), dict):
            node[last] = merge(node[last], dict(value))
        else:
            node[last] = dict(value) if isinstance(value, Mapping) else value
    return out


def user_keys(argv: Sequence[str]) -> dict[str, str]:
    """The dotted keys a command line sets -> the flag that sets each (``--config`` files too).

    Hand-written because jsonargparse has no public way to list what a command line set; only
    the option names are read here, the values are parsed by jsonargparse.
    """
    import yaml

    from robust_ft.tracking import flatten

    keys: dict[str, str] = {}
    for i, token in enumerate(argv):
        if not token.startswith("--") and token != "-c":
            continue
        name, eq, value = token.lstrip("-").partition("=")
        if name in ("config", "c"):
            path = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            if Path(path).is_file():
                cfg = yaml.safe_load(Path(path).read_text())
                source = f"--config {path}"
                keys |= dict.fromkeys(flatten(cfg) if isinstance(cfg, dict) else {}, source)
        else:
            keys[name.rstrip("+")] = token
    return keys


def same_setting(key: str) -> str:
    """``data.init_args.val_split`` and ``data.val_split`` name one setting (as on the command
    line): the key without ``init_args``."""
    return ".".join(p for p in key.split(".") if p != "init_args")


def covers(set_key: str, key: str) -> bool:
    """Whether setting ``set_key`` sets ``key``: the same setting, or a dict of them holding it."""
    a, b = same_setting(set_key), same_setting(key)
    return bool(a) and (b == a or b.startswith(a + "."))


def without(overrides: dict, keys, prefix: str = "") -> dict:
    """``overrides`` minus the leaves the user's ``keys`` set."""
    out = {}
    for k, v in overrides.items():
        key = prefix + k
        if any(covers(u, key) for u in keys):
            continue
        if isinstance(v, dict) and v:
            rest = without(v, keys, key + ".")
            if rest:
                out[k] = rest
        else:
            out[k] = v
    return out


def merge(a: dict, b: dict) -> dict:
    """``a`` with ``b`` merged in, dict by dict; ``b``'s leaves win."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
