"""`robust-ft make-folder`: a small learnable ImageFolder tree of generated images (own-data demo).

Each class is a fixed random pattern plus noise, saved as PNG or JPEG files in
``<out>/train/<class>/*`` and ``<out>/val/<class>/*``; the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_folder(
    out: str | Path,
    classes: int = 3,
    train_per_class: int = 40,
    val_per_class: int = 20,
    size: int = 28,
    mode: str = "L",
    fmt: str = "png",
    seed: int = 0,
) -> Path:
    """Write the tree and return its root; ``mode`` is a PIL mode (``L``, ``RGB``, ``I;16``)."""
    from PIL import Image

    out = Path(out)
    channels = 3 if mode.startswith("RGB") else 1
    rng = np.random.default_rng(seed)
    templates = rng.uniform(30, 225, size=(classes, size, size, channels))
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = out / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):  # one image at a time: 50,000 of 256 px would be 20 GB at once
                noise = rng.normal(0, 25, size=(size, size, channels))
                a = np.clip(np.round(templates[c] + noise), 0, 255)
                a = a[..., 0] if channels == 1 else a
                if mode == "I;16":
                    im = Image.fromarray((a * 257).astype(np.uint16))  # mode I;16
                else:
                    im = Image.fromarray(a.astype(np.uint8)).convert(mode)
                im.save(d / f"{i:05d}.{fmt}", quality=90) if fmt == "jpg" else im.save(
                    d / f"{i:05d}.{fmt}"
                )
    return out


def main(argv: list[str] | None = None) -> Path:
    """Console entry: ``robust-ft make-folder OUT [--classes 3] [--size 28] [--mode L]``."""
    p = argparse.ArgumentParser(prog="robust-ft make-folder", description=__doc__)
    p.add_argument("out", help="directory to create (its name becomes the dataset's name)")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--size", type=int, default=28, help="image side in pixels")
    p.add_argument("--mode", default="L", help="PIL mode: L (grayscale), RGB, I;16")
    p.add_argument("--format", default="png", choices=["png", "jpg"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = make_folder(
        a.out, a.classes, a.train_per_class, a.val_per_class, a.size, a.mode, a.format, a.seed
    )
    n = a.classes * (a.train_per_class + a.val_per_class)
    print(f"wrote {n} {a.size}x{a.size} {a.mode} images in {a.classes} classes under {root}")
    return root


if __name__ == "__main__":
    main()
