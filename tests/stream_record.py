"""``robust-ft`` whose ImageFolder data records what each batch held (run as a script or imported).

``RecordingFolder`` is the real ``ImageFolderDataModule``; after it has distorted a batch it
appends one line per image to ``<record_dir>/<split>-rank<global rank>.txt``:
``<epoch> <test set> <index in the split> <sha1 of the image the model gets>``. Lightning's DDP
launcher starts ranks 1.. by re-running ``sys.executable sys.argv``, so every rank runs this file
and records its own samples.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from robust_ft.data.imagefolder import ImageFolderDataModule


class RecordingFolder(ImageFolderDataModule):
    """An ImageFolder DataModule that records each batch's sample indices and image digests."""

    def __init__(self, record_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.record_dir = record_dir

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        out = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.record_dir and self.streaming:
            trainer = self.trainer
            split = "train" if trainer.training else "test" if trainer.testing else "val"
            lines = [
                f"{trainer.current_epoch} {dataloader_idx} {int(i)} "
                f"{hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest()}\n"
                for i, x in zip(batch[2], out[0], strict=True)
            ]
            path = Path(self.record_dir) / f"{split}-rank{trainer.global_rank}.txt"
            with open(path, "a") as f:
                f.writelines(lines)
        return out


def read(record_dir: str | Path, split: str, rank: int = 0) -> list[tuple[int, int, int, str]]:
    """The records of one split and rank: (epoch, test set, index, image sha1) per image."""
    path = Path(record_dir) / f"{split}-rank{rank}.txt"
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(e), int(s), int(i), h) for e, s, i, h in rows]


if __name__ == "__main__":
    from robust_ft.cli import main

    main()
