"""Confusion matrices of the test sets, logged to the run as artifacts (DESIGN: tracking layout).

``confusion/matrices.csv`` holds every test set's matrix in long form (tag, true, predicted,
count; zero cells left out) and ``confusion/<tag>.png`` draws the two a reader looks at first: the
clean test set and the distortion the run trained on (or the first test set when neither is
there). Counts are summed over DDP ranks; rank 0 writes.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from robust_ft.callbacks.grad_stats import tag_groups

MAX_CLASSES = 100
"""Above this (ImageNet's 1000) the matrices are not kept: a million cells per test set."""


class ConfusionMatrixCallback(Callback):
    """Count (true, predicted) pairs per test set; log them as CSV and PNG artifacts."""

    def __init__(self, max_classes: int = MAX_CLASSES) -> None:
        self.max_classes = max_classes
        self.matrices: dict[str, torch.Tensor] = {}
        self._counts: torch.Tensor | None = None

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = int(pl_module.hparams.get("num_classes", 0))
        loaders = trainer.test_dataloaders
        k = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        self._counts = None
        if 0 < n <= self.max_classes:
            self._counts = torch.zeros(k, n * n, dtype=torch.long, device=pl_module.device)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._counts is None or outputs is None:
            return
        n = int(pl_module.hparams.num_classes)
        y = batch[1]
        self._counts[dataloader_idx] += torch.bincount(y * n + outputs, minlength=n * n)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._counts is None:
            return
        counts = trainer.strategy.reduce(self._counts, reduce_op="sum").cpu()
        n = int(pl_module.hparams.num_classes)
        groups = tag_groups(trainer, len(counts))
        self.matrices = {t: c.view(n, n) for g, c in zip(groups, counts, strict=True) for t in g}
        tags = list(self.matrices)
        logger = trainer.logger
        if trainer.is_global_zero and hasattr(logger, "log_artifact") and logger.run_id:
            with tempfile.TemporaryDirectory() as d:
                for path in self.write(Path(d), _shown(trainer, tags)):
                    logger.log_artifact(path, "confusion")

    def write(self, out: Path, shown: list[str]) -> list[Path]:
        """The CSV of every matrix and a PNG of each tag in ``shown``; returns their paths."""
        paths = [out / "matrices.csv"]
        with open(paths[0], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["test_set", "true", "predicted", "count"])
            for tag, m in self.matrices.items():
                for i, j in m.nonzero().tolist():
                    w.writerow([tag, i, j, int(m[i, j])])
        for tag in shown:
            paths.append(out / f"{tag.replace('/', '_')}.png")
            _plot(self.matrices[tag], tag, paths[-1])
        return paths


def _shown(trainer: pl.Trainer, tags: list[str]) -> list[str]:
    """The clean test set and the trained-on distortion, where tested; else the first set."""
    from robust_ft.data.datamodules import distortion_tag

    dm = trainer.datamodule
    wanted = ["clean/L0"]
    if getattr(dm, "kind", None):
        wanted.append(distortion_tag(dm.kind, dm.level))
    shown = [t for t in dict.fromkeys(wanted) if t in tags]
    return shown or tags[:1]


def _plot(m: torch.Tensor, tag: str, path: Path) -> None:
    """Row-normalised matrix (recall per class) with the counts written in small matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = m.shape[0]
    rates = m.double() / m.sum(1, keepdim=True).clamp(min=1)
    err = 100.0 * (1 - m.diag().sum().item() / max(m.sum().item(), 1))
    size = min(3 + 0.45 * n, 14)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        for i in range(n):
            for j in range(n):
                c = int(m[i, j])
                if c:
                    colour = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, str(c), ha="center", va="center", fontsize=7, color=colour)
    ax.set(xlabel="predicted class", ylabel="true class", title=f"{tag}: top-1 error {err:.2f}%")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
