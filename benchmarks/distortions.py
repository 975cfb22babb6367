"""Throughput (images/s) of the paper's distortions against imagecorruptions, Albumentations, kornia.

    python benchmarks/distortions.py [--quick] [--out benchmarks/results/distortions.json]

Every method distorts the same uint8 images at a comparable strength (level 2: a 2-step motion
walk / 5x5 motion kernel, a disc of radius 2, noise std 2 grey levels); imagecorruptions has no
strength that small and runs at severity 1 (its mildest). kornia runs on float32 tensors in 0..1,
its native format, without the uint8 rounding. A competitor that is not installed is skipped with
a note. Prints a markdown table and saves it as JSON with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robust_ft.data.distortions import KINDS, distort, distort_batch  # noqa: E402

LEVEL = 2.0
SHAPES = {"28x28x1": (28, 28, 1), "32x32x3": (32, 32, 3)}
BATCH = 512
Bench = Callable[[np.ndarray], Callable[[], object]]  # images (N,H,W,C) -> one timed call


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Random smooth uint8 images (N,H,W,C)."""
    from scipy import ndimage

    noise = np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.float32)
    return ndimage.uniform_filter(noise, size=(1, 3, 3, 1)).astype(np.uint8)


def _per_image(apply: Callable[[np.ndarray], object]) -> Bench:
    """A benchmark that applies ``apply`` to every image in turn."""
    return lambda images: lambda: [apply(im) for im in images]


def ours_per_image(kind: str) -> Bench:
    rng = np.random.default_rng(0)
    return _per_image(lambda im: distort(im, kind, LEVEL, rng))


def ours_batched(kind: str, device: str) -> Bench:
    def make(images: np.ndarray) -> Callable[[], object]:
        batches = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device).split(BATCH)
        generator = torch.Generator(device).manual_seed(0)

        def run() -> None:
            for batch in batches:
                distort_batch(batch, kind, LEVEL, generator)
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    return make


def randn_floor(kind: str) -> Bench | None:
    """For noise only: ``torch.randn`` of each batch alone, the floor of any torch noise stage."""
    if kind != "noise":
        return None

    def make(images: np.ndarray) -> Callable[[], object]:
        shapes = [b.shape for b in torch.from_numpy(images).split(BATCH)]
        generator = torch.Generator().manual_seed(0)
        return lambda: [torch.randn(s, generator=generator) for s in shapes]

    return make


def imagecorruptions(kind: str) -> Bench | str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from imagecorruptions import corrupt
    except ImportError as err:
        return f"not installed ({err})"
    name = {"motion": "motion_blur", "defocus": "defocus_blur", "noise": "gaussian_noise"}[kind]

    def make(images: np.ndarray) -> Callable[[], object] | str:
        if min(images.shape[1:3]) < 32:
            return "needs >= 32x32 images"
        squeeze = images.shape[-1] == 1
        return _per_image(
            lambda im: corrupt(im[..., 0] if squeeze else im, corruption_name=name, severity=1)
        )(images)

    return make


def albumentations(kind: str) -> Bench | str:
    try:
        import albumentations as A
    except ImportError as err:
        return f"not installed ({err})"
    transform = {
        "motion": lambda: A.MotionBlur(blur_limit=(5, 5), p=1.0),
        "defocus": lambda: A.Defocus(radius=(2, 2), alias_blur=(0.1, 0.1), p=1.0),
        "noise": lambda: A.GaussNoise(std_range=(LEVEL / 255, LEVEL / 255), p=1.0),
    }[kind]()
    return _per_image(lambda im: transform(image=im)["image"])


def kornia(kind: str) -> Bench | str:
    try:
        import kornia as K
        from kornia.augmentation import RandomGaussianNoise
    except ImportError as err:
        return f"not installed ({err})"
    from robust_ft.data.distortions import disk_kernel

    def make(images: np.ndarray) -> Callable[[], object]:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).split(BATCH)
        disk = torch.from_numpy(disk_kernel(LEVEL)).float()[None]
        noise = RandomGaussianNoise(std=LEVEL / 255, p=1.0)
        ops = {
            "motion": lambda b: K.filters.motion_blur(
                b, 5, torch.rand(len(b)) * 360, torch.rand(len(b)) * 2 - 1
            ),
            "defocus": lambda b: K.filters.filter2d(b, disk),
            "noise": lambda b: noise(b),
        }
        return lambda: [ops[kind](b) for b in x]

    return make


