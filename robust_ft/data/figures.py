"""The paper's Fig. 3/4: example images under every distortion kind (rows) and level (columns)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robust_ft.data.distortions import KINDS, distort, level_tag, parse_level


def _tile(images: Sequence[np.ndarray], gap: int = 1) -> np.ndarray:
    """Images side by side with a white gap (uint8, (H, W*n) or (H, W*n, C))."""
    spacer = np.full((images[0].shape[0], gap, *images[0].shape[2:]), 255, np.uint8)
    parts = [p for im in images for p in (im, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def render_distortion_grid(
    images: np.ndarray,
    out: str | Path,
    levels: Sequence[float] = (0, 1, 2, 3, 4),
    seed: int = 0,
) -> Path:
    """Save a grid of images: one row per distortion kind, one column per level (PNG etc.)."""
    from matplotlib.figure import Figure

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            f"images must be uint8 (N,H,W) or (N,H,W,C), got {images.dtype} {images.shape}"
        )
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    levels = [parse_level(level) for level in levels]
    kinds = list(KINDS)
    cell_w = images.shape[2] * len(images) / images.shape[1]
    fig = Figure(figsize=(1.2 * cell_w * len(levels) + 0.8, 1.2 * len(kinds) + 0.6), dpi=150)
    axes = fig.subplots(len(kinds), len(levels), squeeze=False)
    for row, kind in enumerate(kinds):
        for col, level in enumerate(levels):
            rng = np.random.default_rng([seed, row, col])
            cell = _tile([distort(im, kind, level, rng) for im in images])
            ax = axes[row, col]
            ax.imshow(cell, cmap="gray" if cell.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"level {level_tag(level)[1:]}", fontsize=9)
            if col == 0:
                ax.set_ylabel(kind, fontsize=9)
    fig.suptitle("Distortions by kind (rows) and level (columns)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
