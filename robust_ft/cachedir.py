"""Where robust-ft keeps its per-user caches (help texts, dataset digests, decoded images, shards).

One directory, the same from every working directory: ``$ROBUST_FT_CACHE_DIR`` when set, else
``$XDG_CACHE_HOME/robust-ft``, else ``~/.cache/robust-ft``. Nothing here imports more than the
standard library: ``robust-ft --help`` reads its cache through it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ROBUST_FT_CACHE_DIR``, else ``$XDG_CACHE_HOME/robust-ft``, else ``~/.cache/robust-ft``."""
    if os.environ.get("ROBUST_FT_CACHE_DIR"):
        return Path(os.environ["ROBUST_FT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robust-ft"
