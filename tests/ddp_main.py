"""``robust-ft`` with a spy on the distortion cache, for the DDP tests (run as a script).

Lightning's DDP launcher starts ranks 1.. by re-running ``sys.executable sys.argv``, so every
rank runs this file. Each write of a cache file appends ``<LOCAL_RANK> <NODE_RANK> <path>`` to
``$ROBUST_FT_CACHE_LOG``: the test reads who generated what.
"""

from __future__ import annotations

import os

from robust_ft.data import cache

_save = cache._save_atomically


def _spy(path, array):
    log = os.environ.get("ROBUST_FT_CACHE_LOG")
    if log:
        rank = os.environ.get("LOCAL_RANK", "0")
        node = os.environ.get("NODE_RANK", "0")
        with open(log, "a") as f:
            f.write(f"{rank} {node} {path}\n")
    return _save(path, array)


cache._save_atomically = _spy

if __name__ == "__main__":
    from robust_ft.cli import main

    main()
