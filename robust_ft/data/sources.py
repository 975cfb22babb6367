"""Where each dataset's raw images come from: uint8 arrays (N,H,W) or (N,H,W,C) and int64 labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust_ft.data.idx import read_idx

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on disk, with a message that says how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: classes, image shape (C,H,W), normalisation."""

    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


INFO = {
    "mnist": DatasetInfo(10, (1, 28, 28), (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo(10, (1, 28, 28), (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": DatasetInfo(1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _find_idx_dir(candidates: list[Path], split: str) -> Path | None:
    for d in candidates:
        for suffix in ("", ".gz"):
            if (d / (IDX_FILES[split][0] + suffix)).exists():
                return d
    return None


def _read_idx_pair(d: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    def pick(stem: str) -> Path:
        raw = d / stem
        return raw if raw.exists() else d / (stem + ".gz")

    images = read_idx(pick(IDX_FILES[split][0]))
    labels = read_idx(pick(IDX_FILES[split][1])).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(
            f"IDX files in {d} do not match: images {images.shape}, labels {labels.shape}. "
            "Fetch the data again (`make data`)."
        )
    return images, labels


def idx_candidates(root: Path, folder: str) -> list[Path]:
    """Directories searched, in order, for a torchvision-style IDX dataset."""
    dirs = [root / folder / "raw", root / folder]
    if folder == "FashionMNIST":
        dirs.append(Path(os.environ.get("ROBUST_FT_FASHION_MNIST", DEBIAN_FASHION_MNIST)))
    return dirs


def load_idx_dataset(root: Path, folder: str, split: str, download: bool = False):
    """MNIST-like data from IDX files under root (or the Debian package), else torchvision."""
    d = _find_idx_dir(idx_candidates(root, folder), split)
    if d is None and download:
        import torchvision

        getattr(torchvision.datasets, folder)(str(root), train=split == "train", download=True)
        d = _find_idx_dir(idx_candidates(root, folder), split)
    if d is None:
        looked = ", ".join(str(p) for p in idx_candidates(root, folder))
        hint = (
            "run `make data` (installs the Debian package dataset-fashion-mnist or downloads)"
            if folder == "FashionMNIST"
            else f"put the IDX files (train-images-idx3-ubyte[.gz], ...) in {root / folder / 'raw'}"
            " or pass --data.download true on a machine with internet"
        )
        raise DatasetNotFoundError(
            f"{folder} {split} split not found (looked in {looked}); {hint}."
        )
    return _read_idx_pair(d, split)


def load_cifar10(root: Path, split: str, download: bool = False):
    """CIFAR-10 through torchvision (python pickle batches from the official archive)."""
    import torchvision

    folder = root / "cifar-10-batches-py"
    if not folder.exists() and not download:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found in {folder}; extract cifar-10-python.tar.gz into {root} "
            "or pass --data.download true on a machine with internet."
        )
    ds = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=download)
    return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)
