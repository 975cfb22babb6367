"""`make data`: get the offline default dataset (Fashion-MNIST) without any manual step.

Order: files already under ``<root>/FashionMNIST/raw`` -> the Debian package
``dataset-fashion-mnist`` (installed with apt-get when running as root) -> a torchvision download.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from robust_ft.data.sources import _find_idx_dir, idx_candidates


def _apt_install(package: str) -> bool:
    """Install a Debian package as root: first from the current lists, then after an update."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", package]
    for cmds in ([install], [["apt-get", "update", "-qq"], install]):
        if all(subprocess.run(c, env=env, capture_output=True).returncode == 0 for c in cmds):
            return True
    return False


def fetch_fashion_mnist(root: Path) -> Path:
    """A directory holding Fashion-MNIST's four IDX files; installs or downloads if needed."""
    found = _find_idx_dir(idx_candidates(root, "FashionMNIST"), "train")
    if found is None and _apt_install("dataset-fashion-mnist"):
        found = _find_idx_dir(idx_candidates(root, "FashionMNIST"), "train")
    if found is None:
        import torchvision

        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
        found = _find_idx_dir(idx_candidates(root, "FashionMNIST"), "train")
    if found is None:
        raise FileNotFoundError("Fashion-MNIST could not be installed or downloaded")
    return found


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="data")
    a = p.parse_args(argv)
    print(f"Fashion-MNIST: {fetch_fashion_mnist(Path(a.root))}")


if __name__ == "__main__":
    main()
