"""The main job (`robust-ft demo`, `mlflow run . -e main`): the paper's comparison on one setting.

pre-train on clean data -> evaluate it on every kind x level (no-train) -> fine-tune first-1..N
and re-train on one distorted setting -> test each; every step a nested MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("robust_ft")
CONF = Path(__file__).resolve().parent / "conf"  # package data; the repo's conf/ links here


def base_config(model: str, dataset: str) -> Path:
    """The config file of a model x dataset pair, with a clear error when there is none."""
    path = Path("conf") / f"{model}_{dataset}.yaml"
    if not path.exists():
        path = CONF / f"{model}_{dataset}.yaml"
    if not path.exists():
        have = ", ".join(sorted(p.stem for p in CONF.glob("*_*.yaml") if p.stem.count("_") >= 1))
        raise FileNotFoundError(
            f"no config for model {model!r} on dataset {dataset!r}; have: {have}"
        )
    return path


def demo_main(argv: list[str] | None = None) -> dict:
    """Run the demo pipeline and print the error table."""
    p = argparse.ArgumentParser(prog="robust-ft demo", description=__doc__)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--config", default=str(CONF / "demo.yaml"), help="budget overlay")
    p.add_argument("--kind", default="defocus", help="distortion to fine-tune/re-train on")
    p.add_argument("--level", default="2")
    p.add_argument("--levels", default="0,1,2,3,4", help="no-train evaluation levels")
    p.add_argument("--first-n", default="1,2,3,4", help="fine-tune these first-N settings")
    p.add_argument("--finetune-subset", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="data")
    p.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="more CLI flags for every run"
    )
    a = p.parse_args(argv)
    return demo(a)


def demo(a: argparse.Namespace) -> dict:
    """The demo's runs, nested under one parent run; returns each step's ``RunResult``."""
    from robust_ft.settings import experiment_name
    from robust_ft.tracking import (
        check_reachable,
        default_tracking_uri,
        redact,
        tracked_run,
    )
    from robust_ft.tracking import client as tracking_client
    from robust_ft.ui import open_hint, view_fragment

    uri = default_tracking_uri()
    check_reachable(uri)
    start = time.time()
    with tracked_run(
        experiment_name(a.model, a.dataset),
        run_name="demo",
        tags={"method": "pipeline", "pipeline": "demo"},
        params={k: str(v) for k, v in vars(a).items()},
    ) as parent:
        steps = demo_steps(a, parent)
    print(format_tables(a, steps))
    print(f"\n[demo] done in {time.time() - start:.0f} s. MLflow store: {redact(uri)}")
    exp_id = tracking_client().get_run(parent.run_id).info.experiment_id
    print(f"[demo] the runs in the UI: {open_hint(uri, view_fragment(exp_id))}")
    return steps


def demo_steps(a: argparse.Namespace, parent) -> dict:
    """Pre-train, no-train on the grid, first-N fine-tunes, re-train: nested runs of ``parent``."""
    from robust_ft.levels import level_text
    from robust_ft.runner import run
    from robust_ft.settings import test_grid

    configs = [base_config(a.model, a.dataset), a.config]
    common = {
        "seed_everything": a.seed,
        "data.init_args.root": a.root,
        "tracking": {"parent_run_id": parent.run_id, "experiment": parent.experiment},
    }

    def step(command: str, overrides: dict):
        return run(command, {**common, **overrides}, configs=configs, argv=a.extra)

    kinds = ["motion", "defocus", "noise", "combined"]
    steps = {}
    log.info(f"[demo] pre-train {a.model} on clean {a.dataset}")
    steps["pretrain"] = pre = step("fit", {"data.init_args.test_kinds": ["clean"]})
    log.info(f"[demo] no-train: the clean model on {kinds} x levels {a.levels}")
    # clean too: the no-train run is the clean model's whole record (its clean column included)
    grid = {
        "test_kinds": ["clean", *kinds],
        "test_levels": [level_text(x) for x in a.levels.split(",") if x],
    }
    steps["notrain"] = step(
        "test",
        {"model.init_from": pre.run_id, **{f"data.init_args.{k}": v for k, v in grid.items()}},
    )
    setting = {
        "data.init_args.distortion": {"kind": a.kind, "level": level_text(a.level)},
        **{f"data.init_args.{k}": v for k, v in test_grid(a.kind, a.level).items()},
    }
    for n in [int(x) for x in a.first_n.split(",") if x]:
        log.info(f"[demo] fine-tune first-{n} on {a.kind} level {a.level}")
        finetune = {"model.first_n": n, "model.init_from": pre.run_id}
        subset = {"data.init_args.train_subset": a.finetune_subset}
        steps[f"first-{n}"] = step("fit", {**setting, **finetune, **subset})
    log.info(f"[demo] re-train on {a.kind} level {a.level}")
    steps["retrain"] = step("fit", setting)
    return steps


def format_tables(a, steps: dict) -> str:
    """The demo's two tables: no-train error per kind x level, and error per method."""
    from robust_ft.formatting import fmt_error
    from robust_ft.levels import level_tag

    notrain = steps["notrain"]
    levels = [x for x in a.levels.split(",") if x]
    out = [f"\nTest error (%) of the clean model (no-train), {a.model} on {a.dataset}:"]
    out.append("| kind | " + " | ".join(f"L{x}" for x in levels) + " |")
    out.append("|---|" + "---|" * len(levels))
    for kind in ("motion", "defocus", "noise", "combined"):
        row = [notrain.metrics.get(f"test/err/{kind}/{level_tag(x)}") for x in levels]
        out.append(f"| {kind} | " + " | ".join(fmt_error(v) for v in row) + " |")
    tag = f"{a.kind}/{level_tag(a.level)}"
    out.append(f"\nTest error (%) per method, trained on {tag}:")
    out.append(f"| method | clean | {tag} |")
    out.append("|---|---|---|")
    out.append(f"| no-train | {fmt_error(notrain.metrics.get('test/err/clean/L0'))} | "
               f"{fmt_error(notrain.metrics.get(f'test/err/{tag}'))} |")  # fmt: skip
    for name, r in steps.items():
        if name in ("pretrain", "notrain"):
            continue
        out.append(
            f"| {name} | {fmt_error(r.metrics.get('test/err/clean/L0'))} | "
            f"{fmt_error(r.metrics.get(f'test/err/{tag}'))} |"
        )
    return "\n".join(out)


