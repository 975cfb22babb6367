"""The fine-tune a study tunes: the settings all its runs share, read as the runs will read them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from robust_ft.pipeline import base_config
from robust_ft.settings import SPAWN_STRATEGIES, spawns_ranks


@dataclass
class Runs:
    """What every run of a study shares: config files, overrides, then the user's ``--extra``."""

    configs: list[str]
    overrides: dict[str, Any]
    """the fixed settings of the tune command line (seed, distortion, first_n)"""
    extra: list[str] = field(default_factory=list)
    """the user's own flags (``runner.run``'s ``argv``: applied last)"""

    @classmethod
    def of(cls, a: argparse.Namespace) -> Runs:
        """The runs of a ``robust-ft tune`` command line: the model's config plus the fine-tune
        overlay and ``--config``; ``--seed``, ``--kind``, ``--level``, ``--first-n``."""
        base = base_config(a.model, a.dataset)
        configs = [str(base), str(base.parent / "finetune.yaml"), *a.config]
        overrides: dict[str, Any] = {"seed_everything": a.seed}
        dist = {k: v for k, v in (("kind", a.kind), ("level", a.level)) if v}
        if dist:
            overrides["data.init_args.distortion"] = dist
        if a.first_n is not None:
            overrides["model.first_n"] = a.first_n
        return cls(configs, overrides, list(a.extra))


@dataclass
class Setting:
    """The fine-tune a study tunes, read from the resolved configuration."""

    experiment: str
    arch: str
    dataset: str
    kind: str
    level: str
    """the level's tag, e.g. ``L2``"""
    level_value: str
    """the level as the CLI takes it, e.g. ``2`` or ``U(0,4)``"""
    first_n: int
    n_layers: int
    lr: float
    lr_gamma: float
    weight_decay: float
    step_schedule: bool
    milestones: list[int]
    max_epochs: int
    val_split: float
    strategy: str = "auto"
    devices: Any = 1
    accelerator: str = "auto"
    num_nodes: int = 1


def read_setting(runs: Runs) -> Setting:
    """Parse and validate the runs' settings as ``runner.run`` would; what the study needs."""
    from robust_ft.levels import level_tag, level_text
    from robust_ft.runner import parse

    cli = parse("fit", runs.overrides, configs=runs.configs, argv=runs.extra)
    cfg = cli.config
    ft = cfg.model.finetune
    if ft is None:
        raise ValueError("the config has no model.finetune schedule to tune (see conf/*.yaml)")
    dist = cfg.data.init_args.distortion
    distorted = dist is not None and bool(dist.kind)
    n_layers = cli.n_layers()
    return Setting(
        experiment=cli.experiment_name(),
        arch=cfg.model.arch,
        dataset=cli.dataset_name(),
        kind=str(dist.kind) if distorted else "clean",
        level=level_tag(dist.level) if dist is not None else "L0",
        level_value=level_text(dist.level) if dist is not None else "0",
        first_n=cfg.model.first_n if cfg.model.first_n is not None else n_layers,
        n_layers=n_layers,
        lr=float(ft.lr),
        lr_gamma=float(ft.lr_gamma),
        weight_decay=float(cfg.model.weight_decay),
        step_schedule=ft.lr_schedule == "step" and bool(ft.lr_milestones),
        milestones=list(ft.lr_milestones or []),
        max_epochs=int(ft.max_epochs or cfg.trainer.max_epochs or 1),
        val_split=float(cfg.data.init_args.val_split),
        strategy=str(cfg.trainer.strategy),
        devices=cfg.trainer.devices,
        accelerator=str(cfg.trainer.accelerator),
        num_nodes=int(cfg.trainer.num_nodes or 1),
    )


# ----------------------------------------------------------------- distributed trials
def n_devices(setting: Setting) -> int:
    """How many devices Lightning would use on this machine for the setting's trainer flags."""
    d = setting.devices
    if isinstance(d, (list, tuple)):
        return len(d)
    if isinstance(d, str) and "," in d:
        return len([x for x in d.split(",") if x.strip()])
    if str(d) in ("auto", "-1"):
        import torch

        gpu = setting.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return torch.cuda.device_count() if gpu else 1
    return int(d)


def trial_strategy(setting: Setting, storage_url: str) -> str | None:
    """The strategy of trials and the final fine-tune, after checking DDP can work.

    Trials run inside this process, so a multi-device trial must start its ranks by spawning or
    forking: Lightning's ``ddp`` launcher re-runs the command line once per rank, which would start
    a whole tuning worker per rank. ``ddp``/``auto`` with several devices becomes ``ddp_spawn``.
    Optuna's pruning callback reports each epoch from rank 0 through the storage and broadcasts
    the decision to every rank, which needs an RDB storage. Returns None when no change is needed.
    """
    strategy, n = setting.strategy, n_devices(setting)
    if setting.num_nodes > 1:
        raise ValueError(
            f"trainer.num_nodes={setting.num_nodes}: a trial runs on one machine; to use several "
            "machines start a `robust-ft tune` worker on each with the same --storage and "
            "--study-name (see docs/scale-out.md)"
        )
    if strategy in ("ddp", "auto") and n > 1:
        chosen = "ddp_spawn"
    elif strategy.startswith("ddp") and not spawns_ranks(strategy):
        raise ValueError(
            f"trainer.strategy={strategy!r} cannot run inside a tuning worker (its launcher re-runs "
            f"the command once per rank); use one of {', '.join(SPAWN_STRATEGIES)}"
        )
    else:
        chosen = None
    distributed = spawns_ranks(chosen or strategy)
    if distributed and storage_url.startswith("journal:"):
        raise ValueError(
            "distributed trials report pruning through the study's storage, which must be an RDB "
            "(sqlite:///optuna.db on one machine, postgresql://... for several); "
            "journal: storages are not supported with DDP"
        )
    return chosen
