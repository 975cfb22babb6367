"""The paper's grid as one resumable MLflow sweep (`robust-ft sweep`, `mlflow run . -e sweep`).

A sweep crosses, for one model x dataset grid (a preset, or ``--model/--dataset``), every seed,
distortion kind, level and method (no-train, first-1..first-N, re-train). It is one parent MLflow
run (tags ``sweep=<name>``, ``sweep_key=<hash of the normalised arguments>``) with one nested
child run per *cell*, tagged ``method``, ``distortion``, ``level``, ``first_n`` and ``cell`` (a
stable key such as ``lenet5/fashion_mnist/s0/first-2/defocus/L3``).

Cells, per (model, dataset, seed):
- ``pretrain``: train on clean data (the clean model every other cell starts from; skipped for
  AlexNet, whose clean model is the published ImageNet weights);
- ``notrain/<kind>/<level>``: one ``test`` run of the clean model per (kind, level), as the
  design's "one run per (method, distortion, level, seed)";
- ``first-N/<kind>/<level>``: fine-tune the first N layers from the pre-train's run id, with the
  config's fine-tune schedule even when N is every layer (the paper's first-4 of LeNet-5);
- ``retrain/<kind>/<level>``: train the whole network from scratch on distorted images.
Every cell but the pre-train tests on clean images and on its own (kind, level). Level 0 is the
clean data whatever the kind, so level-0 cells are shared across kinds: no-train and re-train at
level 0 *are* the pre-train, and first-N at level 0 is one ``first-N/clean/L0`` cell.

The sweep also saves an MLflow UI view of its runs (experiment tag
``mlflow.sharedViewState.<sweep_key>``, the UI's "share view" state): open
``#/experiments/<id>/runs?viewStateShareKey=<sweep_key>`` for a flat table with the error columns.

Resuming: the same arguments give the same ``sweep_key``, so a restart finds the same parent run,
skips every cell whose child run is FINISHED, marks children left RUNNING by a killed sweep as
FAILED and runs their cells again. A finished cell is never repeated or dropped. The first cell
that fails stops the sweep (its run is FAILED); run the same command again to resume.

Started at once: commands of a new sweep that find no parent each stand a candidate run (tag
``sweep_candidate``), and the store elects one (``ownership.elect``: write-once params, no clock
compared) as the parent (``sweep_parent``); the others delete theirs. A command whose sweep's
parent another live process writes joins it as a worker with ``--storage`` (``_join``) and is
refused without.

Budgets (``--budget``) scale the config's schedules (``conf/<model>_<dataset>.yaml``):
- ``paper``: the paper's epochs and rates on the whole training set (the default);
- ``quick``: 1/4 of the epochs, 20,000 training images;
- ``demo``: 1/10 of the epochs (at least 1), 5,000 training, 1,000 validation and 2,000 test
  images (test errors then carry about +-1 point of sampling noise; ``--synthetic`` data keeps
  its own sizes).
Epoch milestones of step schedules scale with the epochs. Short budgets learn little at the
paper's rates, so ``quick`` and ``demo`` raise them like ``conf/demo.yaml`` does: LeNet-5
pre-train/re-train x10 (1e-3 -> 1e-2) and fine-tune x100 (1e-5 -> 1e-3); CIFAR10-quick fine-tune
x10 (its 5e-2 pre-train rate is already fast); AlexNet unchanged.

``--dry-run`` lists each cell as ``run``, ``rerun`` (its run was left RUNNING) or ``skip`` with an
estimate of the time: per cell, training images x epochs / the model's training rate, plus
validation and test images / its evaluation rate, plus a fixed start-up cost per run. The rates
are measured CPU constants of this project's 2-core machine (``RATES``); a GPU is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from robust_ft.formatting import fmt_time
from robust_ft.levels import is_clean_level, level_tag, level_text
from robust_ft.models import input_shape, n_param_layers
from robust_ft.pipeline import base_config
from robust_ft.settings import (
    SCHEDULE_KEYS,
    experiment_name,
    first_n_tag,
    is_finetune,
    test_grid,
)
from robust_ft.sweep_parent import children, find_parent, new_parent, parent_run_args
from robust_ft.tracking import client as tracking_client
from robust_ft.ui import open_hint

log = logging.getLogger("robust_ft")
ALL_KINDS = ("motion", "defocus", "noise", "combined")


# ----------------------------------------------------------------- grids and budgets
@dataclass(frozen=True)
class Grid:
    """One model x dataset grid: first-N settings, re-train or not, kinds, levels."""

    model: str
    dataset: str
    first_n: tuple[int, ...]
    retrain: bool = True
    kinds: tuple[str, ...] = ALL_KINDS
    levels: tuple[str, ...] = ("0", "1", "2", "3", "4")
    pretrain: bool = True
    """False: the config's published weights are the clean model (no pre-train cell)"""