def datamodules() -> dict[str, type]:
    """The DataModules by dataset name (``show-distortions --dataset``)."""
    from robust_ft.data import datamodules as dms
    from robust_ft.data.imagefolder import ImageFolderDataModule

    return {
        "mnist": dms.MNISTDataModule,
        "fashion_mnist": dms.FashionMNISTDataModule,
        "cifar10": dms.CIFAR10DataModule,
        "imagefolder": ImageFolderDataModule,
        "synthetic": dms.SyntheticDataModule,
    }


def show_distortions_main(argv: list[str] | None = None) -> Path:
    """`robust-ft show-distortions`: the paper's Fig. 3/4 on real images of a dataset."""
    p = argparse.ArgumentParser(prog="robust-ft show-distortions")
    p.add_argument("--dataset", default="fashion_mnist", help="a DataModule name (fashion_mnist)")
    p.add_argument("--root", default="data")
    p.add_argument("--out", default="distortions.png")
    p.add_argument("--index", type=int, default=0, help="which test image")
    p.add_argument("--seed", type=int, default=0)
    own = p.add_argument_group("imagefolder (own data; as --data.init_args.* of fit)")
    own.add_argument("--channels", type=int, default=None, help="1 or 3 (default: --model's)")
    own.add_argument("--crop", type=int, default=None, help="image side (default: --model's)")
    own.add_argument("--resize", type=int, default=None, help="short side before the crop")
    own.add_argument("--model", default="alexnet", help="whose input shape is the default")
    own.add_argument(
        "--cache-dir",
        default=None,
        help="default: $ROBUST_FT_CACHE_DIR/imagefolder (~/.cache/robust-ft/imagefolder)",
    )
    a = p.parse_args(argv)
    import numpy as np

    from robust_ft.data.figures import render_distortion_grid

    modules = datamodules()
    if a.dataset not in modules:  # checked after parsing, so --help needs no torch
        choices = ", ".join(sorted(modules))
        raise ValueError(f"--dataset: invalid choice: {a.dataset!r} (choose from {choices})")
    kwargs = {}
    if a.dataset == "imagefolder":
        from robust_ft.models import input_shape

        c, h, _ = input_shape(a.model)
        kwargs = dict(channels=a.channels or c, crop=a.crop or h, resize=a.resize)
        kwargs["cache_dir"] = a.cache_dir
    dm = modules[a.dataset](root=a.root, **kwargs)
    images, _ = dm.load_split("test")
    out = render_distortion_grid(np.asarray(images[a.index : a.index + 1]), a.out, seed=a.seed)
    print(f"wrote {out}")
    return out
