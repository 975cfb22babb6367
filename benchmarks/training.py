"""Training and evaluation throughput, as ratios measured side by side in one run.

1. robust-ft's Lightning training (ImageClassifier + DataModule + Trainer) vs a bare PyTorch loop
   on the same model, batch size, data and thread count.
2. The no-train evaluation grid (4 kinds x 5 levels on N images), cold (distortions generated)
   and warm (cache), vs the pure forward time of 20 x N clean images.
3. Reading a cached distorted split vs regenerating it.
4. Fine-tune first-N vs re-train: time per epoch.

Usage: python benchmarks/training.py [--quick] [--out benchmarks/results/training.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from robust_ft.data.datamodules import SyntheticDataModule
from robust_ft.models import build
from robust_ft.models.classifier import ImageClassifier

SHAPES = {"lenet5": (1, 28, 28), "cifar10_quick": (3, 32, 32)}


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        **kw,
    )


def _dm(arch: str, n: int, root: str, **kw) -> SyntheticDataModule:
    dm = SyntheticDataModule(
        image_shape=SHAPES[arch], n_train=n, n_test=n, root=root, val_split=0, **kw
    )
    dm.prepare_data()
    dm.setup()
    return dm


def lightning_epoch(arch: str, dm, first_n: int | None = None) -> float:
    """Seconds for one training epoch through robust-ft's Lightning path."""
    model = ImageClassifier(arch=arch, lr=0.01, first_n=first_n)
    trainer = _trainer(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0)
    t = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - t


def bare_epoch(arch: str, dm) -> float:
    """Seconds for one epoch of a hand-written loop over the same uint8 tensors."""
    ds = dm._data["train"][0]
    net = build(arch)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    mean = torch.tensor(dm.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(dm.info.std).view(1, -1, 1, 1)
    perm = torch.randperm(len(ds))
    t = time.perf_counter()
    for i in range(0, len(ds), dm.batch_size):
        idx = perm[i : i + dm.batch_size]
        x = (ds.images[idx].float().div_(255) - mean) / std
        loss = F.cross_entropy(net(x), ds.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def forward_time(net, x: torch.Tensor, batch: int, repeats: int) -> float:
    """Seconds of ``repeats`` pure forward passes over ``x`` in batches."""
    net.eval()
    t = time.perf_counter()
    with torch.inference_mode():
        for _ in range(repeats):
            for i in range(0, len(x), batch):
                net(x[i : i + batch])
    return time.perf_counter() - t


def eval_grid(n: int, root: str) -> float:
    """Seconds for the no-train grid (4 kinds x levels 0..4) through robust-ft's test path."""
    dm = SyntheticDataModule(
        image_shape=SHAPES["lenet5"], n_train=10, n_test=n, root=root, val_split=0, batch_size=500,
        test_kinds=["motion", "defocus", "noise", "combined"], test_levels=[0, 1, 2, 3, 4],
    )  # fmt: skip
    model = ImageClassifier(arch="lenet5")
    t = time.perf_counter()
    _trainer().test(model, datamodule=dm, verbose=False)
    return time.perf_counter() - t


def best(fn, rounds: int) -> float:
    return min(fn() for _ in range(rounds))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default="benchmarks/results/training.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    n = 2000 if a.quick else 10000
    rounds = 2 if a.quick else 3
    tmp = tempfile.mkdtemp(prefix="rft-bench-")
    res: dict = {
        "machine": {"platform": platform.platform(), "nproc": os.cpu_count(), "torch_threads": a.threads,
                    "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "images": n,
    }  # fmt: skip
    rows = []
    for arch in SHAPES:
        dm = _dm(arch, n, tmp)
        lightning_epoch(arch, dm)  # warm-up
        tl, tb = [], []
        for _ in range(rounds):  # interleaved: the two see the same machine load
            tl.append(lightning_epoch(arch, dm))
            tb.append(bare_epoch(arch, dm))
        rows.append({"bench": "train", "model": arch, "lightning_img_s": n / min(tl), "bare_img_s": n / min(tb),
                     "ratio": min(tb) / min(tl)})  # fmt: skip
        n_layers = len(build(arch).param_layers())
        for k in (1, 3):
            tf = best(lambda a=arch, d=dm, k=k: lightning_epoch(a, d, first_n=k), rounds)
            tr = best(lambda a=arch, d=dm, n=n_layers: lightning_epoch(a, d, first_n=n), rounds)
            rows.append({"bench": "finetune_vs_retrain", "model": arch, "first_n": k, "finetune_s": tf,
                         "retrain_s": tr, "ratio": tf / tr})  # fmt: skip
    # evaluation grid: cold (generate distortions), warm (cache), vs pure forward of 20 x n images
    cache_root = Path(tmp) / "grid"
    cold = eval_grid(n, str(cache_root))
    warm = best(lambda: eval_grid(n, str(cache_root)), rounds)
    dm = _dm("lenet5", n, tmp)
    x = (dm._data["test"][0].images.float() / 255 - 0.5) / 0.25
    fwd = best(lambda: forward_time(build("lenet5"), x, 500, 20), rounds)
    rows.append({"bench": "eval_grid", "cold_s": cold, "warm_s": warm, "forward_20x_s": fwd,
                 "cold_ratio": cold / fwd, "warm_ratio": warm / fwd})  # fmt: skip
    # cache: read a cached distorted split vs regenerate it
    from robust_ft.data.cache import load_or_create
    from robust_ft.data.distortions import distort_array

    clean = dm._data["test"][0].images[:, 0].numpy()
    path = Path(tmp) / "bench-cache.npy"
    t0 = time.perf_counter()
    load_or_create(path, lambda: distort_array(clean, "combined", 2.0, seed=0, progress=False))
    gen = time.perf_counter() - t0

    def read():
        t = time.perf_counter()
        np.array(load_or_create(path, lambda: None))
        return time.perf_counter() - t

    rd = best(read, 5)
    rows.append({"bench": "cache", "generate_s": gen, "read_s": rd, "ratio": gen / rd})
    shutil.rmtree(tmp, ignore_errors=True)
    res["rows"] = rows
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    for r in rows:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
    return res


if __name__ == "__main__":
    main()
