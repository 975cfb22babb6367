"""The streaming path is bounded: peak memory does not grow with the dataset.

On generated JPEG ImageFolders of N and 10N images, each measured in a fresh process:
1. shard conversion (litdata ``optimize``): images/s;
2. two epochs of decode and per-image distortion draws (a DataLoader worker) + combined U(0,4)
   distortion applied per batch + LeNet-5 forward: first- and later-epoch images/s, and the peak RSS of the
   main process and of the worker (ratio 10N / N: the bound);
   the set-up's peak Python allocations once the shards exist (tracemalloc; per image: the
   slope between N and 10N);
3. per-image costs of the ImageNet protocol at 224x224x3 on this CPU (decode+resize+crop of a
   JPEG, the seeded combined distortion, AlexNet forward), used by the README's Table 1 estimate.

Usage: python benchmarks/streaming.py [--n 2000] [--factor 10] [--px 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _own_peak_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). ``ru_maxrss`` of RUSAGE_SELF would also
    count the parent's RSS at the fork: Linux carries it across execve."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return _peak_mb(resource.RUSAGE_SELF)


def _dm(root: str, cache: str, workers: int = 1):
    from robust_ft.data.datamodules import Distortion
    from robust_ft.data.imagefolder import ImageFolderDataModule

    return ImageFolderDataModule(
        root=root, channels=1, crop=28, resize=32, stream=True, cache_dir=cache, val_split=0,
        batch_size=100, num_workers=workers, distortion=Distortion("combined", "U(0,4)"),
        shard_workers=2,
    )  # fmt: skip


def child_convert(root: str, cache: str) -> dict:
    """Shard conversion of the train split: images/s."""
    dm = _dm(root, cache)
    files, _ = dm.streaming.selections()["train"]
    start = time.perf_counter()
    dm.prepare_data()
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in Path(cache, "streaming").rglob("*.bin"))
    return {"images": len(files), "convert_s": seconds, "convert_img_s": len(files) / seconds,
            "shard_mb": size / 2**20}  # fmt: skip


def child_read(root: str, cache: str, epochs: int) -> dict:
    """Epochs of decode (1 worker) + seeded combined distortion + LeNet-5 forward."""
    import torch

    from robust_ft.models import build

    torch.set_num_threads(1)
    dm = _dm(root, cache)
    dm.setup()
    net = build("lenet5", num_classes=dm.num_classes).eval()
    rates = []
    loader = dm.streaming.loader("train")
    for epoch in range(epochs):
        n, start = 0, time.perf_counter()
        with torch.no_grad():
            for batch in loader:  # the worker decoded and drew; the distortion is applied here
                x, y = dm.streaming.distort(batch, "train", 0, epoch)
                net((x.float() / 255 - 0.5) / 0.25)
                n += len(y)
        rates.append(n / (time.perf_counter() - start))
    return {"epoch_img_s": rates, "peak_rss_main_mb": _own_peak_mb(),
            "peak_rss_worker_mb": _peak_mb(resource.RUSAGE_CHILDREN)}  # fmt: skip


def child_setup_peak(root: str, cache: str) -> dict:
    """Peak Python allocations (tracemalloc) of the main process's set-up once the shards exist:
    listing the splits, their digests and selection keys, finding the shards."""
    import tracemalloc

    dm = _dm(root, cache)
    tracemalloc.start()
    dm.prepare_data()
    dm.setup()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"setup_peak_traced_mb": peak / 2**20}


def child_cost224(root: str) -> dict:
    """Per-image costs (ms, one core) of the ImageNet protocol at 224x224x3."""
    import torch

    from robust_ft.data.distortions import distort_batch_seeded, draw_params
    from robust_ft.data.imagefolder import decode
    from robust_ft.data.streaming import sample_seeds
    from robust_ft.models import build

    torch.set_num_threads(1)
    files = sorted(Path(root).rglob("*.jpg"))
    start = time.perf_counter()
    images = [decode(f, 3, 256, 224) for f in files]
    decode_ms = 1000 * (time.perf_counter() - start) / len(files)
    x = torch.from_numpy(__import__("numpy").stack(images)).permute(0, 3, 1, 2).contiguous()
    seeds = sample_seeds("bench", "train", range(len(x)), "combined", (0.0, 4.0), 0)
    start = time.perf_counter()
    for s in seeds:
        draw_params("combined", "U(0,4)", x.shape[1:], s)
    draw_ms = 1000 * (time.perf_counter() - start) / len(x)
    start = time.perf_counter()
    for i in range(0, len(x), 25):
        distort_batch_seeded(x[i : i + 25], "combined", "U(0,4)", seeds[i : i + 25])
    distort_ms = 1000 * (time.perf_counter() - start) / len(x)
    net = build("alexnet").eval()
    start = time.perf_counter()
    with torch.no_grad():
        net(x[:20].float())
    forward_ms = 1000 * (time.perf_counter() - start) / 20
    return {"images": len(files), "decode_ms": decode_ms, "draw_combined_ms": draw_ms,
            "distort_combined_ms": distort_ms,
            "alexnet_forward_cpu_ms": forward_ms}  # fmt: skip


def _run_child(*args: str) -> dict:
    env = {**os.environ, **CHILD_ENV}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _folder(base: Path, n: int, px: int, classes: int = 10) -> Path:
    from robust_ft.data.make_folder import make_folder

    per = n // classes
    return make_folder(base / f"jpeg{n}", classes, per, max(1, per // 10), px, "RGB", "jpg")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="images of the small folder (N)")
    p.add_argument("--factor", type=int, default=10, help="the large folder has factor x N")
    p.add_argument("--px", type=int, default=64, help="side of the generated JPEGs")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/streaming.json")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *rest = a.child
        fn = {"convert": child_convert, "read": child_read, "setup_peak": child_setup_peak,
              "cost224": child_cost224}[kind]  # fmt: skip
        args = [int(r) if r.isdigit() else r for r in rest]
        print(json.dumps(fn(*args)))
        return
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for n in (a.n, a.n * a.factor):
            root, cache = _folder(base, n, a.px), base / f"cache{n}"
            row = {"n": n, "px": a.px, **_run_child("convert", str(root), str(cache))}
            row.update(_run_child("read", str(root), str(cache), str(a.epochs)))
            row.update(_run_child("setup_peak", str(root), str(cache)))
            rows.append(row)
            print(json.dumps(row), flush=True)
        from robust_ft.data.make_folder import make_folder

        photos = make_folder(base / "photos", 2, 50, 1, 320, "RGB", "jpg")
        cost = _run_child("cost224", str(photos / "train"))
    small, large = rows
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(sys.argv),
        "rows": rows,
        "rss_ratio_main": large["peak_rss_main_mb"] / small["peak_rss_main_mb"],
        "rss_ratio_worker": large["peak_rss_worker_mb"] / small["peak_rss_worker_mb"],
        "setup_peak_bytes_per_image": 2**20
        * (large["setup_peak_traced_mb"] - small["setup_peak_traced_mb"])
        / (large["images"] - small["images"]),
        "per_image_224": cost,
        "total_s": time.time() - t0,
        "load_average_at_end": os.getloadavg(),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