def _rate(run: Callable[[], object], n_images: int, min_time: float) -> float:
    """Images per second of repeated calls of ``run`` over at least min_time."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time or calls == 0:
        run()
        calls += 1
    return calls * n_images / elapsed


def measure(
    runs: dict[str, tuple[Callable[[], object], int]], min_time: float, repeats: int
) -> dict[str, float]:
    """Best images/s of every run over ``repeats`` rounds that take turns, after a warm-up.

    Turns and the best rather than the mean (as ``timeit`` advises): on a shared machine the
    slower timings measure the other tenants, and every method meets the same ones.
    """
    for run, _ in runs.values():
        run()
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, (run, n) in runs.items():
            best[name] = max(best[name], _rate(run, n, min_time))
    return best


def machine() -> dict:
    """Where this ran."""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    for package in (
        "torch",
        "numpy",
        "scipy",
        "albumentations",
        "imagecorruptions",
        "kornia",
        "opencv-python",
    ):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, shorter timings")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/distortions.json"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: one core, like the others)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_fast, n_slow, min_time, repeats = (1024, 64, 0.02, 3) if args.quick else (2048, 200, 0.15, 7)

    methods: dict[str, Callable[[str], Bench | str]] = {
        "distort": ours_per_image,
        "distort_batch_cpu": lambda kind: ours_batched(kind, "cpu"),
    }
    if torch.cuda.is_available():
        methods["distort_batch_cuda"] = lambda kind: ours_batched(kind, "cuda")
    competitors = {
        "imagecorruptions": imagecorruptions,
        "albumentations": albumentations,
        "kornia": kornia,
        "torch.randn": randn_floor,
    }
    batched = {"distort_batch_cpu", "distort_batch_cuda", "kornia", "torch.randn"}

    rows, notes = [], set()
    for shape_name, shape in SHAPES.items():
        for kind in KINDS:
            runs = {}
            for name, factory in {**methods, **competitors}.items():
                if name in competitors and kind == "combined":
                    continue
                n = n_fast if name in batched else n_slow
                bench = factory(kind)
                if bench is None:
                    continue
                run = bench if isinstance(bench, str) else bench(_images(n, shape))
                if isinstance(run, str):
                    notes.add(f"{name}: skipped, {run}")
                else:
                    runs[name] = (run, n)
            row = {"shape": shape_name, "kind": kind, **measure(runs, min_time, repeats)}
            for other in ("imagecorruptions", "albumentations"):
                if other in row:
                    row[f"batch_cpu/{other}"] = row["distort_batch_cpu"] / row[other]
            rows.append(row)
            print(f"  {shape_name} {kind}: done", file=sys.stderr)

    columns = [
        c for c in rows[0].keys() | {k for r in rows for k in r} if c not in ("shape", "kind")
    ]
    order = [*methods, *competitors, "batch_cpu/imagecorruptions", "batch_cpu/albumentations"]
    columns = [c for c in order if c in columns]
    lines = [
        "| shape | kind | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for r in rows:
        cells = [
            "" if c not in r else f"{r[c]:.1f}x" if "/" in c else f"{r[c]:,.0f}" for c in columns
        ]
        lines.append(f"| {r['shape']} | {r['kind']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    info = machine()
    print(
        f"\nimages/s, level {LEVEL:g}, batch {BATCH}; {info['cpu']}, {info['nproc']} cores, "
        f"{info['torch_threads']} torch threads" + (f", {info['gpu']}" if info["gpu"] else "")
    )
    print(table)
    for note in sorted(notes):
        print(f"- {note}")
    result = {
        "machine": info,
        "level": LEVEL,
        "batch": BATCH,
        "quick": args.quick,
        "rows": rows,
        "notes": sorted(notes),
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"saved {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
