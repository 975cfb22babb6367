"""robust-ft's own progress line per training epoch (instead of Lightning's progress bar)."""

from __future__ import annotations

import logging
import time

from lightning.pytorch.callbacks import Callback

log = logging.getLogger("robust_ft")


class EpochProgress(Callback):
    """One line per training epoch on rank 0: epoch, ``train/loss``, ``val/err``, seconds."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key, fmt in (("train/loss", "{:.4f}"), ("val/err", "{:.2f}%")):
            if key in metrics:
                parts.append(f"{key} " + fmt.format(float(metrics[key])))
        parts.append(f"{time.perf_counter() - self.t0:.1f} s")
        log.info("  ".join(parts))
