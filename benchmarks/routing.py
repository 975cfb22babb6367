"""Does routing pay? The router vs one all-round model on images of mixed distortions.

On the Fashion-MNIST test set, every image gets its own random kind (motion, defocus, noise,
combined) and level (0..4, level 0 = clean), drawn with a fixed seed. Errors (%) of:
- the clean model (``<model>-<dataset>@clean``);
- one model fine-tuned on combined distortions with per-image levels U(0,4) (the paper's ImageNet
  protocol; alias ``combined-U0-4``);
- the router (``<model>-<dataset>-router@current``: estimate, then the registered fine-tune);
- an oracle router: the same registered models, chosen by the true kind and level;
and the router's added latency per image (router minus the clean model alone, batches of 128
and of 1). Needs those models in the registry: `make bench-routing` makes them from scratch.

Usage: python benchmarks/routing.py [--model lenet5 --dataset fashion_mnist] [--out routing.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

KINDS = ("motion", "defocus", "noise", "combined")


def mixed_test_set(images: np.ndarray, seed: int = 0):
    """Each uint8 image (N,1,H,W) distorted by its own random kind and level 0..4."""
    from robust_ft.data.distortions import distort_batch

    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, len(KINDS), len(images))
    levels = rng.integers(0, 5, len(images))
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images).clone()
    for k, kind in enumerate(KINDS):
        for level in range(1, 5):
            idx = np.flatnonzero((kinds == k) & (levels == level))
            if len(idx):
                x[idx] = distort_batch(x[idx], kind, float(level), g)
    return x.numpy(), kinds, levels


def oracle_alias(routes: dict, kind: str, level: int) -> str:
    """The alias a router that knows the truth would use (the same members as the router)."""
    from robust_ft.deploy.router import choose

    return "clean" if level == 0 else choose(routes, kind, float(level))


def logits_of(model, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i : i + batch])).numpy()
                               for i in range(0, len(x), batch)])  # fmt: skip


def per_image_seconds(fn, x: np.ndarray, batch: int, n: int) -> float:
    """Wall time per image of ``fn`` over the first ``n`` images in batches of ``batch``."""
    fn(x[:batch])  # warm
    start = time.perf_counter()
    for i in range(0, n, batch):
        fn(x[i : i + batch])
    return (time.perf_counter() - start) / n


def register_allround(name: str) -> str:
    """Register the newest first-N fine-tune on combined U(0,4) of ``name`` (alias
    ``combined-U0-4``) when no version has that alias yet; the alias."""
    from mlflow.exceptions import MlflowException

    from robust_ft.deploy.registry import register_run
    from robust_ft.tracking import client, find_runs

    try:
        client().get_model_version_by_alias(name, "combined-U0-4")
        return "combined-U0-4"
    except MlflowException:
        pass
    where = ("tags.distortion = 'combined' and tags.level = 'U(0,4)' and tags.method LIKE 'first-%'"
             " and attributes.status = 'FINISHED'")  # fmt: skip
    runs = find_runs(name, where)
    if not runs:
        raise SystemExit(f"no finished first-N fine-tune on combined U(0,4) in experiment {name}; "
                         "run the `fit` of `make bench-routing` first")  # fmt: skip
    return register_run(runs[0].info.run_id).alias


def bench(model: str, dataset: str, seed: int) -> dict:
    """Errors of the four ways on one mixed test set, the router's latency, its route accuracy."""
    import mlflow
    from distortions import machine  # benchmarks/ is the script's directory

    from robust_ft.data.sources import load_idx_dataset

    name = f"{model}-{dataset}"
    router = mlflow.pyfunc.load_model(f"models:/{name}-router@current")
    routes = {a: tuple(v) for a, v in router.model_config["routes"].items()}
    members = {a: mlflow.pytorch.load_model(f"models:/{name}@{a}") for a in routes}
    allround = mlflow.pytorch.load_model(f"models:/{name}@{register_allround(name)}")
    images, labels = load_idx_dataset(Path("data"), "FashionMNIST", "test")
    x, kinds, levels = mixed_test_set(np.asarray(images)[:, None], seed)
    start = time.perf_counter()
    routed = router.predict(x)
    router_s = time.perf_counter() - start
    truth = np.array(
        [oracle_alias(routes, KINDS[k], int(lv)) for k, lv in zip(kinds, levels, strict=True)]
    )
    oracle = np.zeros(len(x), dtype=int)
    for alias in np.unique(truth):
        idx = np.flatnonzero(truth == alias)
        oracle[idx] = logits_of(members[alias], x[idx]).argmax(1)
    preds = {
        "clean model": logits_of(members["clean"], x).argmax(1),
        "one model fine-tuned on combined U(0,4)": logits_of(allround, x).argmax(1),
        "router": routed["class"].to_numpy(),
        "oracle router": oracle,
    }
    errors = {k: 100 * float(np.mean(p != labels)) for k, p in preds.items()}
    by_level = {k: [100 * float(np.mean(p[levels == lv] != labels[levels == lv])) for lv in range(5)]
                for k, p in preds.items()}  # fmt: skip
    latency = {}
    for batch, n in ((128, 2048), (1, 200)):  # best of 3 alternating rounds: a shared machine
        rounds = [(per_image_seconds(router.predict, x, batch, n),
                   per_image_seconds(lambda b: logits_of(members["clean"], b), x, batch, n))
                  for _ in range(3)]  # fmt: skip
        r, c = min(t[0] for t in rounds), min(t[1] for t in rounds)
        latency[f"batch {batch}"] = {
            "router_ms": 1e3 * r,
            "clean_ms": 1e3 * c,
            "added_ms": 1e3 * (r - c),
        }
    return {"model": model, "dataset": dataset, "images": len(x), "seed": seed, "errors": errors,
            "errors_by_level": by_level, "route_agreement": 100 * float(np.mean(routed.route.to_numpy() == truth)),
            "router_seconds": router_s, "latency": latency, "routes": sorted(routes), "machine": machine()}  # fmt: skip


