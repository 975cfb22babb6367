"""Data larger than memory: ImageFolder splits as litdata shards, decoded in DataLoader workers.

litdata (Lightning's own streaming library) writes each split once as chunked shards of the
original file bytes (``optimize``) and reads them back with ``StreamingDataset`` /
``StreamingDataLoader``: sharded across DDP ranks and workers by the library, with a
``state_dict`` that Lightning saves in checkpoints (a resume continues mid-epoch). Chosen over
WebDataset and MosaicML Streaming because it is Lightning's, needs no server, reads local
directories in place, and its loader is resumable out of the box.

Workers decode and resize; distortions are applied per batch on the training device
(``distort_batch_seeded``), each image drawing from a seed derived from (dataset digest, split,
index, kind, level, seed[, epoch]): a test set is the same on every run and device, unstored.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust_ft.data.datamodules import distortion_tag


def _sample(item: tuple[str, int, int]) -> dict:
    """One shard record: the file's bytes, its label, its index in the split (``optimize``'s fn)."""
    path, label, index = item
    return {"image": Path(path).read_bytes(), "label": label, "index": index}


def write_shards(files: list[tuple[Path, int]], out: Path, workers: int = 1) -> Path:
    """Convert a split's files to litdata shards in ``out`` once (atomically: a temp dir, then
    rename); an existing complete conversion is reused."""
    import litdata

    if (out / "index.json").is_file():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    inputs = [(str(f), int(y), i) for i, (f, y) in enumerate(files)]
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # its banner lines
        litdata.optimize(
            fn=_sample,
            inputs=inputs,
            output_dir=str(tmp),
            chunk_bytes="64MB",
            num_workers=max(1, min(workers, len(inputs))),
            keep_data_ordered=True,
            verbose=False,
            mode="overwrite",
            # fork: spawn re-imports the caller's __main__ (and torch) in every worker
            start_method="fork" if os.name == "posix" else None,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass(frozen=True)
class Draw:
    """What a worker draws for each image: (kind, level) and the parts of its seed."""

    kind: str
    level: object
    digest: str
    split: str
    seed: int


@dataclass(frozen=True)
class Decode:
    """litdata ``transform``, run in the DataLoader worker: a record -> (uint8 image (C,H,W),
    label, index[, the image's distortion draws when ``draw`` is set])."""

    channels: int
    resize: int
    crop: int
    draw: Draw | None = None

    def __call__(self, record: dict) -> tuple:
        from robust_ft.data.distortions import draw_params
        from robust_ft.data.imagefolder import decode

        image = decode(io.BytesIO(record["image"]), self.channels, self.resize, self.crop)
        t = torch.from_numpy(image)
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
        sample = (t, int(record["label"]), int(record["index"]))
        if self.draw is None:
            return sample
        d = self.draw
        (seed,) = sample_seeds(d.digest, d.split, [sample[2]], d.kind, d.level, d.seed)
        return (*sample, draw_params(d.kind, d.level, t.shape, seed))


def collate(samples: list[tuple]) -> list:
    """Stack images, labels and indices; keep each image's draws (kernels differ in size)."""
    out = [
        torch.stack([s[0] for s in samples]),
        torch.tensor([s[1] for s in samples]),
        torch.tensor([s[2] for s in samples]),
    ]
    if len(samples[0]) == 4:
        out.append([s[3] for s in samples])
    return out


def sample_seeds(
    digest: str, split: str, indices, kind: str, level, seed: int, epoch: int | None = None
) -> list[int]:
    """Per-image distortion seeds from (digest, split, index, kind, level, seed[, epoch])."""
    tag = distortion_tag(kind, level)
    base = f"{digest}|{split}|{tag}|{seed}|{'' if epoch is None else epoch}|"
    return [
        int.from_bytes(hashlib.sha256(f"{base}{int(i)}".encode()).digest()[:8], "little")
        for i in indices
    ]


def selection_key(source_digest: str, root: Path, files) -> str:
    """The identity of a split's selection: its source split's digest and the chosen files, in
    order (the first part of every image's distortion seed)."""
    rel = [str(f.relative_to(root)) for f, _ in files]
    return hashlib.sha256((source_digest + json.dumps(rel)).encode()).hexdigest()[:16]


def distort_seeded_array(
    images: np.ndarray, kind: str, level, key: str, split: str, seed: int, device=None
) -> np.ndarray:
    """A whole in-memory split (N,H,W) or (N,H,W,C) uint8, image i drawn from the seed the
    streaming path gives index i: the same bytes whether the split streams or not."""
    from robust_ft.data.distortions import distort_batch_seeded, images_to_nchw, nchw_to_images

    out = np.empty_like(images)
    for i in range(0, len(images), 256):
        chunk = images[i : i + 256]
        x = images_to_nchw(chunk).contiguous().to(device)
        seeds = sample_seeds(key, split, range(i, i + len(x)), kind, level, seed)
        y = distort_batch_seeded(x, kind, level, seeds).cpu()
        out[i : i + len(x)] = nchw_to_images(y, chunk.shape).numpy()
    return out


class StreamingSplits:
    """The streaming half of an ImageFolder DataModule: shards, datasets, loaders, distortion."""

    def __init__(self, dm):
        self.dm = dm
        self.sets: dict[str, Path] = {}  # split -> its shard directory; no file list is kept

    def selections(self) -> dict[str, tuple[list[tuple[Path, int]], str]]:
        """The files of train/val/test, chosen as the in-memory path chooses them, each with its
        selection key. A source split is listed once: its digest reuses that listing, and the
        train listing is dropped (its selections kept) before the test split is listed."""
        from robust_ft.data.imagefolder import split_digest

        dm = self.dm
        train = dm.files("train")
        digest = split_digest(dm.root, "train", dm.classes, train) if train else ""
        idx = dm._indices(len(train))
        out = {s: [train[i] for i in idx[s]] for s in ("train", "val")}
        if not out["train"]:
            raise ValueError(
                f"no training images left in {dm.root}/train ({len(train)} files) after holding "
                f"out val_split={dm.val_split} for validation; lower --data.init_args.val_split"
            )
        del train
        keyed = {s: (f, selection_key(digest, dm.root, f)) for s, f in out.items()}
        test = dm.files("test")
        digest = split_digest(dm.root, "test", dm.classes, test) if test else ""
        if dm.test_subset is not None:
            perm = np.random.default_rng(dm.seed + 1).permutation(len(test))
            test = [test[i] for i in np.sort(perm[: dm.test_subset])]
        keyed["test"] = (test, selection_key(digest, dm.root, test))
        return keyed

    def shard_dir(self, split: str, key: str) -> Path:
        dm = self.dm
        dm.split_digests[split] = key
        return dm.cache_dir / "streaming" / f"{dm.dataset_name}-{split}-{key}"

    def prepare(self) -> None:
        """Convert every split to shards once (rank 0; a no-op when they exist)."""
        for split, (files, key) in self.selections().items():
            if files:
                write_shards(files, self.shard_dir(split, key), self.dm.shard_workers)

    def setup(self) -> None:
        """The shard directory of every split (converted now if ``prepare`` did not run)."""
        for split, (files, key) in self.selections().items():
            if files:
                self.sets[split] = write_shards(
                    files, self.shard_dir(split, key), self.dm.shard_workers
                )

    def loader(self, split: str, set_index: int = 0):
        """A StreamingDataLoader over a fresh StreamingDataset of the split (one per test set).

        The workers draw each image's distortion too, except for training images drawn afresh
        every epoch (``cache: false``), which the training process draws (it knows the epoch).
        """
        import litdata

        from robust_ft.data.datamodules import _is_identity

        dm = self.dm
        kind, level = dm._split_sets(split)[set_index]
        draw = None
        if not _is_identity(kind, level) and not (split == "train" and not dm.cache):
            draw = Draw(kind, level, dm.split_digests[split], split, dm.seed)
        dataset = litdata.StreamingDataset(
            str(self.sets[split]),
            shuffle=split == "train",
            seed=dm.seed,
            transform=Decode(dm.channels, dm.resize, dm.crop, draw),
        )
        return litdata.StreamingDataLoader(
            dataset,
            collate_fn=collate,
            batch_size=dm.batch_size,
            num_workers=dm.num_workers,
            pin_memory=dm._pin(),
            persistent_workers=dm.num_workers > 0,
        )

    def distort(self, batch, split: str, set_index: int, epoch) -> tuple:
        """(images, labels) of a batch, the images distorted on their device as the split's
        (kind, level) says: with the workers' draws, or drawn here from per-image seeds."""
        from robust_ft.data.datamodules import _is_identity
        from robust_ft.data.distortions import apply_params, distort_batch_seeded

        dm = self.dm
        x, y, index = batch[:3]
        kind, level = dm._split_sets(split)[set_index]
        if len(batch) == 4:
            return apply_params(x, kind, batch[3]), y
        if _is_identity(kind, level):
            return x, y
        per_epoch = split == "train" and not dm.cache
        seeds = sample_seeds(
            dm.split_digests[split], split, index.tolist(), kind, level, dm.seed,
            epoch if per_epoch else None,
        )  # fmt: skip
        return distort_batch_seeded(x, kind, level, seeds), y
