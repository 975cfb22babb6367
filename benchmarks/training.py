"""Training and evaluation throughput, as ratios measured side by side in one run.

1. robust-ft's Lightning training (ImageClassifier + DataModule + Trainer) vs a bare PyTorch loop
   on the same model, batch size, data and thread count.
2. The no-train evaluation grid (4 kinds x 5 levels on N images), cold (distortions generated)
   and warm (cache), vs the pure forward time of 20 x N clean images.
3. Reading a cached distorted split vs regenerating it.
4. Fine-tune first-N vs re-train: time per epoch.
5. The memory layout: channels_last (ImageClassifier's default) vs contiguous NCHW, bare loop.

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
from statistics import median

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from robust_ft.console import quiet_third_party
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


class _EpochClock(L.Callback):
    """Wall and process CPU time of the training epochs alone (no Trainer set-up, no validation).

    CPU time (every thread of this process) leaves out what other tenants of a shared host take:
    the wall ratio is the headline, the CPU ratio says how much of its spread is the host's.
    """

    def __init__(self):
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._t, self._c = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self._t)
        self.cpu_seconds.append(time.process_time() - self._c)


def lightning_fit(
    arch: str, dm, first_n: int | None = None, epochs: int = 1
) -> tuple[float, float, float]:
    """(seconds of the last training epoch, seconds of the whole ``fit``, CPU seconds of the last
    epoch) through robust-ft's Lightning path: ImageClassifier + DataModule + Trainer."""
    model = ImageClassifier(arch=arch, lr=0.01, first_n=first_n)
    clock = _EpochClock()
    trainer = _trainer(
        max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock]
    )
    t = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return clock.seconds[-1], time.perf_counter() - t, clock.cpu_seconds[-1]


def lightning_epoch(arch: str, dm, first_n: int | None = None) -> float:
    """Seconds of one training epoch through robust-ft's Lightning path."""
    return lightning_fit(arch, dm, first_n)[0]


