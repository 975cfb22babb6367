"""The GPU path, checked and measured side by side in one run on one CUDA device.

    python benchmarks/gpu.py [--quick] [--budget 330] [--out benchmarks/results/gpu.json]

1. Distortions: ``distort_array`` on the GPU gives the CPU's bytes (every kind, fixed and random
   levels), in float64 and in IEEE float32 with the exact-rounding pass; throughput of
   ``distort_batch`` on the GPU (both dtypes) vs the CPU's threads.
2. Training step throughput per model (bare loop, uint8 data resident on the GPU, normalised on
   the fly): float32 (cuDNN's default TF32 convolutions), channels_last, bf16 autocast, both.
3. Feeding the GPU: batches gathered on the host from pageable vs pinned memory vs data resident
   on the GPU.
4. robust-ft's Lightning path (ImageClassifier + DataModule + Trainer on the GPU): precision
   32 / bf16-mixed, pin_memory, channels_last, vs the bare loop fed from the host.
5. ``--sections datamodule``: the DataModule's cold test grid generated on the CPU vs the GPU
   (``distort_device``), same bytes required; ``profile``: cProfile of one LeNet-5 epoch.

Needs only torch, lightning, torchmetrics, numpy and scipy (not MLflow): the GPU machines carry
those. Sections past ``--budget`` seconds are skipped and say so. Without a GPU it runs on the
CPU with tiny sizes (``--quick``), which checks the script, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from statistics import median

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robust_ft.data import distortions as D  # noqa: E402
from robust_ft.models import build  # noqa: E402

SHAPES = {"lenet5": (1, 28, 28), "cifar10_quick": (3, 32, 32), "alexnet": (3, 224, 224)}
CLASSES = {"lenet5": 10, "cifar10_quick": 10, "alexnet": 1000}
T0 = time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleaved(runs: dict[str, Callable[[], object]], device, rounds: int) -> dict[str, float]:
    """Median seconds of each run over rounds that take turns, after one warm-up of each."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            times[k].append(timed(fn, device))
    return {k: median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- 1. distortions
def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    noise = np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.float32)
    return ndimage.uniform_filter(noise, size=(1, 3, 3, 1)).astype(np.uint8)


@contextmanager
def float32_on(device_type: str, on: bool):
    """Blur uint8 batches on ``device_type`` in float32 (on) or float64 (off) while inside."""
    before = set(D.FLOAT32_DEVICES)
    (D.FLOAT32_DEVICES.add if on else D.FLOAT32_DEVICES.discard)(device_type)
    try:
        yield
    finally:
        D.FLOAT32_DEVICES.clear()
        D.FLOAT32_DEVICES.update(before)


