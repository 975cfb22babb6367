"""The main job (`robust-ft demo`, `mlflow run . -e main`): the paper's comparison on one setting.

pre-train on clean data -> evaluate it on every kind x level (no-train) -> fine-tune first-1..N
and re-train on one distorted setting -> test each; every step a nested MLflow run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from robust_ft.cli import run_cli
from robust_ft.tracking import check_reachable, default_tracking_uri, redact, ui_command
from robust_ft.tracking import client as tracking_client

CONF = Path(__file__).resolve().parent.parent / "conf"


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


def _levels_arg(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def quiet_lightning() -> None:
    """Keep a pipeline's output to its own progress lines: no per-run Lightning banners."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


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
    quiet_lightning()
    uri = default_tracking_uri()
    check_reachable(uri)
    start = time.time()
    common = [
        "--config", str(base_config(a.model, a.dataset)),
        "--config", a.config,
        "--seed_everything", str(a.seed),
        "--data.init_args.root", a.root,
        *a.extra,
    ]  # fmt: skip
    parent, experiment = parent_run(f"{a.model}-{a.dataset}", "demo", vars(a))
    nest = ["--tracking.parent_run_id", parent, "--tracking.experiment", experiment]
    kinds = "[motion,defocus,noise,combined]"
    print(f"[demo] pre-train {a.model} on clean {a.dataset}", flush=True)
    pre = run_cli(["fit", *common, *nest, "--data.init_args.test_kinds", "[clean]"])
    print(f"[demo] no-train: the clean model on {kinds} x levels {a.levels}", flush=True)
    notrain = run_cli(
        [
            "test", *common, *nest,
            "--model.init_from", pre.run_id,
            "--data.init_args.test_kinds", kinds,
            "--data.init_args.test_levels", f"[{a.levels}]",
        ]
    )  # fmt: skip
    setting = [
        "--data.init_args.distortion.kind", a.kind,
        "--data.init_args.distortion.level", a.level,
        "--data.init_args.test_kinds", f"[clean,{a.kind}]",
        "--data.init_args.test_levels", f"[{a.level}]",
    ]  # fmt: skip
    results = {}
    for n in [int(x) for x in a.first_n.split(",") if x]:
        print(f"[demo] fine-tune first-{n} on {a.kind} level {a.level}", flush=True)
        r = run_cli(
            [
                "fit", *common, *nest, *setting,
                "--model.first_n", str(n),
                "--model.init_from", pre.run_id,
                "--data.init_args.train_subset", str(a.finetune_subset),
            ]
        )  # fmt: skip
        results[f"first-{n}"] = r
    print(f"[demo] re-train on {a.kind} level {a.level}", flush=True)
    results["retrain"] = run_cli(["fit", *common, *nest, *setting])
    _close_parent(parent)
    table = format_tables(a, pre, notrain, results)
    print(table)
    print(f"\n[demo] done in {time.time() - start:.0f} s. MLflow store: {redact(uri)}")
    print(f"[demo] open the UI: {ui_command(uri)}")
    return {"pretrain": pre, "notrain": notrain, **results}


def format_tables(a, pre, notrain, results) -> str:
    """The demo's two tables: no-train error per kind x level, and error per method."""
    from robust_ft.data.distortions import KINDS, level_tag, parse_level

    levels = [x for x in a.levels.split(",") if x]
    out = [f"\nTest error (%) of the clean model (no-train), {a.model} on {a.dataset}:"]
    out.append("| kind | " + " | ".join(f"L{x}" for x in levels) + " |")
    out.append("|---|" + "---|" * len(levels))
    for kind in KINDS:
        row = [notrain.metrics.get(f"test/err/{kind}/{level_tag(parse_level(x))}") for x in levels]
        out.append(f"| {kind} | " + " | ".join(_fmt(v) for v in row) + " |")
    tag = f"{a.kind}/{level_tag(parse_level(a.level))}"
    out.append(f"\nTest error (%) per method, trained on {tag}:")
    out.append(f"| method | clean | {tag} |")
    out.append("|---|---|---|")
    out.append(f"| no-train | {_fmt(pre.metrics.get('test/err/clean/L0'))} | "
               f"{_fmt(notrain.metrics.get(f'test/err/{tag}'))} |")  # fmt: skip
    for name, r in results.items():
        out.append(
            f"| {name} | {_fmt(r.metrics.get('test/err/clean/L0'))} | "
            f"{_fmt(r.metrics.get(f'test/err/{tag}'))} |"
        )
    return "\n".join(out)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _parent_run(experiment: str, name: str, params: dict) -> str:
    """The parent run id of a pipeline (see ``parent_run``)."""
    return parent_run(experiment, name, params)[0]


def parent_run(experiment: str, name: str, params: dict) -> tuple[str, str]:
    """The parent run of a pipeline and its experiment: `mlflow run`'s run, else a new one."""
    client = tracking_client()
    if os.environ.get("MLFLOW_RUN_ID"):
        run = client.get_run(os.environ["MLFLOW_RUN_ID"])
        client.set_tag(run.info.run_id, "pipeline", name)
        return run.info.run_id, client.get_experiment(run.info.experiment_id).name
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=name, tags={"method": "pipeline", "pipeline": name})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v)[:6000])
    return run.info.run_id, experiment


def _close_parent(run_id: str) -> None:
    if os.environ.get("MLFLOW_RUN_ID") != run_id:
        tracking_client().set_terminated(run_id, "FINISHED")


def show_distortions_main(argv: list[str] | None = None) -> Path:
    """`robust-ft show-distortions`: the paper's Fig. 3/4 on real images of a dataset."""
    import numpy as np

    from robust_ft.data.datamodules import DATAMODULES
    from robust_ft.data.figures import render_distortion_grid

    p = argparse.ArgumentParser(prog="robust-ft show-distortions")
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATAMODULES))
    p.add_argument("--root", default="data")
    p.add_argument("--out", default="distortions.png")
    p.add_argument("--index", type=int, default=0, help="which test image")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    dm = DATAMODULES[a.dataset](root=a.root) if a.dataset != "imagefolder" else None
    if dm is None:
        dm = DATAMODULES["imagefolder"](root=a.root)
    images, _ = dm.load_split("test")
    out = render_distortion_grid(np.asarray(images[a.index : a.index + 1]), a.out, seed=a.seed)
    print(f"wrote {out}")
    return out
