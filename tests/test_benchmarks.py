"""benchmarks/gpu.py, run in its CPU check mode: the script works and its exactness checks hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_checks_itself_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--quick", "--sections", "distort,datamodule",
         "--out", str(out)],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    res = json.loads(out.read_text())
    assert res["errors"] == []
    exact = [r for r in res["rows"] if r["bench"] == "distort_exact"]
    assert len(exact) == 16  # 2 shapes x 4 kinds x 2 levels
    assert all(r["float64"] == 0 and r["float32"] == 0 for r in exact)
    (grid,) = [r for r in res["rows"] if r["bench"] == "cold_grid"]
    assert grid["differing_bytes"] == 0 and grid["sets"] == 16


def test_gpu_benchmark_without_a_gpu_says_how_to_run_it():
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert (
        proc.returncode == 2
        and "torch sees no CUDA GPU" in proc.stderr
        and "--quick" in proc.stderr
    )