def distortions(device, quick: bool, rounds: int) -> list[dict]:
    rows = []
    n_check = 256 if quick else 2048
    for shape in [(32, 32, 3), (28, 28, 1)]:
        images = _images(n_check, shape, seed=1)
        for kind in D.KINDS:
            for level in (2.0, "U(0,4)"):
                cpu = D.distort_array(images, kind, level, seed=3, progress=False)
                row = {"bench": "distort_exact", "shape": "x".join(map(str, shape)),
                       "kind": kind, "level": str(level)}  # fmt: skip
                for f32 in (False, True):
                    with float32_on(device.type, f32):
                        out = D.distort_array(
                            images, kind, level, seed=3, progress=False, device=device
                        )
                    row["float32" if f32 else "float64"] = int((out != cpu).sum())
                rows.append(row)
    n, batch = (1024, 512) if quick else (16384, 4096)
    for shape in [(32, 32, 3), (224, 224, 3)]:
        m = n if shape[0] < 100 else n // 32
        x = torch.from_numpy(_images(m, shape)).permute(0, 3, 1, 2).contiguous()
        on_dev = x.to(device)
        for kind in D.KINDS:
            gen_cpu = torch.Generator().manual_seed(0)
            gen_dev = torch.Generator(device).manual_seed(0)

            def run(images, gen, f32=True, kind=kind):
                def go():
                    with float32_on(images.device.type, f32):
                        for b in images.split(batch):
                            D.distort_batch(b, kind, 2.0, gen)

                return go

            runs = {"cpu": run(x, gen_cpu)}
            if device.type == "cuda":
                runs["gpu_float64"] = run(on_dev, gen_dev, False)
                runs["gpu_float32"] = run(on_dev, gen_dev, True)
            t = interleaved(runs, device, rounds)
            row = {"bench": "distort_rate", "shape": "x".join(map(str, shape)), "kind": kind,
                   **{f"{k}_img_s": m / v for k, v in t.items()}}  # fmt: skip
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- 2./3. bare loop
def _data(arch: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 images of the model's shape (on the CPU) and labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *SHAPES[arch]), generator=g, dtype=torch.uint8)
    y = torch.randint(0, CLASSES[arch], (n,), generator=g)
    return x, y


def bare_steps(
    arch: str,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch: int,
    channels_last=False,
    bf16=False,
    feed: str = "device",
) -> Callable[[], None]:
    """One pass over (x, y) in batches, robust-ft's step by hand: normalise, forward, SGD.

    feed: ``device`` (x already on the GPU), ``pageable`` or ``pinned`` (gathered on the host,
    copied per batch; a pinned batch is copied asynchronously, as a DataLoader with
    ``pin_memory`` does).
    """
    net = build(arch, num_classes=CLASSES[arch]).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    mean = torch.full((1, x.shape[1], 1, 1), 0.5, device=device)
    if feed == "device":
        x, y = x.to(device), y.to(device)
    perm = torch.randperm(len(x), device=x.device)

    def go() -> None:
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i : i + batch]
            if feed == "pinned":
                xb = x[idx].pin_memory().to(device, non_blocking=True)
                yb = y[idx].pin_memory().to(device, non_blocking=True)
            else:
                xb, yb = x[idx].to(device), y[idx].to(device)
            xb = (xb.float().div_(255) - mean) / 0.25
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return go


