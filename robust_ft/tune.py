"""Optuna study of the fine-tune learning rates (`robust-ft tune`, `mlflow run . -e tune`).

Each trial is one first-N fine-tune from the clean pre-train, scored by its lowest validation
error (``val/err``) on the distorted validation split, never the test split. Unpromising trials
are pruned epoch by epoch. The study is one parent MLflow run; every trial is a nested child run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from robust_ft.cli import RobustCLI, run_cli
from robust_ft.pipeline import _parent_run, base_config
from robust_ft.tracking import (
    check_reachable,
    default_tracking_uri,
    redact,
    resolve_checkpoint,
    ui_command,
)
from robust_ft.tracking import client as tracking_client

MONITOR = "val/err"
FATAL_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
RDB_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")
STORAGE_FORMS = (
    "sqlite:///optuna.db (a local file), an RDB URL such as "
    "postgresql://user:password@host:5432/optuna or mysql+pymysql://user:password@host/optuna, "
    "or journal:PATH (an Optuna JournalStorage file, e.g. journal:./optuna.log)"
)
# MLflow run status of a trial's child run per Optuna state (MLflow has no PRUNED status).
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


# ----------------------------------------------------------------- storage, pruner
def make_storage(url: str, heartbeat: int = 60) -> optuna.storages.BaseStorage:
    """An Optuna storage from ``sqlite:///file.db``, any RDB URL, or ``journal:PATH``.

    RDB storages record a heartbeat every ``heartbeat`` seconds (0: off); a trial whose worker
    died is failed by the next worker and retried once.
    """
    if url.startswith("journal:"):
        path = url[len("journal:") :].removeprefix("//")
        if not path:
            raise ValueError(f"--storage {url!r} names no journal file; use {STORAGE_FORMS}")
        from optuna.storages.journal import JournalFileBackend

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    if url.startswith("postgres://"):  # the short form SQLAlchemy no longer accepts
        url = "postgresql://" + url[len("postgres://") :]
    dialect = url.partition("://")[0].partition("+")[0] if "://" in url else ""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ValueError(
            f"--storage {url!r} is not a storage URL ({e}); use {STORAGE_FORMS}"
        ) from e
    if dialect not in RDB_DIALECTS:
        raise ValueError(
            f"--storage {url!r} is not a storage URL Optuna accepts; use {STORAGE_FORMS}"
        )
    if parsed.drivername == "postgresql" and _has("psycopg2") and not _has("psycopg"):
        # SQLAlchemy >= 2.1 defaults to psycopg 3; use the psycopg2 driver that is installed
        url = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several workers wait
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    if heartbeat > 0:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
        kwargs[_RETRY_KWARG] = retry_callback()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except ImportError as e:
        raise ValueError(
            f"--storage {redact(url)} needs a database driver that is not installed "
            f"({e.__cause__ or e}); "
            "e.g. pip install psycopg2-binary for PostgreSQL or pymysql for MySQL"
        ) from e
    except SQLAlchemyError as e:
        raise ValueError(f"cannot open --storage {redact(url)}: {str(e).splitlines()[0]}") from e


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def retry_callback() -> Any:
    """Optuna's callback that re-queues a failed trial once, with the same parameters."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    cls = cls or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=1)


_RETRY_KWARG = (
    "heartbeat_stale_trial_callback"
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
    else "failed_trial_callback"
)