def render(res: dict) -> str:
    lines = [f"Mixed-distortion Fashion-MNIST test set ({res['images']} images, kind and level 0..4 "
             "drawn per image):", "", "| model | error (%) | " + " | ".join(f"L{lv}" for lv in range(5)) + " |",
             "|---|---:|" + "---:|" * 5]  # fmt: skip
    for k, v in res["errors"].items():
        lines.append(
            f"| {k} | {v:.2f} | " + " | ".join(f"{e:.2f}" for e in res["errors_by_level"][k]) + " |"
        )
    lines += ["", f"router sends {res['route_agreement']:.1f}% of images where the oracle does",
              "", "| batch | router (ms/image) | clean model (ms/image) | added by routing (ms/image) |",
              "|---:|---:|---:|---:|"]  # fmt: skip
    for b, v in res["latency"].items():
        lines.append(
            f"| {b.split()[1]} | {v['router_ms']:.3f} | {v['clean_ms']:.3f} | {v['added_ms']:.3f} |"
        )
    e = res["errors"]
    r, one, o = e["router"], e["one model fine-tuned on combined U(0,4)"], e["oracle router"]
    lines += ["", f"goal 1, router beats the one U(0,4) model: {'met' if r < one else 'NOT met'} "
              f"({r:.2f}% vs {one:.2f}%, {one - r:+.2f} points)",
              f"goal 2, router within 1 point of the oracle: {'met' if r - o <= 1 else 'NOT met'} "
              f"({r - o:+.2f} points)", f"machine: {res['machine']['cpu']}, {res['machine']['nproc']} cores, "
              f"torch threads {res['machine']['torch_threads']}, GPU {res['machine']['gpu'] or 'none'}"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()
    from robust_ft.console import console_logging, quiet_third_party

    console_logging()
    quiet_third_party()
    res = bench(a.model, a.dataset, a.seed)
    print(render(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
