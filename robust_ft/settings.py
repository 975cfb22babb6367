"""The rules every layer shares, one function per fact (pure Python: cheap to import).

Which schedule a run trains with, its method tag, its test grid and its default experiment are
decided here and nowhere else; the CLI, the sweep, the tuner and the demo call these.
"""

from __future__ import annotations

from typing import Any

from robust_ft.levels import LevelSpec, is_clean_level, level_text

SCHEDULE_KEYS = ("lr", "lr_schedule", "lr_milestones", "lr_gamma", "lr_final")
"""The settings of a learning-rate schedule (``model.*`` and ``model.finetune.*``)."""


def is_finetune(first_n: int | None, n_layers: int, init_from: str | None) -> bool:
    """Whether a run uses the fine-tune schedule (``model.finetune``) instead of the main one.

    A first-N run with 0 < N < all layers, or one that trains every layer starting from a
    pre-trained model (the paper's first-4 of LeNet-5). Training every layer from scratch is a
    re-train and uses the main schedule.
    """
    return first_n is not None and first_n > 0 and (first_n < n_layers or bool(init_from))


def method_name(
    first_n: int | None, n_layers: int, clean: bool = False, init_from: str | None = None
) -> str:
    """The run's method tag: ``pretrain``, ``notrain``, ``first-N`` or ``retrain``."""
    if first_n == 0:
        return "notrain"
    if is_finetune(first_n, n_layers, init_from):
        return f"first-{first_n}"
    return "pretrain" if clean else "retrain"


def first_n_tag(method: str) -> str:
    """The ``first_n`` tag of a method: layers trained, ``0`` (no-train), ``N`` or ``all``."""
    if method == "notrain":
        return "0"
    if method.startswith("first-"):
        return method.removeprefix("first-")
    return "all"


def test_grid(kind: str | None, level: LevelSpec | None) -> dict[str, Any]:
    """The DataModule's test sets of a run trained on (kind, level): clean, plus that setting."""
    if not kind or kind == "clean" or level is None or is_clean_level(level):
        return {"test_kinds": ["clean"], "test_levels": None}
    return {"test_kinds": ["clean", kind], "test_levels": [level_text(level)]}


def experiment_name(model: str, dataset: str) -> str:
    """The default MLflow experiment of a model x dataset: ``<model>-<dataset>``."""
    return f"{model}-{dataset}"


SPAWN_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")
"""Lightning strategies whose ranks are multiprocessing children of the command's process."""


def spawns_ranks(strategy: Any) -> bool:
    """Whether a configured ``trainer.strategy`` (a name, or a class_path/init_args mapping)
    starts its ranks as multiprocessing children (``ddp_spawn``, ``start_method: spawn``)."""
    if isinstance(strategy, str):
        return strategy in SPAWN_STRATEGIES or strategy.startswith("ddp_spawn")
    init = strategy.get("init_args") or {} if hasattr(strategy, "get") else {}
    return init.get("start_method") in ("spawn", "fork", "forkserver")
