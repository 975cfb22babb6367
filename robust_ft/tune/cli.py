"""The ``robust-ft tune`` command line."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from robust_ft.tune.storage import STORAGE_FORMS

if TYPE_CHECKING:
    from robust_ft.tune.study import TuneResult


def main(argv: list[str] | None = None) -> TuneResult:
    """`robust-ft tune`: run or join an Optuna study of the fine-tune learning rates."""
    from robust_ft.tune.study import tune

    return tune(build_parser().parse_args(argv))


def build_parser() -> argparse.ArgumentParser:
    """The ``robust-ft tune`` argument parser."""
    # Long but flat: one add_argument per option, in the groups --help shows.
    import robust_ft.tune as package

    p = argparse.ArgumentParser(prog="robust-ft tune", description=package.__doc__)
    g = p.add_argument_group("what is fine-tuned (fixed per study)")
    g.add_argument("--model", default="lenet5", help="conf/MODEL_DATASET.yaml (lenet5)")
    g.add_argument("--dataset", default="fashion_mnist", help="(fashion_mnist)")
    g.add_argument("--config", action="append", default=[], help="more config overlays")
    g.add_argument("--kind", default="defocus", help="distortion of train/val images (defocus)")
    g.add_argument("--level", default="2", help="distortion level (2)")
    g.add_argument("--first-n", type=int, default=None, help="default: conf/finetune.yaml's 3")
    g.add_argument(
        "--search-first-n", nargs="?", const="all", default=None, metavar="N,N,..",
        help="search first_n as a categorical (bare flag: 1..layers-1)",
    )  # fmt: skip
    g.add_argument(
        "--init-from", default="latest", help="pre-train: run id, .ckpt or latest (default)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of every run (0)")
    g.add_argument(
        "--trial-epochs", type=int, default=None, help="epochs per trial (default: the full budget)"
    )
    g.add_argument(
        "--trial-subset", type=int, default=None, help="training images per trial (default: all)"
    )
    s = p.add_argument_group("search space")
    s.add_argument("--lr-min", type=float, default=None, help="default: configured lr / 1000")
    s.add_argument("--lr-max", type=float, default=None, help="default: configured lr * 100")
    s.add_argument(
        "--gamma-min",
        type=float,
        default=0.01,
        help="lr_gamma range (0.01), searched for step schedules",
    )
    s.add_argument("--gamma-max", type=float, default=0.5, help="(0.5)")
    s.add_argument("--no-gamma", action="store_true", help="do not search lr_gamma")
    s.add_argument(
        "--search-weight-decay", action="store_true", help="also search model.weight_decay"
    )
    s.add_argument("--wd-min", type=float, default=1e-6, help="weight-decay range (1e-6)")
    s.add_argument("--wd-max", type=float, default=1e-2, help="(1e-2)")
    s.add_argument(
        "--enqueue", action="append", default=[], metavar="lr=X,..",
        help="run these parameters first (repeatable)",
    )  # fmt: skip
    s.add_argument(
        "--no-enqueue-default", action="store_true",
        help="do not start a new study with the configured rate",
    )  # fmt: skip
    s.add_argument("--sampler-seed", type=int, default=None, help="TPE seed (default: random)")
    r = p.add_argument_group("study, storage, pruning")
    r.add_argument(
        "--storage",
        default="sqlite:///optuna.db",
        help=f"{STORAGE_FORMS}; default sqlite:///optuna.db",
    )
    r.add_argument("--study-name", default=None, help="default: from the fixed settings")
    r.add_argument("--n-trials", type=int, default=None, help="this worker's trials (default 20)")
    r.add_argument("--max-trials", type=int, default=None, help="stop at this many in the study")
    r.add_argument("--timeout", type=float, default=None, help="seconds for this worker")
    r.add_argument(
        "--pruner", default="median", choices=["median", "percentile", "hyperband", "none"],
        help="(median)",
    )  # fmt: skip
    r.add_argument(
        "--pruner-startup-trials", type=int, default=5, help="no pruning before this many (5)"
    )
    r.add_argument(
        "--pruner-warmup-epochs", type=int, default=1, help="no pruning before this epoch (1)"
    )
    r.add_argument("--percentile", type=float, default=25.0, help="of --pruner percentile (25)")
    r.add_argument("--heartbeat", type=int, default=60, help="seconds, RDB storages (60); 0: off")
    r.add_argument("--max-failures", type=int, default=3, help="stop after this many in a row (3)")
    r.add_argument(
        "--then-finetune",
        action="store_true",
        help="then fine-tune with the best rate, full budget",
    )
    p.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="more CLI flags for every run (last; a flag of a searched parameter is refused)",
    )
    return p
