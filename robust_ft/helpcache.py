"""``robust-ft fit|validate|test --help`` without importing Lightning: a rendered help, cached.

LightningCLI builds its help from the Trainer's, the model's and the DataModules' signatures, so
rendering it imports Lightning and torch (~4-6 s on 2 cores). The text only changes when one of
those changes: it is rendered at a fixed width (``COLUMNS``, 80) and kept per (command, versions of
robust-ft, Lightning, jsonargparse and torch, digest of robust-ft's own source files).

Three places hold it, read in this order:

- the package's own ``robust_ft/help_texts``, filled when a wheel is built (``make wheel``): a
  plain ``pip install`` of that wheel with the versions it was built against
  (``dist/constraints.txt``) answers the first ``--help`` without a render;
- the environment's own ``<sys.prefix>/share/robust-ft/help`` (``$ROBUST_FT_HELP_DIR`` moves
  it), filled at install time by ``python -m robust_ft.helpcache`` (``make setup`` and the Docker
  image run it), so the first ``--help`` after an install is as fast as the next;
- the per-user cache ``cachedir.cache_dir()/help``, where a render on a miss is kept.

A stale or unwritable place only costs one render.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from pathlib import Path

from robust_ft.cachedir import cache_dir

PACKAGES = ("robust-ft", "lightning", "jsonargparse", "torch")
COLUMNS = 80  # fixed: one rendering serves every terminal (argparse wraps to $COLUMNS)


def help_key(command: str) -> str:
    """The cache key: the command, versions and robust-ft's sources."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256(f"{command}\0{COLUMNS}".encode())
    for pkg in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            h.update(f"\0{pkg}={version(pkg)}".encode())
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:32]


HELP_DIR_ENV = "ROBUST_FT_HELP_DIR"
PACKAGED = Path(__file__).resolve().parent / "help_texts"  # in the wheel only (`make wheel`)


def install_dir() -> Path:
    """The environment's copy, written at install time (``python -m robust_ft.helpcache``):
    ``$ROBUST_FT_HELP_DIR``, else ``<sys.prefix>/share/robust-ft/help``."""
    return Path(os.environ.get(HELP_DIR_ENV) or Path(sys.prefix) / "share" / "robust-ft" / "help")


def render(command: str) -> str:
    """The help text as LightningCLI prints it for ``robust-ft <command> --help``, 80 wide."""
    from robust_ft.runner import parse

    out = io.StringIO()
    with (
        _columns(COLUMNS),
        contextlib.redirect_stdout(out),
        contextlib.suppress(SystemExit),
    ):
        parse(command, argv=["--help"])
    return out.getvalue()


@contextlib.contextmanager
def _columns(width: int):
    """``COLUMNS`` (argparse's wrap width) set for the block, then as it was (or unset)."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def _write(path: Path, text: str) -> bool:
    try:  # a read-only place only costs the next render
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return True
    except OSError:
        return False


def cached_help(command: str) -> str:
    """The help text of a Lightning command, rendered once per key."""
    name = f"{command}-{help_key(command)}.txt"
    for place in (PACKAGED, install_dir(), cache_dir() / "help"):
        with contextlib.suppress(OSError):
            return (place / name).read_text()
    text = render(command)
    _write(cache_dir() / "help" / name, text)
    return text


def constraints() -> str:
    """The versions the help texts are keyed by, as a pip constraints file."""
    from importlib.metadata import version

    return "".join(f"{pkg}=={version(pkg)}\n" for pkg in PACKAGES if pkg != "robust-ft")


def main(argv: list[str] | None = None) -> None:
    """Render every Lightning command's help into the environment (run once per install), or
    with ``--package``, into the package itself before a wheel is built."""
    import argparse

    from robust_ft.cli import LIGHTNING_COMMANDS

    parser = argparse.ArgumentParser(prog="python -m robust_ft.helpcache", description=main.__doc__)
    parser.add_argument("--package", action="store_true",
                        help=f"write into {PACKAGED} (the wheel's copy; `make wheel`)")  # fmt: skip
    parser.add_argument("--constraints", metavar="FILE",
                        help="also write the versions the texts are keyed by (pip -c FILE)")  # fmt: skip
    a = parser.parse_args(argv)
    place = PACKAGED if a.package else install_dir()
    for command in LIGHTNING_COMMANDS:
        path = place / f"{command}-{help_key(command)}.txt"
        if not path.exists() and not _write(path, render(command)):
            print(f"robust-ft: cannot write {path.parent}; --help renders on first use")
            return
        for old in path.parent.glob(f"{command}-*.txt"):  # this place's older renders
            if old != path:
                old.unlink(missing_ok=True)
    if a.constraints:
        Path(a.constraints).parent.mkdir(parents=True, exist_ok=True)
        Path(a.constraints).write_text(constraints())
    print(f"robust-ft: help texts for {', '.join(LIGHTNING_COMMANDS)} cached in {place}")


if __name__ == "__main__":
    main()
