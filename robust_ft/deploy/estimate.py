"""`robust-ft estimate`: which paper distortion a set of images carries, and how strong.

``--train`` trains the estimator (``deploy.estimator``) on clean Fashion-MNIST training images,
logs it to MLflow (experiment ``distortion-estimator``) and registers it as
``distortion-estimator@fashion_mnist``; ``--validate`` measures it on Fashion-MNIST *test* images
distorted with known kinds and levels (never seen in training) and prints the table; ``--data``
estimates a dataset split or an image folder: per image and for the whole set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NAME, ALIAS, EXPERIMENT = "distortion-estimator", "fashion_mnist", "distortion-estimator"
SET_SIZE = 100


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="robust-ft estimate", description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", help="a dataset name (fashion_mnist, mnist) or an image folder")
    what.add_argument("--train", action="store_true", help="train, log and register the estimator")
    what.add_argument("--validate", action="store_true", help="the validation table")
    p.add_argument("--split", default="test", choices=["train", "test"], help="dataset split")
    p.add_argument("--distort", metavar="KIND:LEVEL",
                   help="distort the images first (e.g. defocus:2): a check on known input")  # fmt: skip
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (--train)")
    p.add_argument("--train-images", type=int, help="only the first N training images (--train)")
    p.add_argument(
        "--images", type=int, default=2000, help="test images per (kind, level) (--validate)"
    )
    p.add_argument("--levels", default="1,2,3,4", help="levels of the table (--validate)")
    p.add_argument("--root", default="data", help="dataset root (default: data)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    """`robust-ft estimate`."""
    from robust_ft.tracking import check_reachable, default_tracking_uri

    a = parse_args(argv)
    uri = a.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    if a.train:
        return train_and_register(Path(a.root), a.epochs, uri, a.train_images)
    if a.validate:
        levels = [float(v) for v in a.levels.split(",")]
        return validate_command(Path(a.root), a.images, uri, a.json, levels)
    return estimate_command(a, uri)


def train_and_register(
    root: Path, epochs: int, uri: str, limit: int | None = None, seed: int = 0
) -> str:
    """Train on clean Fashion-MNIST training images; log and register; the version."""
    import logging

    from robust_ft.data.sources import load_idx_dataset
    from robust_ft.deploy import estimator
    from robust_ft.tracking import client, log_torch_model, tracked_run, uint8_signature

    log = logging.getLogger("robust_ft")
    images = load_idx_dataset(root, "FashionMNIST", "train")[0][:limit]
    params = {"epochs": epochs, "seed": seed, "train_images": len(images), "bins": len(estimator.BINS),
              "level_range": str(estimator.LEVEL_RANGE), "kinds": ",".join(estimator.KINDS)}  # fmt: skip
    log.info("training the distortion estimator on %d clean Fashion-MNIST images, %d epochs",
             len(images), epochs)  # fmt: skip
    tags = {"method": "estimator", "dataset": "fashion_mnist", "model": "distortion-estimator"}
    with tracked_run(EXPERIMENT, run_name="estimator", tags=tags, params=params, uri=uri) as run:
        net, stats = estimator.train(images, epochs=epochs, seed=seed)
        c = client(uri)
        c.log_metric(run.run_id, "train/loss", stats.final_loss)
        c.log_metric(run.run_id, "train/seconds", stats.seconds)
        signature = uint8_signature((1, -1, -1), estimator.N_CLASSES)
        log_torch_model(run.run_id, net, signature, "model", uri)
    from robust_ft.deploy.registry import logged_model_id

    model_id = logged_model_id(c, c.get_run(run.run_id), uri)
    if not c.search_registered_models(f"name = '{NAME}'"):
        c.create_registered_model(NAME, description="robust-ft's distortion estimator")
    v = c.create_model_version(NAME, f"models:/{model_id}", run_id=run.run_id, model_id=model_id)
    c.set_registered_model_alias(NAME, ALIAS, v.version)
    print(f"trained in {stats.seconds:.0f} s; registered models:/{NAME}/{v.version} @{ALIAS} "
          f"(run {run.run_id})")  # fmt: skip
    return str(v.version)


def load(uri: str):
    """The registered estimator (an nn.Module), or a clear error saying how to make one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from robust_ft.tracking import client

    try:
        client(uri).get_model_version_by_alias(NAME, ALIAS)
    except MlflowException:
        raise ValueError(
            f"no distortion estimator registered in this tracking store ({NAME}@{ALIAS}); "
            "train one first with `robust-ft estimate --train` (a few minutes on 2 CPU cores)"
        ) from None
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pytorch.load_model(f"models:/{NAME}@{ALIAS}").eval()
    finally:
        mlflow.set_tracking_uri(before)