PRESETS: dict[str, Grid] = {
    "fashion_mnist": Grid("lenet5", "fashion_mnist", (1, 2, 3, 4)),
    "mnist": Grid("lenet5", "mnist", (1, 2, 3, 4)),
    "cifar10": Grid("cifar10_quick", "cifar10", (1, 2, 3, 4, 5)),
    # Table 1: AlexNet first-3 on combined distortions, each level drawn per image from U(0,4).
    "imagenet": Grid(
        "alexnet",
        "imagenet",
        (3,),
        retrain=False,
        kinds=("combined",),
        levels=("U(0,4)",),
        pretrain=False,
    ),
}


@dataclass(frozen=True)
class Budget:
    """How a budget scales the config: epoch fraction, image counts, raised rates."""

    epochs: float
    train_subset: int | None
    boost: bool
    test_subset: int | None = None
    val_split: int | None = None
    """validation images (None: the config's fraction)"""


BUDGETS = {
    "paper": Budget(1.0, None, False),
    "quick": Budget(0.25, 20000, True),
    "demo": Budget(0.1, 5000, True, test_subset=2000, val_split=1000),
}
# (pre-train/re-train, fine-tune) rate multipliers of the short budgets; see the module docstring.
RATE_BOOST = {"lenet5": (10.0, 100.0), "cifar10_quick": (1.0, 10.0), "alexnet": (1.0, 1.0)}
# Time estimate: (training img/s, evaluation img/s incl. the gradient-variance hooks) and seconds
# of start-up per run. LeNet-5's are fitted to the Fashion-MNIST demo sweep (OMP_NUM_THREADS=1 on
# this project's 2-core machine shared with other jobs: 21 s per training cell, 7 s per no-train
# cell); the other models' are scaled by their FLOPs (CPU; a GPU is far faster).
RATES = {"lenet5": (750.0, 2000.0), "cifar10_quick": (150.0, 400.0), "alexnet": (2.5, 7.0)}
RUN_OVERHEAD_S = 5.0
# (training, test) images of the datasets with a fixed size.
DATASET_SIZES = {
    "mnist": (60000, 10000),
    "fashion_mnist": (60000, 10000),
    "cifar10": (50000, 10000),
}


def _scaled(epochs: int, frac: float) -> int:
    return max(1, round(epochs * frac))


def schedule(cfg: dict, budget: Budget, finetune: bool) -> dict[str, Any]:
    """The main (or fine-tune) schedule of a config under a budget: rate, milestones, epochs."""
    model = cfg.get("model", {})
    main = {k: model.get(k) for k in SCHEDULE_KEYS}
    main["max_epochs"] = cfg.get("trainer", {}).get("max_epochs") or 1
    sch = main  # a config without `finetune` has one schedule (AlexNet: its fine-tune)
    if finetune and model.get("finetune"):  # not inherited from the main one, as in the CLI
        sch = {**dict.fromkeys(SCHEDULE_KEYS), **model["finetune"]}
        sch["max_epochs"] = sch.get("max_epochs") or main["max_epochs"]
    epochs = _scaled(sch["max_epochs"], budget.epochs)
    out = {**sch, "max_epochs": epochs}
    if sch.get("lr_milestones"):
        ms = sorted({_scaled(m, budget.epochs) for m in sch["lr_milestones"]})
        out["lr_milestones"] = [m for m in ms if m < epochs] or None
    if budget.boost and sch.get("lr"):
        boost = RATE_BOOST.get(cfg["model"]["arch"], (1.0, 1.0))[1 if finetune else 0]
        out["lr"] = sch["lr"] * boost
        if sch.get("lr_final"):
            out["lr_final"] = sch["lr_final"] * boost
    return out


