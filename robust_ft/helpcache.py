"""``robust-ft fit|validate|test --help`` without importing Lightning: a rendered help, cached.

LightningCLI builds its help from the Trainer's, the model's and the DataModules' signatures, so
rendering it imports Lightning and torch (~4 s). The text only changes when one of those changes:
it is cached per (command, terminal width, versions of robust-ft, Lightning, jsonargparse and
torch, and a digest of robust-ft's own source files), under ``cachedir.cache_dir()/help``
(``$ROBUST_FT_CACHE_DIR``, default ``~/.cache/robust-ft``). A stale or unwritable cache
only costs the render.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

from robust_ft.cachedir import cache_dir

PACKAGES = ("robust-ft", "lightning", "jsonargparse", "torch")


def help_key(command: str) -> str:
    """The cache key: the command, the width the text wraps at, versions and robust-ft's sources."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256(f"{command}\0{shutil.get_terminal_size().columns}".encode())
    for pkg in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            h.update(f"\0{pkg}={version(pkg)}".encode())
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:32]


def render(command: str) -> str:
    """The help text as LightningCLI prints it for ``robust-ft <command> --help``."""
    from robust_ft.runner import parse

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parse(command, argv=["--help"])
    return out.getvalue()


def cached_help(command: str) -> str:
    """The help text of a Lightning command, rendered once per key."""
    path = cache_dir() / "help" / f"{command}-{help_key(command)}.txt"
    with contextlib.suppress(OSError):
        return path.read_text()
    text = render(command)
    with contextlib.suppress(OSError):  # a read-only home only costs the next render
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text