def validation_rows(net, images, n: int, levels=(1, 2, 3, 4), seed: int = 1) -> list[dict]:
    """Per (kind, level): per-image kind accuracy and level error, and the set-level estimate's
    error over sets of ``SET_SIZE`` images, on distorted ``images``. Motion's true level is
    round(level): its random walk has that many steps."""
    import numpy as np
    import torch

    from robust_ft.data.distortions import distort_batch
    from robust_ft.deploy import estimator as E

    x = torch.from_numpy(np.asarray(images[:n])).unsqueeze(1)
    g = torch.Generator().manual_seed(seed)
    grid = [("clean", 0)] + [(k, lv) for k in E.KINDS[1:] for lv in levels]
    rows = []
    for kind, level in grid:
        d = x if kind == "clean" else distort_batch(x, kind, float(level), g)
        truth = round(level) if kind == "motion" else level
        logp = E.log_probs(net, d)
        kinds, per_level, _ = E.per_image(logp)
        sets = [E.set_estimate(logp[i : i + SET_SIZE]) for i in range(0, len(d), SET_SIZE)]
        set_err = [abs(s["level"] - truth) for s in sets]
        rows.append({
            "kind": kind, "level": level, "images": len(d),
            "kind_accuracy": 100 * float(np.mean(kinds == E.KINDS.index(kind))),
            "level_mae": float(np.mean(np.abs(per_level - truth))),
            "sets": len(sets),
            "set_kind_accuracy": 100 * float(np.mean([s["kind"] == kind for s in sets])),
            "set_level_error": float(np.mean(set_err)),
            "set_level_error_max": float(np.max(set_err)),
        })  # fmt: skip
    return rows


GOALS = (
    "goals: set-level level error <= 0.25 for blur (motion, defocus, combined) and <= 0.5 for "
    "noise at levels 1..4; per-image kind accuracy >= 90% at level >= 2"
)


def goals_met(rows: list[dict]) -> list[str]:
    """One line per goal the rows can judge: met or not, by how much (the worst case)."""
    graded = [r for r in rows if r["level"] >= 1]
    checks = [
        ("set level error, blur: worst set", "<=", 0.25, "{:.2f}",
         [r["set_level_error_max"] for r in graded if r["kind"] != "noise"]),
        ("set level error, noise: worst set", "<=", 0.5, "{:.2f}",
         [r["set_level_error_max"] for r in graded if r["kind"] == "noise"]),
        ("per-image kind accuracy at level >= 2: lowest", ">=", 90, "{:.1f}%",
         [r["kind_accuracy"] for r in graded if r["level"] >= 2]),
    ]  # fmt: skip
    lines = []
    for what, op, goal, fmt, values in checks:
        if values:
            worst = max(values) if op == "<=" else min(values)
            met = worst <= goal if op == "<=" else worst >= goal
            unit = "%" if fmt.endswith("%") else ""
            lines.append(f"{what} {fmt.format(worst)} (goal {op} {goal:g}{unit}): "
                         + ("met" if met else "NOT met"))  # fmt: skip
    return lines


def render_validation(rows: list[dict]) -> str:
    lines = [
        "| kind | level | kind accuracy (%) | level MAE | set kind accuracy (%) "
        f"| set level error, mean / worst ({rows[0]['sets']} sets of {SET_SIZE}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['level']:g} | {r['kind_accuracy']:.1f} | {r['level_mae']:.2f} "
            f"| {r['set_kind_accuracy']:.0f} | {r['set_level_error']:.2f} / "
            f"{r['set_level_error_max']:.2f} |"
        )
    return "\n".join(lines)