def schedule_overrides(sch: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Overrides that set a schedule under ``prefix`` (``model`` or ``model.finetune``)."""
    return {f"{prefix}.{k}": sch[k] for k in SCHEDULE_KEYS if sch.get(k) is not None}


# ----------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """One run of the grid: (grid, seed, method, kind, level)."""

    grid: Grid
    seed: int
    method: str
    kind: str = "clean"
    level: str = "0"

    @property
    def key(self) -> str:
        """Stable key, also the ``cell`` tag: ``lenet5/fashion_mnist/s0/first-2/defocus/L3``."""
        g = self.grid
        return (
            f"{g.model}/{g.dataset}/s{self.seed}/{self.method}/{self.kind}/{level_tag(self.level)}"
        )

    @property
    def first_n(self) -> int | None:
        return int(self.method.split("-")[1]) if self.method.startswith("first-") else None

    @property
    def trains(self) -> bool:
        return self.method != "notrain"


def cells_of(grid: Grid, seed: int) -> list[Cell]:
    """Every cell of a grid for one seed, in run order (the pre-train first), without repeats."""
    methods = ["notrain", *(f"first-{n}" for n in grid.first_n)]
    methods += ["retrain"] if grid.retrain else []
    out = [Cell(grid, seed, "pretrain")] if grid.pretrain else []
    for kind in grid.kinds:
        for level in grid.levels:
            for method in methods:
                if not is_clean_level(level):
                    out.append(Cell(grid, seed, method, kind, level))
                elif not (grid.pretrain and method in ("notrain", "retrain")):
                    out.append(Cell(grid, seed, method))
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------- the sweep's settings
@dataclass
class Sweep:
    """Normalised sweep arguments; their hash is the parent run's ``sweep_key``."""

    grid: Grid
    seeds: tuple[int, ...] = (0,)
    budget: str = "paper"
    train_subset: int | None = None
    synthetic: tuple[int, int] | None = None
    extra: tuple[str, ...] = ()
    name: str = ""
    root: str | None = None
    experiment: str | None = None
    cfg: dict = field(default_factory=dict, repr=False)

    def key_fields(self) -> dict[str, Any]:
        """What defines the results (not the name, store location or data directory)."""
        g = asdict(self.grid)
        g["kinds"] = sorted(g["kinds"])
        g["levels"] = sorted(g["levels"], key=lambda x: (x.startswith("U"), x))
        g["first_n"] = sorted(g["first_n"])
        return {
            "grid": g,
            "seeds": sorted(self.seeds),
            "budget": self.budget,
            "train_subset": self.subset,
            "synthetic": list(self.synthetic) if self.synthetic else None,
            "extra": list(self.extra),
        }

    @property
    def key(self) -> str:
        text = json.dumps(self.key_fields(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def subset(self) -> int | None:
        return (
            self.train_subset
            if self.train_subset is not None
            else BUDGETS[self.budget].train_subset
        )

    @property
    def dataset_name(self) -> str:
        """The DataModule's dataset name (the experiment's suffix; conf/alexnet_imagenet.yaml
        names its ImageFolder ``imagenet``)."""
        return "synthetic" if self.synthetic else self.grid.dataset

    @property
    def experiment_name(self) -> str:
        return self.experiment or experiment_name(self.grid.model, self.dataset_name)

    def cells(self) -> list[Cell]:
        return [c for s in self.seeds for c in cells_of(self.grid, s)]


def _load_cfg(grid: Grid) -> dict:
    import yaml

    return yaml.safe_load(base_config(grid.model, grid.dataset).read_text()) or {}


def synthetic_data(model: str, n_train: int, n_test: int) -> dict[str, Any]:
    """The ``data`` override that swaps the dataset for SyntheticDataModule images of the model."""
    return {
        "class_path": "robust_ft.data.datamodules.SyntheticDataModule",
        "init_args": {
            "image_shape": list(input_shape(model)),
            "n_train": n_train,
            "n_test": n_test,
            "num_classes": 10,
            "batch_size": 32,
        },
    }


@dataclass
class CellRun:
    """How to run one cell: ``runner.run(command, overrides, configs=configs, argv=argv)``."""

    command: str
    configs: list[Path]
    overrides: dict[str, Any]
    argv: list[str]


def cell_run(sw: Sweep, cell: Cell, parent: str, pretrain_run: str | None) -> CellRun:
    """The settings of one cell's run."""
    g, budget = cell.grid, BUDGETS[sw.budget]
    n_layers = n_param_layers(g.model)
    configs = [base_config(g.model, g.dataset)]
    if cell.method in ("pretrain", "retrain"):
        configs.append(configs[0].parent / "retrain.yaml")
    main, ft = schedule(sw.cfg, budget, False), schedule(sw.cfg, budget, True)
    if is_finetune(cell.first_n, n_layers, pretrain_run):  # incl. first-N of every layer
        main = ft
    o: dict[str, Any] = {"trainer.max_epochs": main["max_epochs"], "seed_everything": cell.seed}
    o |= schedule_overrides(main, "model")
    if sw.cfg.get("model", {}).get("finetune"):
        o |= {"model.finetune.max_epochs": ft["max_epochs"]}
        o |= schedule_overrides(ft, "model.finetune")
    if sw.synthetic:
        o["data"] = synthetic_data(g.model, *sw.synthetic)
    data = {"root": sw.root, "train_subset": sw.subset}
    if not sw.synthetic:  # synthetic data has its own (tiny) sizes
        data |= {"test_subset": budget.test_subset, "val_split": budget.val_split}
    # every cell sets the sizes, so all share the cached splits
    o |= {f"data.init_args.{k}": v for k, v in data.items() if v is not None}
    if cell.kind != "clean" and cell.trains:
        o["data.init_args.distortion"] = {"kind": cell.kind, "level": cell.level}
    grid = test_grid(None if cell.method == "pretrain" else cell.kind, cell.level)
    o |= {f"data.init_args.{k}": v for k, v in grid.items()}
    if cell.method == "notrain" or cell.first_n:
        o["model.first_n"] = cell.first_n or 0
        if pretrain_run:
            o["model.init_from"] = pretrain_run
    tags = {
        "sweep": sw.name,
        "sweep_key": sw.key,
        "cell": cell.key,
        "method": cell.method,
        "distortion": cell.kind,
        "level": level_tag(cell.level),
        "first_n": first_n_tag(cell.method),
    }
    o["tracking"] = {
        "experiment": sw.experiment_name,
        "parent_run_id": parent,
        "method": cell.method,
        "run_name": cell.key.split("/", 3)[3].replace("/", "-") + f"-s{cell.seed}",
        "tags": tags,
        "log_model": False,
    }
    return CellRun("fit" if cell.trains else "test", configs, o, list(sw.extra))


# ----------------------------------------------------------------- time estimate
def _split_sizes(sw: Sweep) -> tuple[int, int, int] | None:
    """(training images after the validation hold-out, test, validation images) or None."""
    data = sw.cfg.get("data", {}).get("init_args", {}) or {}
    val = data.get("val_split", 0.1)
    if sw.synthetic:
        n_train, n_test = sw.synthetic
    elif sw.grid.dataset in DATASET_SIZES:
        n_train, n_test = DATASET_SIZES[sw.grid.dataset]
    else:
        root = Path(sw.root or data.get("root", "data"))
        counts = [sum(1 for p in (root / s).rglob("*") if p.is_file()) for s in ("train", "val")]
        if not counts[0]:
            return None
        n_train, n_test = counts
    budget = BUDGETS[sw.budget]
    if not sw.synthetic:
        val = budget.val_split if budget.val_split is not None else val
        n_test = min(n_test, budget.test_subset or n_test)
    n_val = round(n_train * val) if val < 1 else int(val)
    return n_train - n_val, n_test, n_val


def estimate_seconds(sw: Sweep, cell: Cell) -> float | None:
    """Estimated wall time of a cell: images / the model's rates + a start-up cost."""
    sizes = _split_sizes(sw)
    if sizes is None:
        return None
    n_train, n_test, n_val = sizes
    train_rate, eval_rate = RATES.get(cell.grid.model, RATES["cifar10_quick"])
    test_sets = 1 if cell.method == "pretrain" or cell.kind == "clean" else 2
    evaluated = n_test * test_sets
    trained = 0
    if cell.trains:
        finetune = cell.first_n is not None
        epochs = schedule(sw.cfg, BUDGETS[sw.budget], finetune)["max_epochs"]
        n = min(n_train, sw.subset) if sw.subset else n_train
        trained, evaluated = n * epochs, evaluated + n_val * epochs
    return RUN_OVERHEAD_S + trained / train_rate + evaluated / eval_rate


# ----------------------------------------------------------------- MLflow bookkeeping
def share_view(client, sw: Sweep, experiment_id: str) -> str:
    """Save the sweep's MLflow UI view (its cells only, flat, error columns); the URL fragment."""
    from robust_ft.ui import error_metrics, save_view

    g = sw.grid
    metrics = ["test/err/clean/L0"] + [
        f"test/err/{k}/{level_tag(lv)}"
        for k in g.kinds
        for lv in g.levels
        if not is_clean_level(lv)
    ]
    cells = f"tags.sweep_key = '{sw.key}' and tags.method != 'sweep'"
    return save_view(client, experiment_id, sw.key, error_metrics(metrics), cells)


@dataclass
class Plan:
    """What a (re)start of the sweep will do with each cell."""

    parent: str | None
    todo: list[Cell]
    done: dict[str, str]
    """cell key -> its FINISHED run id"""
    stale: dict[str, list[str]]
    """cell key -> runs left RUNNING by a killed sweep (to be marked FAILED)"""


def plan(client, sw: Sweep) -> Plan:
    """Sort the cells into finished (skip) and to do, reading the parent's child runs."""
    parent = find_parent(client, sw)
    runs = children(client, parent) if parent is not None else []
    done: dict[str, str] = {}
    stale: dict[str, list[str]] = {}
    for r in runs:
        key = r.data.tags.get("cell")
        if key and r.info.status == "FINISHED":
            done.setdefault(key, r.info.run_id)
        elif key and r.info.status == "RUNNING":
            stale.setdefault(key, []).append(r.info.run_id)
    todo = [c for c in sw.cells() if c.key not in done]
    return Plan(parent.info.run_id if parent else None, todo, done, stale)


def _mark_stale(client, stale: dict[str, list[str]]) -> None:
    """Mark FAILED the cells' runs left RUNNING by a sweep process that is gone.

    A run whose owner (``host``/``pid`` tags) is a live process of this host is left alone: it is
    a worker of this sweep. Runs of other hosts are left to their own workers.
    """
    from robust_ft.tracking import owner_alive

    for key, run_ids in stale.items():
        for run_id in run_ids:
            tags = client.get_run(run_id).data.tags
            if owner_alive(tags) is not False:
                continue
            client.set_tag(run_id, "error", f"left RUNNING by a killed sweep; cell {key} re-run")
            client.set_terminated(run_id, "FAILED")


# ----------------------------------------------------------------- running
def describe(sw: Sweep, p: Plan) -> str:
    """The dry-run listing: every cell's fate and the estimated time of those to run."""
    lines = [f"sweep {sw.name!r}  key {sw.key}  experiment {sw.experiment_name}"]
    lines.append(f"parent run: {p.parent or '(new)'}; budget {sw.budget}, train subset {sw.subset}")
    total, unknown = 0.0, False
    for c in sw.cells():
        if c.key in p.done:
            lines.append(f"  skip   {c.key}  (finished run {p.done[c.key]})")
            continue
        est = estimate_seconds(sw, c)
        unknown |= est is None
        total += est or 0.0
        verb = "rerun" if c.key in p.stale else "run"
        lines.append(f"  {verb:6s} {c.key}  ~{fmt_time(est)}")
    n = len(p.todo)
    tail = " (some unknown: dataset size not found)" if unknown else ""
    lines.append(f"{n} cells to run, {len(p.done)} finished; estimate {fmt_time(total)}{tail}")
    return "\n".join(lines)


def _add_wall_time(client, parent: str, seconds: float) -> None:
    """Add this session's seconds to the parent's ``sweep_wall_s`` tag (all sessions' total)."""
    before = float(client.get_run(parent).data.tags.get("sweep_wall_s", 0))
    client.set_tag(parent, "sweep_wall_s", f"{before + seconds:.0f}")


@dataclass
class Workers:
    """How the cells are run: in this process, or as trials of an Optuna study (``storage``)."""

    n: int = 1
    storage: str | None = None
    heartbeat: int = 30


def run_sweep(sw: Sweep, dry_run: bool = False, workers: Workers | None = None) -> Plan:
    """Run (or, with ``dry_run``, list) every unfinished cell of the sweep under one parent run."""
    from robust_ft.tracking import check_reachable, default_tracking_uri

    workers = workers or Workers()
    check_reachable(default_tracking_uri())
    client = tracking_client()
    own = os.environ.get("MLFLOW_RUN_ID")
    if own and not sw.experiment:  # under `mlflow run`: the sweep lives in that run's experiment
        sw.experiment = client.get_experiment(client.get_run(own).info.experiment_id).name
    p = plan(client, sw)
    if dry_run:
        print(describe(sw, p), flush=True)
        return p
    start = time.time()
    args = parent_run_args(client, sw)
    if args["run_id"] is None:  # a new sweep: this command's parent, or a simultaneous one's
        args["run_id"] = new_parent(client, sw, args)
    with contextlib.ExitStack() as stack:
        parent, owner = _take_parent(stack, client, sw, args, workers)
        if owner is not None:
            return _join(sw, args["run_id"], owner, workers, client)
        try:
            view = share_view(client, sw, client.get_run(parent.run_id).info.experiment_id)
            p = plan(client, sw)
            _mark_stale(client, p.stale)
            log.info(f"[sweep] {sw.name}: parent run {parent.run_id}, {len(p.todo)} cells to run, "
                     f"{len(p.done)} finished")  # fmt: skip
            if workers.storage is None and workers.n == 1:
                _run_cells(sw, p, parent.run_id)
            else:
                from robust_ft.workers import run_workers

                storage = workers.storage or "sqlite:///optuna.db"
                run_workers(sw, parent.run_id, storage, workers.n, workers.heartbeat)
        finally:
            _add_wall_time(client, parent.run_id, time.time() - start)
    log.info(f"[sweep] done in {time.time() - start:.0f} s; parent run {parent.run_id}")
    log.info(f"[sweep] the runs table in the MLflow UI: {open_hint(default_tracking_uri(), view)}")
    return replace(plan(client, sw), parent=parent.run_id, todo=[])


def _take_parent(stack, client, sw: Sweep, args: dict, workers: Workers):
    """(the parent's TrackedRun entered on ``stack``, None) when no live command owns the
    parent; else (None, its owner) to join with ``--storage``, or refused without it."""
    from robust_ft.ownership import live_owner
    from robust_ft.tracking import TrackingError, tracked_run

    owner = live_owner(client.get_run(args["run_id"]))
    if owner is None:
        try:
            return stack.enter_context(tracked_run(**args)), None
        except TrackingError:  # e.g. claimed by another command at the same moment
            owner = live_owner(client.get_run(args["run_id"]))
            if owner is None:
                raise
    if workers.storage is None:
        raise TrackingError(
            f"sweep {sw.name!r} is already running: its parent MLflow run "
            f"{args['run_id']} is being written by {owner}; wait for it to end or stop it, or "
            "start every command of the sweep with the same --storage URL to share its cells"
        )
    return None, owner


def _join(sw: Sweep, parent: str, owner: str, workers: Workers, client) -> Plan:
    """Share the cells of a sweep that another command (machine) owns: this command's workers
    take cells from the shared storage; the owner keeps the parent run and ends it."""
    from robust_ft.stores import redact
    from robust_ft.workers import run_workers

    log.info(f"[sweep] {sw.name}: parent run {parent} is run by {owner}; {workers.n} worker(s) "
             f"here share its cells through {redact(workers.storage)}")  # fmt: skip
    run_workers(sw, parent, workers.storage, workers.n, workers.heartbeat)
    log.info(f"[sweep] {sw.name}: no cell left to take; {owner} ends parent run {parent}")
    return replace(plan(client, sw), parent=parent, todo=[])


def _run_cells(sw: Sweep, p: Plan, parent: str) -> None:
    """The cells one after another in this process (they share its imports)."""
    pretrain = {c.seed: p.done[c.key] for c in sw.cells() if c.method == "pretrain" and c.key in p.done}  # fmt: skip
    for i, cell in enumerate(p.todo, 1):
        res = run_cell(sw, cell, parent, pretrain.get(cell.seed), f"{i}/{len(p.todo)}")
        p.done[cell.key] = res.run_id
        if cell.method == "pretrain":
            pretrain[cell.seed] = res.run_id


def run_cell(sw: Sweep, cell: Cell, parent: str, pretrain_run: str | None, where: str = ""):
    """Run one cell (``runner.run``) and log a line with its time and test errors."""
    from robust_ft.runner import run

    t0 = time.time()
    spec = cell_run(sw, cell, parent, pretrain_run)
    res = run(spec.command, spec.overrides, configs=spec.configs, argv=spec.argv)
    errs = ", ".join(
        f"{k.removeprefix('test/err/')} {v:.2f}" for k, v in sorted(res.test_errors.items())
    )
    where = f"{where} " if where else ""
    log.info(f"[sweep] {where}{cell.key} in {time.time() - t0:.0f} s: {errs}")
    return res


# ----------------------------------------------------------------- command line
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _levels(text: str | None, step: float | None) -> tuple[str, ...] | None:
    if text:
        items = re.findall(r"U\([^)]*\)|[^,]+", text.replace(" ", ""))
        return tuple(level_text(x) for x in items)
    if step:
        n = int(round(4 / step))
        return tuple(level_text(i * step) for i in range(n + 1))
    return None


def build_parser() -> argparse.ArgumentParser:
    """The ``robust-ft sweep`` argument parser."""
    p = argparse.ArgumentParser(
        prog="robust-ft sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets: " + "; ".join(
            f"{k} = {g.model} on {g.dataset}, first-{','.join(map(str, g.first_n))}"
            f"{' + retrain' if g.retrain else ''}, kinds {','.join(g.kinds)}, levels {','.join(g.levels)}"
            for k, g in PRESETS.items()
        ),
    )  # fmt: skip
    p.add_argument("--preset", default="fashion_mnist", choices=sorted(PRESETS))
    p.add_argument("--model", help="override the preset's model")
    p.add_argument("--dataset", help="override the preset's dataset (conf/<model>_<dataset>.yaml)")
    p.add_argument("--first-n", help="first-N settings, e.g. 1,2,3,4 (default: the preset's)")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--kinds", help="comma list of distortion kinds (default: the preset's)")
    p.add_argument("--levels", help="comma list of levels, e.g. 0,1,2,3,4 or U(0,4)")
    p.add_argument(
        "--level-step", type=float, help="levels 0..4 in this step (instead of --levels)"
    )
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--budget", default="paper", choices=sorted(BUDGETS))
    p.add_argument("--train-subset", type=int, help="override the budget's training images")
    p.add_argument("--name", help="sweep name (the parent run's name and `sweep` tag)")
    p.add_argument("--experiment", help="MLflow experiment (default <model>-<dataset>)")
    p.add_argument("--root", help="dataset root directory (default: the config's)")
    p.add_argument("--synthetic", action="store_true", help="tiny synthetic data (tests)")
    p.add_argument("--synthetic-size", default="96,64", help="synthetic train,test images")
    p.add_argument("--dry-run", action="store_true", help="list the cells and the time estimate")
    p.add_argument("--report", metavar="DIR", help="build the report into DIR at the end")
    w = p.add_argument_group("workers (cells as trials of an Optuna study; docs/scale-out.md)")
    w.add_argument("--workers", type=int, default=1, help="cells run at once on this machine (1)")
    w.add_argument(
        "--storage",
        help="Optuna storage that shares the cells between workers and machines "
        "(default with --workers > 1: sqlite:///optuna.db; postgresql://... for several machines)",
    )
    w.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        help="seconds; a silent worker's cell is re-run after 2x (30)",
    )
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for each run")
    return p


def parse_args(argv: list[str] | None) -> tuple[Sweep, argparse.Namespace]:
    """The command line -> normalised sweep settings (and the raw namespace)."""
    a = build_parser().parse_args(argv)
    from robust_ft.data.distortions import KINDS

    grid = PRESETS[a.preset]
    if a.model or a.dataset:
        model, dataset = a.model or grid.model, a.dataset or grid.dataset
        n = n_param_layers(model)
        grid = Grid(model, dataset, tuple(range(1, n + 1)), pretrain=model != "alexnet")
    kinds = tuple(a.kinds.split(",")) if a.kinds else grid.kinds
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown distortion kind(s) {unknown}; accepted: {', '.join(KINDS)}")
    grid = replace(
        grid,
        kinds=kinds,
        levels=_levels(a.levels, a.level_step) or grid.levels,
        first_n=_ints(a.first_n) if a.first_n else grid.first_n,
        retrain=grid.retrain if a.retrain is None else a.retrain,
    )
    n_layers = n_param_layers(grid.model)
    if any(not 1 <= n <= n_layers for n in grid.first_n):
        raise ValueError(f"--first-n must be in 1..{n_layers} for {grid.model}")
    sw = Sweep(
        grid=grid,
        seeds=_ints(a.seeds),
        budget=a.budget,
        train_subset=a.train_subset,
        synthetic=tuple(_ints(a.synthetic_size)) if a.synthetic else None,
        extra=tuple(a.extra),
        root=a.root,
        experiment=a.experiment,
        cfg=_load_cfg(grid),
    )
    sw.name = a.name or f"{grid.model}-{sw.dataset_name}-{a.budget}"
    return sw, a


def main(argv: list[str] | None = None) -> Plan:
    """`robust-ft sweep`: run or resume the grid (``--dry-run``: list it; ``--report``: then
    build the report of its runs)."""
    sw, a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.workers < 1:
        raise ValueError(f"--workers must be >= 1 (got {a.workers})")
    if a.heartbeat < 1:
        raise ValueError(f"--heartbeat must be >= 1 second (got {a.heartbeat})")
    workers = Workers(a.workers, a.storage, a.heartbeat)
    result = run_sweep(sw, dry_run=a.dry_run, workers=workers)
    if a.report and not a.dry_run:
        from robust_ft.report import build_report

        build_report(parent_run=result.parent, out=a.report)
    return result