def training(device, quick: bool, rounds: int, deadline: float) -> list[dict]:
    rows = []
    sizes = {"lenet5": (100, 20000), "cifar10_quick": (100, 20000), "alexnet": (100, 2000)}
    if quick:
        sizes = {"lenet5": (100, 400), "cifar10_quick": (100, 400), "alexnet": (8, 16)}
    for arch, (batch, n) in sizes.items():
        for b in (batch, 256) if arch == "alexnet" and not quick else (batch,):
            if time.perf_counter() > deadline:
                rows.append({"bench": "train_precision", "model": arch, "skipped": "budget"})
                continue
            x, y = _data(arch, n)
            variants = {"fp32": {}, "channels_last": {"channels_last": True},
                        "bf16": {"bf16": True}, "bf16+channels_last": {"bf16": True, "channels_last": True}}  # fmt: skip
            if device.type != "cuda":
                variants = {"fp32": {}, "channels_last": {"channels_last": True}}
            t = interleaved({k: bare_steps(arch, x, y, device, b, **kw) for k, kw in variants.items()},
                            device, rounds)  # fmt: skip
            steps = (n // b) * b
            rows.append({"bench": "train_precision", "model": arch, "batch": b,
                         **{f"{k}_img_s": steps / v for k, v in t.items()},
                         **{f"{k}/fp32": t["fp32"] / v for k, v in t.items() if k != "fp32"}})  # fmt: skip
        if arch == "alexnet" or device.type != "cuda" or time.perf_counter() > deadline:
            continue
        x, y = _data(arch, n)
        feeds = {
            f: bare_steps(arch, x, y, device, batch, feed=f)
            for f in ("device", "pageable", "pinned")
        }
        t = interleaved(feeds, device, rounds)
        rows.append({"bench": "feed", "model": arch, "batch": batch,
                     **{f"{k}_img_s": (n // batch) * batch / v for k, v in t.items()}})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- 4. Lightning
class _EpochClock(L.Callback):
    """Wall time of the training epochs alone (the GPU's queue drained at both ends)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        sync(pl_module.device)
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.seconds.append(time.perf_counter() - self._t)


def lightning_path(device, quick: bool, rounds: int, deadline: float, root: str) -> list[dict]:
    import logging
    import warnings

    from robust_ft.data.datamodules import SyntheticDataModule
    from robust_ft.models.classifier import ImageClassifier

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    rows = []
    sizes = {"lenet5": 20000, "cifar10_quick": 20000, "alexnet": 1000}
    if quick:
        sizes = {"lenet5": 400, "cifar10_quick": 400}
    accel = "gpu" if device.type == "cuda" else "cpu"
    for arch, n in sizes.items():
        if time.perf_counter() > deadline:
            rows.append({"bench": "lightning", "model": arch, "skipped": "budget"})
            continue
        dms = {}
        for pin in (False, True):
            dm = SyntheticDataModule(image_shape=SHAPES[arch], num_classes=CLASSES[arch], n_train=n,
                                     n_test=10, root=root, val_split=0, pin_memory=pin)  # fmt: skip
            dm.prepare_data()
            dm.setup()
            dms[pin] = dm

        def fit(precision="32-true", pin=False, channels_last=False, arch=arch, dms=dms):
            def go():
                model = ImageClassifier(arch=arch, num_classes=CLASSES[arch], lr=1e-3,
                                        channels_last=channels_last)  # fmt: skip
                clock = _EpochClock()
                trainer = L.Trainer(
                    accelerator=accel, devices=1, precision=precision, max_epochs=1,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                    callbacks=[clock],
                )  # fmt: skip
                trainer.fit(model, datamodule=dms[pin])
                go.seconds.append(clock.seconds[-1])

            go.seconds = []
            return go

        ds = dms[False]._data["train"][0]
        variants = {"lightning": fit(), "lightning_pinned": fit(pin=True),
                    "lightning_channels_last": fit(channels_last=True)}  # fmt: skip
        if device.type == "cuda":
            variants["lightning_bf16"] = fit("bf16-mixed", True)
            variants["lightning_bf16_channels_last"] = fit("bf16-mixed", True, True)
        bare = bare_steps(arch, ds.images, ds.labels, device, 100, feed="pageable")
        for fn in variants.values():  # warm-up (cuDNN autotuning, allocator)
            fn()
            fn.seconds.clear()
        bare()
        bare_s = []
        for _ in range(min(rounds, 3)):
            for fn in variants.values():
                fn()
            bare_s.append(timed(bare, device))
        row = {"bench": "lightning", "model": arch, "batch": 100,
               "bare_img_s": n / median(bare_s),
               **{f"{k}_img_s": n / median(fn.seconds) for k, fn in variants.items()},
               **{f"{k}/bare": median(b / s for b, s in zip(bare_s, fn.seconds, strict=True))
                  for k, fn in variants.items()}}  # fmt: skip
        rows.append(row)
    return rows


def datamodule_cold(device, quick: bool, root: str) -> list[dict]:
    """Cold cache: the distorted test grid generated by the DataModule on the CPU vs the GPU
    (``distort_device``); the two caches must hold the same bytes."""
    from robust_ft.data.datamodules import SyntheticDataModule

    rows = []
    grid = dict(test_kinds=["motion", "defocus", "noise", "combined"], test_levels=[1, 2, 3, 4])
    sizes = {"cifar10_quick": 10000, "alexnet": 1000} if not quick else {"cifar10_quick": 200}
    for arch, n in sizes.items():
        made, secs = {}, {}
        for where in ("cpu", "auto"):
            dm = SyntheticDataModule(image_shape=SHAPES[arch], n_train=10, n_test=n, root=root,
                                     val_split=0, distort_device=where, seed=7,
                                     cache_dir=f"{root}/cache-{arch}-{where}", **grid)  # fmt: skip
            t = time.perf_counter()
            dm.prepare_data()
            secs[where] = time.perf_counter() - t
            dm.setup()
            made[where] = [ds.images for ds in dm._data["test"]]
        differ = sum(int((a != b).sum()) for a, b in zip(*made.values(), strict=True))
        rows.append({"bench": "cold_grid", "model": arch, "images": n, "sets": len(made["cpu"]),
                     "distort_on": str(dm._distort_on()), "cpu_s": secs["cpu"],
                     "auto_s": secs["auto"], "speedup": secs["cpu"] / secs["auto"],
                     "differing_bytes": differ})  # fmt: skip
    return rows


def profile_fit(device, quick: bool, root: str, top: int = 25) -> list[dict]:
    """cProfile of one LeNet-5 epoch through the Lightning path: where its time per step goes."""
    import cProfile
    import io
    import pstats

    from robust_ft.data.datamodules import SyntheticDataModule
    from robust_ft.models.classifier import ImageClassifier

    n = 400 if quick else 20000
    dm = SyntheticDataModule(n_train=n, n_test=10, root=root, val_split=0)
    accel = "gpu" if device.type == "cuda" else "cpu"

    def fit():
        trainer = L.Trainer(
            accelerator=accel, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(ImageClassifier(arch="lenet5", lr=1e-3), datamodule=dm)

    fit()  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    fit()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    print(buf.getvalue()[-6000:])
    stats = pstats.Stats(prof).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [{"bench": "profile", "function": f"{Path(k[0]).name}:{k[1]}:{k[2]}", "calls": v[1],
             "tottime_s": v[2], "cumtime_s": v[3]} for k, v in rows]  # fmt: skip


# ----------------------------------------------------------------------------- main
def machine(device) -> dict:
    info = {"platform": platform.platform(), "nproc": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}  # fmt: skip
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:
        info["lightning"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    sms=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                    cudnn=torch.backends.cudnn.version())  # fmt: skip
    return info


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        cells = [f"{k}={v:,.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()]
        out.append("  " + " ".join(cells))
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a check of the script)")
    p.add_argument("--budget", type=float, default=330, help="seconds before sections are skipped")
    p.add_argument("--sections", default="distort,train,lightning,datamodule",
                   help="comma-separated: distort, train, lightning, datamodule, profile")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not a.quick:
        p.error("torch sees no CUDA GPU; run on a GPU machine, or add --quick to check the "
                "script on the CPU (its numbers then mean nothing)")  # fmt: skip
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rounds = 2 if a.quick else 5
    deadline = T0 + a.budget
    res = {"machine": machine(device), "device": str(device), "rows": [], "errors": []}
    print(json.dumps(res["machine"]), flush=True)
    import tempfile

    root = tempfile.mkdtemp(prefix="rft-gpu-")
    sections = {
        "distort": lambda: distortions(device, a.quick, rounds),
        "train": lambda: training(device, a.quick, rounds, deadline),
        "lightning": lambda: lightning_path(device, a.quick, rounds, deadline, root),
        "profile": lambda: profile_fit(device, a.quick, root),
        "datamodule": lambda: datamodule_cold(device, a.quick, root),
    }
    for name in a.sections.split(","):
        if time.perf_counter() > deadline:
            res["errors"].append(f"{name}: skipped, over the {a.budget:.0f} s budget")
            continue
        t = time.perf_counter()
        try:
            rows = sections[name]()
        except Exception as err:  # one broken section must not lose the others' numbers
            import traceback

            traceback.print_exc()
            res["errors"].append(f"{name}: {type(err).__name__}: {err}")
            rows = []
        res["rows"] += rows
        res[f"{name}_s"] = time.perf_counter() - t
        print(f"[{name}] {time.perf_counter() - t:.1f} s\n{table(rows)}", flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))
    res["total_s"] = time.perf_counter() - T0
    a.out.write_text(json.dumps(res, indent=2))
    print(f"total {res['total_s']:.0f} s; errors: {res['errors'] or 'none'}")
    return res


if __name__ == "__main__":
    main()