def make_pruner(
    name: str, startup_trials: int = 5, warmup_epochs: int = 1, percentile: float = 25.0,
    max_epochs: int = 15,
) -> optuna.pruners.BasePruner:  # fmt: skip
    """The pruner ``median``, ``percentile``, ``hyperband`` or ``none`` (epochs are its steps)."""
    if name == "median":
        return optuna.pruners.MedianPruner(startup_trials, warmup_epochs)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(percentile, startup_trials, warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; use median, percentile, hyperband or none")


# ----------------------------------------------------------------- search space
@dataclass
class SearchSpace:
    """What a trial samples: a log-uniform rate; optionally lr_gamma, weight decay, first_n."""

    lr: tuple[float, float]
    lr_gamma: tuple[float, float] | None = None
    weight_decay: tuple[float, float] | None = None
    first_n: list[int] | None = None

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one point of the space."""
        out: dict[str, Any] = {"lr": trial.suggest_float("lr", *self.lr, log=True)}
        if self.lr_gamma:
            out["lr_gamma"] = trial.suggest_float("lr_gamma", *self.lr_gamma, log=True)
        if self.weight_decay:
            out["weight_decay"] = trial.suggest_float("weight_decay", *self.weight_decay, log=True)
        if self.first_n:
            out["first_n"] = trial.suggest_categorical("first_n", self.first_n)
        return out

    def describe(self) -> dict[str, str]:
        """The space as strings (logged with the study's parent run)."""
        out = {"lr": f"loguniform{self.lr}"}
        if self.lr_gamma:
            out["lr_gamma"] = f"loguniform{self.lr_gamma}"
        if self.weight_decay:
            out["weight_decay"] = f"loguniform{self.weight_decay}"
        if self.first_n:
            out["first_n"] = f"categorical{self.first_n}"
        return out


def param_flags(params: dict[str, Any]) -> list[str]:
    """CLI flags that apply a trial's parameters to a fine-tune run."""
    keys = {
        "lr": "--model.finetune.lr",
        "lr_gamma": "--model.finetune.lr_gamma",
        "weight_decay": "--model.weight_decay",
        "first_n": "--model.first_n",
    }
    return [x for k, v in params.items() for x in (keys[k], str(v))]


def parse_params(text: str) -> dict[str, float | int]:
    """``lr=1e-5,lr_gamma=0.1`` -> a dict of trial parameters (for ``--enqueue``)."""
    out: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in ("lr", "lr_gamma", "weight_decay", "first_n"):
            raise ValueError(
                f"--enqueue {text!r}: expected name=value pairs of lr, lr_gamma, weight_decay, "
                "first_n, e.g. lr=1e-5,lr_gamma=0.1"
            )
        out[key] = int(value) if key == "first_n" else float(value)
    return out


# ----------------------------------------------------------------- the fine-tune being tuned
class _Parsed(Exception):
    """Carries the parsed configuration out of ``_PeekCLI``."""


class _PeekCLI(RobustCLI):
    """RobustCLI that parses and validates the arguments, then stops before building anything."""

    def before_instantiate_classes(self) -> None:
        raise _Parsed(self._cfg(), self.experiment_name())


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
    """the level as the CLI takes it, e.g. ``2.0`` or ``U(0,4)``"""
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


def read_setting(args: list[str]) -> Setting:
    """Parse a ``fit`` command line as the CLI would and return what the study needs."""
    import importlib

    from robust_ft.data.distortions import level_tag
    from robust_ft.models import n_param_layers

    try:
        _PeekCLI(args=args)
    except _Parsed as p:
        cfg, experiment = p.args
    else:  # pragma: no cover - _PeekCLI always raises
        raise AssertionError("unreachable")
    module, _, name = cfg.data.class_path.rpartition(".")
    dataset = getattr(importlib.import_module(module), name).dataset_name
    ft = cfg.model.finetune
    if ft is None:
        raise ValueError("the config has no model.finetune schedule to tune (see conf/*.yaml)")
    dist = cfg.data.init_args.distortion
    n_layers = n_param_layers(cfg.model.arch)
    return Setting(
        experiment=experiment,
        arch=cfg.model.arch,
        dataset=dataset,
        kind=str(dist.kind) if dist is not None and dist.kind else "clean",
        level=level_tag(dist.level) if dist is not None else "L0",
        level_value=str(dist.level) if dist is not None else "0",
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
SPAWN_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def _n_devices(setting: Setting) -> int:
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
    """The strategy flag for trials and the final fine-tune, after checking DDP can work.

    Trials run inside this process, so a multi-device trial must start its ranks by spawning or
    forking: Lightning's ``ddp`` launcher re-runs the command line once per rank, which would start
    a whole tuning worker per rank. ``ddp``/``auto`` with several devices becomes ``ddp_spawn``.
    Optuna's pruning callback reports each epoch from rank 0 through the storage and broadcasts
    the decision to every rank, which needs an RDB storage. Returns None when no change is needed.
    """
    strategy, n = setting.strategy, _n_devices(setting)
    if setting.num_nodes > 1:
        raise ValueError(
            f"trainer.num_nodes={setting.num_nodes}: a trial runs on one machine; to use several "
            "machines start a `robust-ft tune` worker on each with the same --storage and "
            "--study-name (see docs/scale-out.md)"
        )
    if strategy in ("ddp", "auto") and n > 1:
        chosen = "ddp_spawn"
    elif strategy.startswith("ddp") and strategy not in SPAWN_STRATEGIES:
        raise ValueError(
            f"trainer.strategy={strategy!r} cannot run inside a tuning worker (its launcher re-runs "
            f"the command once per rank); use one of {', '.join(SPAWN_STRATEGIES)}"
        )
    else:
        chosen = None
    distributed = (chosen or strategy) in SPAWN_STRATEGIES
    if distributed and storage_url.startswith("journal:"):
        raise ValueError(
            "distributed trials report pruning through the study's storage, which must be an RDB "
            "(sqlite:///optuna.db on one machine, postgresql://... for several); "
            "journal: storages are not supported with DDP"
        )
    return chosen


# ----------------------------------------------------------------- MLflow
def log_summary(run_id: str, study: optuna.Study) -> None:
    """Log the study's progress and best trial to its parent run (metrics are updatable)."""
    from mlflow.entities import Metric

    client = tracking_client()
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    step = counts["COMPLETE"] + counts["PRUNED"]
    now = int(time.time() * 1000)
    values = {f"trials/{s.lower()}": float(counts[s]) for s in ("COMPLETE", "PRUNED", "FAIL")}
    best = _best_trial(study)
    if best is not None:
        values["best/val_err"] = float(best.value)
        values.update({f"best/{k}": float(v) for k, v in best.params.items()})
        client.set_tag(run_id, "optuna.best_trial", str(best.number))
        client.set_tag(run_id, "optuna.best_params", json.dumps(best.params, sort_keys=True))
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def save_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optuna's plots of a study as PNG (matplotlib), plus HTML where plotly is installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as vis

    out.mkdir(parents=True, exist_ok=True)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    plots = {
        "optimization_history": "plot_optimization_history",
        "param_importances": "plot_param_importances",
        "slice": "plot_slice",
        "intermediate_values": "plot_intermediate_values",
    }
    written = []
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(vis, fn)(study)
            fig = np.atleast_1d(ax).ravel()[0].figure
            fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(out / f"{name}.png")
        except Exception as e:  # noqa: BLE001 - a plot never fails a study (e.g. 1 trial)
            print(f"[tune] plot {name} skipped: {e}", flush=True)
        try:
            import optuna.visualization as pvis

            if pvis.is_available():
                getattr(pvis, fn)(study).write_html(out / f"{name}.html")
                written.append(out / f"{name}.html")
        except Exception:  # noqa: BLE001, S110
            pass
    try:
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        written.append(out / "trials.csv")
    except Exception as e:  # noqa: BLE001
        print(f"[tune] trials.csv skipped: {e}", flush=True)
    return written


def log_plots(run_id: str, study: optuna.Study) -> None:
    """Log the study's plots and trial table to the parent run under ``optuna/``."""
    client = tracking_client()
    with tempfile.TemporaryDirectory() as d:
        for path in save_plots(study, Path(d)):
            client.log_artifact(run_id, str(path), "optuna")


# ----------------------------------------------------------------- the objective
@dataclass
class Objective:
    """One trial = one nested fine-tune run, scored by its lowest ``val/err``."""

    base_args: list[str]
    space: SearchSpace
    setting: Setting
    init_path: str
    init_run: str | None
    parent_run: str
    experiment_id: str
    study_name: str
    trial_args: list[str] = field(default_factory=list)
    fatal: BaseException | None = None
    last_error: BaseException | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        run_id = None
        ckpt_dir = tempfile.mkdtemp(prefix="robust-ft-trial-")
        try:
            params = self.space.suggest(trial)
            run_id = self._start_child(trial, params)
            pruning = PyTorchLightningPruningCallback(trial, monitor=MONITOR)
            args = [
                *self.base_args,
                *param_flags(params),
                *self.trial_args,
                "--model.init_from", self.init_path,
                "--tracking.run_id", run_id,
                "--tracking.test_after_fit", "false",
                "--tracking.log_model", "false",
                "--tracking.log_checkpoints", "false",
                "--tracking.checkpoint_dir", ckpt_dir,
                # trials never see the test split: one image keeps the datamodule happy
                "--data.init_args.test_kinds", "null",
                "--data.init_args.test_levels", "null",
                "--data.init_args.test_subset", "1",
            ]  # fmt: skip
            run_cli(args, extra_callbacks=[pruning])
            pruning.check_pruned()  # raises TrialPruned where the callback could not (DDP)
            value = self._best_val_err(run_id)
        except optuna.TrialPruned as e:
            self._end_child(run_id, "PRUNED", note=str(e))
            raise
        except BaseException as e:
            self.last_error = e
            if isinstance(e, FATAL_ERRORS) or not isinstance(e, Exception):
                self.fatal = e
            if run_id is not None:
                with contextlib.suppress(Exception):  # keep the trial's own error
                    self._end_child(run_id, "FAIL", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        self._end_child(run_id, "COMPLETE", value=value)
        return value

    def _start_child(self, trial: optuna.Trial, params: dict[str, Any]) -> str:
        """Create the trial's nested MLflow run with its parameters."""
        from mlflow.entities import Param

        client = tracking_client()
        tags = {
            "mlflow.parentRunId": self.parent_run,
            "optuna.study": self.study_name,
            "optuna.trial": str(trial.number),
            "optuna.state": "RUNNING",
        }
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        retry_of = frozen.system_attrs.get("failed_trial")
        if retry_of is not None:
            tags["optuna.retry_of"] = str(retry_of)
        if self.init_run:
            tags["init_from_run"] = self.init_run
        run = client.create_run(self.experiment_id, run_name=f"trial-{trial.number}", tags=tags)
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(f"trial.{k}", str(v)) for k, v in params.items()])
        return run_id

    def _end_child(
        self, run_id: str, state: str, value: float | None = None, note: str = "",
        error: str = "",
    ) -> None:  # fmt: skip
        """Record the Optuna state on the child run and give it the matching MLflow status."""
        client = tracking_client()
        client.set_tag(run_id, "optuna.state", state)
        run = client.get_run(run_id)
        if state == "PRUNED":
            history = client.get_metric_history(run_id, MONITOR)
            if "error" in run.data.tags:  # the CLI saw TrialPruned as an error; it is not one
                client.delete_tag(run_id, "error")
            client.set_tag(run_id, "optuna.pruned_at_epoch", str(len(history) - 1))
            client.set_tag(run_id, "optuna.note", note[:500])
        if error and "error" not in run.data.tags:
            client.set_tag(run_id, "error", error[:5000])
        if value is not None:
            client.log_metric(run_id, "val/err_best", value)
        client.set_terminated(run_id, RUN_STATUS[state])

    def _best_val_err(self, run_id: str) -> float:
        """The objective: the lowest ``val/err`` of the run's epochs (its best checkpoint's)."""
        history = tracking_client().get_metric_history(run_id, MONITOR)
        values = [m.value for m in history if not math.isnan(m.value)]
        if not values:
            raise RuntimeError(f"trial run {run_id} logged no {MONITOR}")
        return min(values)


class _WorkerCallback:
    """After each trial: update the parent run, retry a failure once, stop on repeated failures."""

    def __init__(self, objective: Objective, max_failures: int):
        self.objective = objective
        self.max_failures = max_failures
        self.failures = 0
        self.retry = retry_callback()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.failures += 1
            if self.objective.fatal is not None:
                study.stop()
            elif self.failures >= self.max_failures:
                study.stop()
                self.objective.fatal = self.objective.last_error
            else:
                self.retry(study, trial)
        else:
            self.failures = 0
        try:
            log_summary(self.objective.parent_run, study)
        except Exception as e:  # noqa: BLE001 - a tracking hiccup must not stop the study
            print(f"[tune] could not update the parent run: {e}", flush=True)


# ----------------------------------------------------------------- the study
@dataclass
class TuneResult:
    """What a tuning worker produced."""

    study_name: str
    parent_run_id: str
    best_value: float | None
    best_params: dict[str, Any]
    n_trials: int
    finetune_run_id: str | None = None


def open_study(
    storage: optuna.storages.BaseStorage, name: str, sampler, pruner
) -> tuple[optuna.Study, bool]:
    """Create the study (True) or load it (False); creation is atomic across workers."""
    from optuna.exceptions import DuplicatedStudyError

    try:
        study = optuna.create_study(
            storage=storage, study_name=name, sampler=sampler, pruner=pruner, direction="minimize"
        )
        return study, True
    except DuplicatedStudyError:
        return optuna.load_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner
        ), False


def _wait_attr(study: optuna.Study, key: str, timeout: float = 60.0) -> Any:
    """A study user attribute that its creating worker is about to set (None on timeout)."""
    deadline = time.time() + timeout
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.time() > deadline:
            return value
        time.sleep(0.5)


def _check_settings(name: str, stored: dict[str, str], fixed: dict[str, str]) -> None:
    diff = {k: (stored.get(k), v) for k, v in fixed.items() if stored.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: study has {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"study {name!r} was started with other fixed settings ({detail}); resume it with "
            "the same flags or pick a new --study-name"
        )


def tune(a: argparse.Namespace) -> TuneResult:
    """Run (or join) a study as configured by the parsed command line."""
    uri = default_tracking_uri()
    check_reachable(uri)
    base = _base_args(a)
    setting = read_setting(base)
    space, trial_epochs = _checked_space(a, setting)
    spawn = trial_strategy(setting, a.storage)  # before the storage exists: nothing half-made
    storage = make_storage(a.storage, a.heartbeat)
    launch = ["--trainer.strategy", spawn] if spawn else []
    sampler = optuna.samplers.TPESampler(seed=a.sampler_seed)
    pruner = make_pruner(
        a.pruner, a.pruner_startup_trials, a.pruner_warmup_epochs, a.percentile, trial_epochs
    )
    first_n = ",".join(map(str, space.first_n)) if space.first_n else str(setting.first_n)
    fixed = {
        "model": setting.arch,
        "dataset": setting.dataset,
        "kind": setting.kind,
        "level": setting.level,
        "first_n": first_n,
        "trial_epochs": str(trial_epochs),
        "trial_subset": str(a.trial_subset),
        "seed": str(a.seed),
    }
    n_tag = "firstN" if space.first_n else f"first{setting.first_n}"
    name = a.study_name or f"{setting.experiment}-{setting.kind}-{setting.level}-{n_tag}"
    study, created = open_study(storage, name, sampler, pruner)
    stored = study.user_attrs.get("settings") if created else _wait_attr(study, "settings")
    if stored is None:
        study.set_user_attr("settings", fixed)
    else:
        _check_settings(name, stored, fixed)
    init_path, init_run, init_key = _study_init(study, name, a.init_from, setting.experiment)
    parent = _study_parent(study, created, name, setting, space, a, fixed, init_key)
    client = tracking_client()
    if created and not a.no_enqueue_default:
        study.enqueue_trial(_config_point(setting, space), skip_if_exists=True)
    for text in a.enqueue:
        study.enqueue_trial(parse_params(text), skip_if_exists=True)

    if spawn:
        print(
            f"[tune] {_n_devices(setting)} devices per trial: trainer.strategy={spawn}", flush=True
        )
    trial_args = [*launch]
    if a.trial_epochs:
        trial_args += ["--model.finetune.max_epochs", str(a.trial_epochs)]
    if a.trial_subset:
        trial_args += ["--data.init_args.train_subset", str(a.trial_subset)]
    experiment_id = client.get_run(parent).info.experiment_id
    objective = Objective(
        base, space, setting, str(init_path), init_run, parent, experiment_id, name, trial_args
    )
    n_trials, callbacks = _budget(a, study, [_WorkerCallback(objective, a.max_failures)])
    print(
        f"[tune] study {name!r} in {redact(a.storage)}: {len(study.trials)} trials so far; "
        f"space {space.describe()}; MLflow parent run {parent}",
        flush=True,
    )
    client.update_run(parent, status="RUNNING")
    status = "FINISHED"
    try:
        if n_trials != 0:
            study.optimize(
                objective,
                n_trials=n_trials,
                timeout=a.timeout,
                catch=(Exception,),  # recorded as FAIL and retried once; see _WorkerCallback
                callbacks=callbacks,
                gc_after_trial=True,
            )
        if objective.fatal is not None:
            raise objective.fatal
        log_summary(parent, study)
        log_plots(parent, study)
        result = TuneResult(name, parent, None, {}, len(study.trials))
        best = _best_trial(study)
        if best is not None:
            result.best_value, result.best_params = float(best.value), dict(best.params)
        if a.then_finetune:
            if best is None:
                raise ValueError(f"study {name!r} has no complete trial to fine-tune with")
            result.finetune_run_id = finetune_best(
                a, base, best, name, parent, setting, init_key, launch
            )
            client.set_tag(parent, "optuna.best_finetune_run", result.finetune_run_id)
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        client.set_tag(parent, "error", f"{type(e).__name__}: {e}"[:5000])
        raise
    finally:
        if os.environ.get("MLFLOW_RUN_ID") != parent:  # `mlflow run` ends its own run
            client.set_terminated(parent, status)
    _print_result(result, uri)
    return result


def finetune_best(
    a: argparse.Namespace, base: list[str], best: FrozenTrial, study_name: str, parent: str,
    setting: Setting, init_ref: str, launch: list[str] = (),
) -> str:  # fmt: skip
    """Fine-tune with the best trial's parameters at the full budget; a normal, tested run.

    It is nested under the study's parent run and tagged ``optuna.study`` and ``optuna.best_trial``.
    """
    client = tracking_client()
    experiment = client.get_experiment(client.get_run(parent).info.experiment_id).name
    tags = {
        "optuna.study": study_name,
        "optuna.best_trial": str(best.number),
        "optuna.parent_run": parent,
        "optuna.role": "best-finetune",
    }
    grid = ["--data.init_args.test_kinds", f"[clean,{setting.kind}]",
            "--data.init_args.test_levels", f"[{setting.level_value}]"]  # fmt: skip
    head = base[: len(base) - len(a.extra)]  # the test grid goes before --extra (which wins)
    args = [
        *head, *grid, *a.extra, *launch,
        *param_flags(best.params),
        "--model.init_from", init_ref,
        "--tracking.parent_run_id", parent,
        "--tracking.experiment", experiment,
        "--tracking.tags", json.dumps(tags),
    ]  # fmt: skip
    print(f"[tune] fine-tune with the best parameters {best.params} at the full budget", flush=True)
    return run_cli(args).run_id


# ----------------------------------------------------------------- helpers of tune()
def _base_args(a: argparse.Namespace) -> list[str]:
    """The ``fit`` command line shared by every trial and the final fine-tune."""
    args = [
        "fit",
        "--config",
        str(base_config(a.model, a.dataset)),
        "--config",
        str(base_config(a.model, a.dataset).parent / "finetune.yaml"),
    ]
    for c in a.config:
        args += ["--config", c]
    args += ["--seed_everything", str(a.seed)]
    if a.kind:
        args += ["--data.init_args.distortion.kind", a.kind]
    if a.level:
        args += ["--data.init_args.distortion.level", a.level]
    if a.first_n is not None:
        args += ["--model.first_n", str(a.first_n)]
    return args + list(a.extra)


def _checked_space(a: argparse.Namespace, setting: Setting) -> tuple[SearchSpace, int]:
    """The search space and the epochs of a trial, after checking the setting can be tuned."""
    if setting.kind == "clean":
        raise ValueError("tuning fine-tunes on distorted data: give --kind (e.g. defocus)")
    if setting.val_split <= 0:
        raise ValueError("the objective is the validation error: set data.init_args.val_split > 0")
    first_ns = _first_n_choices(a.search_first_n, setting)
    if not first_ns and not 0 < setting.first_n < setting.n_layers:
        raise ValueError(
            f"first_n={setting.first_n} is not a fine-tune of {setting.arch} "
            f"({setting.n_layers} layers); use --first-n 1..{setting.n_layers - 1}"
        )
    trial_epochs = a.trial_epochs or setting.max_epochs
    return _space(a, setting, trial_epochs, first_ns), trial_epochs


def _study_init(
    study: optuna.Study, name: str, ref: str, experiment: str
) -> tuple[Path, str | None, str]:
    """The pre-train of a study: local file, its MLflow run, and the key the study records.

    ``latest`` resolves once, when the study starts; a resumed study keeps its pre-train.
    """
    recorded = study.user_attrs.get("init_from")
    if ref == "latest" and recorded:
        ref = recorded
    path, run = resolve_checkpoint(ref, experiment)
    key = run or str(Path(path).resolve())
    if recorded is None:
        study.set_user_attr("init_from", key)
    elif recorded != key:
        _check_settings(name, {"init_from": recorded}, {"init_from": key})
    return path, run, key


def _budget(a: argparse.Namespace, study: optuna.Study, callbacks: list) -> tuple[int | None, list]:
    """This worker's ``n_trials`` (None: until --timeout or --max-trials) and its callbacks."""
    n_trials = a.n_trials
    if n_trials is None:
        n_trials = None if (a.timeout or a.max_trials) else 20
    if a.max_trials:
        done_states = (TrialState.COMPLETE, TrialState.PRUNED)
        callbacks = [*callbacks, optuna.study.MaxTrialsCallback(a.max_trials, states=done_states)]
        if len(study.get_trials(deepcopy=False, states=done_states)) >= a.max_trials:
            n_trials = 0
    return n_trials, callbacks


def _first_n_choices(spec: str | None, setting: Setting) -> list[int]:
    if spec is None:
        return []
    if spec == "all":
        return list(range(1, setting.n_layers))
    choices = sorted({int(x) for x in spec.split(",") if x.strip()})
    bad = [n for n in choices if not 0 < n < setting.n_layers]
    if bad or not choices:
        raise ValueError(
            f"--search-first-n {spec!r}: {setting.arch} fine-tunes first_n "
            f"1..{setting.n_layers - 1}"
        )
    return choices


def _space(
    a: argparse.Namespace, setting: Setting, trial_epochs: int, first_ns: list[int]
) -> SearchSpace:
    lr = (a.lr_min or setting.lr / 1000, a.lr_max or setting.lr * 100)
    if not 0 < lr[0] < lr[1]:
        raise ValueError(f"the learning-rate range must satisfy 0 < min < max (got {lr})")
    gamma = None
    if setting.step_schedule and not a.no_gamma:
        if min(setting.milestones) < trial_epochs:
            gamma = (a.gamma_min, a.gamma_max)
        else:
            print(
                f"[tune] lr_gamma not searched: trials stop ({trial_epochs} epochs) before the "
                f"first milestone {min(setting.milestones)}",
                flush=True,
            )
    wd = (a.wd_min, a.wd_max) if a.search_weight_decay else None
    return SearchSpace(lr, gamma, wd, first_ns or None)


def _config_point(setting: Setting, space: SearchSpace) -> dict[str, Any]:
    """The configured (paper's) parameters as a trial, so the study starts from them."""
    out: dict[str, Any] = {"lr": setting.lr}
    if space.lr_gamma:
        out["lr_gamma"] = setting.lr_gamma
    if space.weight_decay:
        out["weight_decay"] = setting.weight_decay
    if space.first_n:
        out["first_n"] = setting.first_n if setting.first_n in space.first_n else space.first_n[-1]
    return out


def _study_parent(
    study: optuna.Study, created: bool, name: str, setting: Setting, space: SearchSpace,
    a: argparse.Namespace, fixed: dict[str, str], init_key: str,
) -> str:  # fmt: skip
    """The study's one parent MLflow run: made by the creating worker, found by the others."""
    from mlflow.exceptions import MlflowException

    client = tracking_client()
    parent = None if created else _wait_attr(study, "mlflow_parent_run_id")
    if parent is not None:
        try:
            client.get_run(parent)
        except MlflowException as e:
            from robust_ft.tracking import TrackingError

            raise TrackingError(
                f"study {name!r} logs to MLflow run {parent}, which is not in "
                f"{redact(default_tracking_uri())}; "
                "point MLFLOW_TRACKING_URI at the study's store"
            ) from e
        own = os.environ.get("MLFLOW_RUN_ID")
        if own and own != parent:  # this worker's own `mlflow run`: link it to the study
            client.set_tag(own, "optuna.study", name)
            client.set_tag(own, "optuna.parent_run", parent)
        return parent
    params = {
        **{f"tune.{k}": v for k, v in fixed.items()},
        **{f"tune.space.{k}": v for k, v in space.describe().items()},
        "tune.init_from": init_key,
        "tune.pruner": a.pruner,
        "tune.storage": redact(a.storage),
    }
    parent = _parent_run(setting.experiment, "tune", params)
    if os.environ.get("MLFLOW_RUN_ID") != parent:
        client.update_run(parent, name=f"tune-{name}")
    client.set_tag(parent, "optuna.study", name)
    client.set_tag(parent, "optuna.storage", redact(a.storage))
    study.set_user_attr("mlflow_parent_run_id", parent)
    return parent


def _print_result(r: TuneResult, uri: str) -> None:
    print(f"\n[tune] study {r.study_name!r}: {r.n_trials} trials")
    if r.best_value is not None:
        print(f"[tune] best val/err {r.best_value:.2f}% with {r.best_params}")
    if r.finetune_run_id:
        print(f"[tune] fine-tune with the best parameters: run {r.finetune_run_id}")
    print(f"[tune] MLflow parent run {r.parent_run_id}; open the UI: {ui_command(uri)}")


# ----------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The ``robust-ft tune`` argument parser."""
    p = argparse.ArgumentParser(
        prog="robust-ft tune",
        description=__doc__,
    )
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
        "--extra", nargs=argparse.REMAINDER, default=[], help="more CLI flags for every run (last)"
    )
    return p


def main(argv: list[str] | None = None) -> TuneResult:
    """`robust-ft tune`: run or join an Optuna study of the fine-tune learning rates."""
    a = build_parser().parse_args(argv)
    saved, sys.argv = sys.argv, sys.argv[:1]  # trials' LightningCLI reads args=, not sys.argv
    try:
        return tune(a)
    finally:
        sys.argv = saved
