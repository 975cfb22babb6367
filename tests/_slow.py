"""A callback that slows training down, so a test can kill a run mid-epoch reliably."""

import time

from lightning.pytorch.callbacks import Callback


class SlowBatches(Callback):
    """Sleep after every training batch."""

    def __init__(self, seconds: float = 0.02):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)