def validate_command(
    root: Path, n: int, uri: str, as_json: bool, levels=(1, 2, 3, 4)
) -> list[dict]:
    """Validate the registered estimator on distorted Fashion-MNIST test images; print the table
    and log it to the estimator's run."""
    from robust_ft.data.sources import load_idx_dataset
    from robust_ft.tracking import client

    net = load(uri)
    images, _ = load_idx_dataset(root, "FashionMNIST", "test")
    start = time.time()
    rows = validation_rows(net, images, n, levels)
    seconds = time.time() - start
    c = client(uri)
    run_id = c.get_model_version_by_alias(NAME, ALIAS).run_id
    for r in rows:
        for key in ("kind_accuracy", "level_mae", "set_level_error", "set_level_error_max"):
            c.log_metric(run_id, f"validation/{key}/{r['kind']}/L{r['level']:g}", r[key])
    if as_json:
        print(json.dumps({"rows": rows, "goals": goals_met(rows)}, indent=2))
    else:
        print(f"Distortion estimator on Fashion-MNIST test images ({n} per row; "
              f"{seconds:.0f} s):\n{render_validation(rows)}\n\n{GOALS}")  # fmt: skip
        print("\n".join(goals_met(rows)))
    return rows


def load_images(data: str, split: str, root: Path):
    """uint8 (N,1,H,W) images of a dataset split (``fashion_mnist``, ``mnist``) or a folder."""
    import numpy as np

    from robust_ft.data.sources import load_idx_dataset

    folders = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
    if data in folders:
        return np.asarray(load_idx_dataset(root, folders[data], split)[0])[:, None]
    path = Path(data)
    if not path.is_dir():
        raise ValueError(
            f"--data {data!r} is neither a dataset name ({', '.join(folders)}) nor an image "
            "folder; give one of those names or a directory of image files"
        )
    return _folder_images(path)


def _folder_images(path: Path):
    """Every image file under ``path`` (recursively) as grayscale, all of the first one's size."""
    import numpy as np
    from PIL import Image

    from robust_ft.data.imagefolder import EXTENSIONS

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ValueError(f"no image files under {path}; accepted: {', '.join(EXTENSIONS)}")
    arrays = [np.asarray(Image.open(f).convert("L")) for f in files]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"images under {path} differ in size; resize them to one size first")
    return np.stack(arrays)[:, None]


def estimate_command(a: argparse.Namespace, uri: str) -> dict:
    """Estimate the distortion of each image and of the set; print a summary (or JSON)."""
    import numpy as np
    import torch

    from robust_ft.deploy import estimator as E

    images = load_images(a.data, a.split, Path(a.root))[: a.limit]
    if a.distort:
        from robust_ft.data.distortions import distort_batch

        kind, _, level = a.distort.partition(":")
        g = torch.Generator().manual_seed(0)
        images = distort_batch(torch.from_numpy(images), kind, level or "0", g).numpy()
    logp = E.log_probs(load(uri), images)
    kinds, levels, _ = E.per_image(logp)
    overall = E.set_estimate(logp)
    per_kind = []
    for i, k in enumerate(E.KINDS):
        sel = levels[kinds == i]
        if len(sel):
            per_kind.append(
                {"kind": k, "images": int(len(sel)), "median_level": float(np.median(sel))}
            )
    out = {
        "data": a.data,
        "split": a.split,
        "distorted": a.distort,
        "set": overall,
        "per_image": per_kind,
    }
    if a.json:
        print(json.dumps(out, indent=2))
        return out
    what = f"{a.data} {a.split}" + (f" distorted {a.distort}" if a.distort else "")
    s = overall
    print(f"{what} ({s['images']} images): {s['kind']}, level {s['level']:.2f}  "
          f"({100 * s['kind_share']:.0f}% of images called {s['kind']}; per-image levels: median "
          f"{s['median_level']:.2f}, IQR {s['level_iqr']:.2f})")  # fmt: skip
    print("\n| per-image kind | images | median level |\n|---|---:|---:|")
    for r in per_kind:
        print(f"| {r['kind']} | {r['images']} | {r['median_level']:.2f} |")
    return out