def bare_epoch(arch: str, dm, channels_last: bool = True) -> tuple[float, float]:
    """Wall and CPU seconds of one epoch of a hand-written loop over the same uint8 tensors, in
    the memory layout ImageClassifier uses by default (channels_last)."""
    ds = dm._data["train"][0]
    net = build(arch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    mean = torch.tensor(dm.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(dm.info.std).view(1, -1, 1, 1)
    perm = torch.randperm(len(ds))
    t, c = time.perf_counter(), time.process_time()
    for i in range(0, len(ds), dm.batch_size):
        idx = perm[i : i + dm.batch_size]
        x = ((ds.images[idx].float().div_(255) - mean) / std).contiguous(memory_format=fmt)
        loss = F.cross_entropy(net(x), ds.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t, time.process_time() - c


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
    quiet_third_party()
    torch.set_num_threads(a.threads)
    n = 2000 if a.quick else 10000
    rounds = 3 if a.quick else 7
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
        fits, bares = [], []
        for _ in range(rounds):  # interleaved pairs: the two see the same machine load
            fits.append(lightning_fit(arch, dm))
            bares.append(bare_epoch(arch, dm))
        bare, bare_cpu = [w for w, _ in bares], [c for _, c in bares]
        tl, cl = [e for e, _, _ in fits], [c for _, _, c in fits]
        rows.append({"bench": "train", "model": arch, "batch_size": dm.batch_size,
                     "lightning_img_s": n / median(tl), "bare_img_s": n / median(bare),
                     "ratio": median(b / e for b, e in zip(bare, tl, strict=True)),
                     "cpu_ratio": median(b / e for b, e in zip(bare_cpu, cl, strict=True)),
                     "fit_overhead_s": median(f - e for e, f, _ in fits),
                     "lightning_s": tl, "bare_s": bare,
                     "lightning_cpu_s": cl, "bare_cpu_s": bare_cpu})  # fmt: skip
        nhwc, nchw = [], []
        for _ in range(max(2, rounds - 2)):  # the memory layout alone, in the bare loop
            nhwc.append(bare_epoch(arch, dm, channels_last=True)[0])
            nchw.append(bare_epoch(arch, dm, channels_last=False)[0])
        rows.append({"bench": "layout", "model": arch, "channels_last_s": median(nhwc),
                     "contiguous_s": median(nchw),
                     "ratio": median(c / n for c, n in zip(nchw, nhwc, strict=True))})  # fmt: skip
        n_layers = len(build(arch).param_layers())
        for k in (1, 3):
            ft, rt = [], []
            for _ in range(max(2, rounds - 2)):
                ft.append(lightning_epoch(arch, dm, first_n=k))
                rt.append(lightning_epoch(arch, dm, first_n=n_layers))
            rows.append({"bench": "finetune_vs_retrain", "model": arch, "first_n": k,
                         "finetune_s": median(ft), "retrain_s": median(rt),
                         "ratio": median(f / r for f, r in zip(ft, rt, strict=True))})  # fmt: skip
    # evaluation grid: cold (distortions generated into a fresh cache), warm (read from it), vs the
    # pure forward of 20 x n clean images; interleaved per round
    dm = _dm("lenet5", n, tmp)
    x = (dm._data["test"][0].images.float() / 255 - 0.5) / 0.25
    cold, warm, fwd = [], [], []
    for r in range(2):
        cache_root = str(Path(tmp) / f"grid{r}")
        cold.append(eval_grid(n, cache_root))
        cl = torch.channels_last  # ImageClassifier's default layout
        fwd.append(
            forward_time(
                build("lenet5").to(memory_format=cl), x.contiguous(memory_format=cl), 500, 20
            )
        )
        warm.append(eval_grid(n, cache_root))
    rows.append({"bench": "eval_grid", "cold_s": median(cold), "warm_s": median(warm),
                 "forward_20x_s": median(fwd),
                 "cold_ratio": median(c / f for c, f in zip(cold, fwd, strict=True)),
                 "warm_ratio": median(w / f for w, f in zip(warm, fwd, strict=True))})  # fmt: skip
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
    res["table"] = table(rows, n)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    for r in rows:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
               if not isinstance(v, list)})  # fmt: skip
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{a.threads} torch threads\n{res['table']}")  # fmt: skip
    return res


def table(rows: list[dict], n: int) -> str:
    """The README's table: each benchmark as a ratio measured side by side, with its target."""
    out = ["| benchmark | measured | ratio | target |", "|---|---|---:|---|"]
    for r in rows:
        if r["bench"] == "train":
            out.append(f"| {r['model']} training, Lightning vs bare loop (batch {r['batch_size']}) | "
                       f"{r['lightning_img_s']:,.0f} vs {r['bare_img_s']:,.0f} img/s | "
                       f"{r['ratio']:.2f} (CPU time {r['cpu_ratio']:.2f}) | >= 0.95 |")  # fmt: skip
        elif r["bench"] == "layout":
            out.append(f"| {r['model']} epoch (bare loop), channels_last vs contiguous NCHW | "
                       f"{r['channels_last_s']:.2f} vs {r['contiguous_s']:.2f} s | "
                       f"{r['ratio']:.2f}x faster | (> 1: channels_last, the default, pays) |")  # fmt: skip
        elif r["bench"] == "finetune_vs_retrain":
            out.append(f"| {r['model']} epoch, first-{r['first_n']} fine-tune vs re-train | "
                       f"{r['finetune_s']:.2f} vs {r['retrain_s']:.2f} s | {r['ratio']:.2f} | "
                       "(< 1: cheaper) |")  # fmt: skip
        elif r["bench"] == "eval_grid":
            out.append(f"| no-train grid 4 kinds x 5 levels x {n:,} images, warm cache vs 20 x {n:,} "
                       f"forward | {r['warm_s']:.1f} vs {r['forward_20x_s']:.1f} s | "
                       f"{r['warm_ratio']:.2f} | <= 1.1 |")  # fmt: skip
            out.append(f"| the same grid, cold (distortions generated) | {r['cold_s']:.1f} s | "
                       f"{r['cold_ratio']:.2f} | <= 1.3 |")  # fmt: skip
        elif r["bench"] == "cache":
            out.append(f"| distorted split ({n:,} images, combined L2): regenerate vs read the cache | "
                       f"{r['generate_s']:.3f} vs {r['read_s']:.4f} s | {r['ratio']:.0f}x | "
                       ">= 50x |")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    main()
