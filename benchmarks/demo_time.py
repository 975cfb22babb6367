"""`make demo`'s main job timed: wall time and peak RSS via /usr/bin/time -v, saved as JSON.

Usage: python benchmarks/demo_time.py [--out benchmarks/results/demo.json] [demo args...]
Runs in a temporary MLflow store so it does not mix with your runs.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path("benchmarks/results/demo.json")
    if argv[:1] == ["--out"]:
        out, argv = Path(argv[1]), argv[2:]
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db"}
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "robust_ft", "demo", *argv]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"demo failed:\n{r.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    res = {
        "machine": {"platform": platform.platform(), "nproc": os.cpu_count(),
                    "loadavg_at_end": os.getloadavg()},
        "wall_s": seconds, "peak_rss_gb": rss_kb / 1e6,
        "tables": [ln for ln in r.stdout.splitlines() if ln.startswith(("|", "Test error"))],
        "target": {"wall_s": 600, "peak_rss_gb": 4},
    }  # fmt: skip
    return save(res, out)


def save(res: dict, out: Path) -> dict:
    """Write a benchmark's result as JSON (and print it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
