"""A tuning worker: open or join the study, run its trials, then fine-tune with the best ones."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from robust_ft.tracking import (
    TrackedRun,
    check_reachable,
    default_tracking_uri,
    redact,
    resolve_checkpoint,
    ui_command,
)
from robust_ft.tracking import client as tracking_client
from robust_ft.tune.flags import check_extra
from robust_ft.tune.objective import Objective, WorkerCallback
from robust_ft.tune.setting import Runs, Setting, n_devices, read_setting, trial_strategy
from robust_ft.tune.space import (
    SearchSpace,
    build_space,
    config_point,
    first_n_choices,
    param_overrides,
    parse_params,
)
from robust_ft.tune.storage import make_pruner, make_storage, open_study, wait_attr
from robust_ft.tune.tracking import best_trial, log_plots, log_summary, study_parent
from robust_ft.ui import open_hint, tune_view

log = logging.getLogger("robust_ft")


@dataclass
class TuneResult:
    """What a tuning worker produced."""

    study_name: str
    parent_run_id: str
    best_value: float | None
    best_params: dict[str, Any]
    n_trials: int
    finetune_run_id: str | None = None
    view: str = ""
    """the UI page of the study's trials (URL fragment)"""


class Pretrain(NamedTuple):
    """The study's pre-train: local checkpoint, its MLflow run, the key the study records."""

    path: Path
    run: str | None
    key: str


def tune(a: argparse.Namespace) -> TuneResult:
    """Run (or join) a study as configured by the parsed command line."""
    uri = default_tracking_uri()
    check_reachable(uri)
    runs = Runs.of(a)
    setting = read_setting(runs)
    space, trial_epochs = checked_space(a, setting)
    spawn = trial_strategy(setting, a.storage)  # before the storage exists: nothing half-made
    check_extra(runs.extra, list(space.describe()))
    storage = make_storage(a.storage, a.heartbeat)
    sampler = optuna.samplers.TPESampler(seed=a.sampler_seed)
    pruner = make_pruner(
        a.pruner, a.pruner_startup_trials, a.pruner_warmup_epochs, a.percentile, trial_epochs
    )
    fixed = fixed_settings(a, setting, space, trial_epochs)
    n_tag = "firstN" if space.first_n else f"first{setting.first_n}"
    name = a.study_name or f"{setting.experiment}-{setting.kind}-{setting.level}-{n_tag}"
    study, created = open_study(storage, name, sampler, pruner)
    stored = study.user_attrs.get("settings") if created else wait_attr(study, "settings")
    if stored is None:
        study.set_user_attr("settings", fixed)
    else:
        check_settings(name, stored, fixed)
    init = study_init(study, a.init_from, setting)
    tags = {"method": "pipeline", "pipeline": "tune", "optuna.study": name,
            "optuna.storage": redact(a.storage)}  # fmt: skip
    params = {
        **{f"tune.{k}": v for k, v in fixed.items()},
        **{f"tune.space.{k}": v for k, v in space.describe().items()},
        "tune.init_from": init.key,
        "tune.pruner": a.pruner,
        "tune.storage": redact(a.storage),
    }
    with study_parent(study, created, setting.experiment, tags, params) as parent:
        if created and not a.no_enqueue_default:
            study.enqueue_trial(config_point(setting, space), skip_if_exists=True)
        for text in a.enqueue:
            study.enqueue_trial(parse_params(text), skip_if_exists=True)
        strategy = {"trainer.strategy": spawn} if spawn else {}
        if spawn:
            log.info(f"[tune] {n_devices(setting)} devices per trial: trainer.strategy={spawn}")
        result = work(a, study, parent, runs, setting, space, init, strategy)
    print_result(result, uri)
    return result


def work(
    a: argparse.Namespace, study: optuna.Study, parent: TrackedRun, runs: Runs, setting: Setting,
    space: SearchSpace, init: Pretrain, strategy: dict[str, str],
) -> TuneResult:  # fmt: skip
    """This worker's trials, then the study's summary and plots on the parent run, then (with
    ``--then-finetune``) the fine-tune with the best parameters."""
    client = tracking_client()
    name = study.study_name
    trial_fixed: dict[str, Any] = dict(strategy)
    if a.trial_epochs:
        trial_fixed["model.finetune.max_epochs"] = a.trial_epochs
    if a.trial_subset:
        trial_fixed["data.init_args.train_subset"] = a.trial_subset
    experiment_id = client.get_run(parent.run_id).info.experiment_id
    objective = Objective(
        runs, space, str(init.path), init.run, parent.run_id, experiment_id, name, trial_fixed
    )
    n_trials, callbacks = budget(a, study, [WorkerCallback(objective, a.max_failures)])
    log.info(
        f"[tune] study {name!r} in {redact(a.storage)}: {len(study.trials)} trials so far; "
        f"space {space.describe()}; MLflow parent run {parent.run_id}"
    )
    if n_trials != 0:
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=a.timeout,
            catch=(Exception,),  # recorded as FAIL and retried once; see WorkerCallback
            callbacks=callbacks,
            gc_after_trial=True,
        )
    if objective.fatal is not None:
        raise objective.fatal
    log_summary(parent.run_id, study)
    log_plots(parent.run_id, study)
    result = TuneResult(name, parent.run_id, None, {}, len(study.trials))
    result.view = tune_view(client, experiment_id, name, space.describe())
    best = best_trial(study)
    if best is not None:
        result.best_value, result.best_params = float(best.value), dict(best.params)
    if a.then_finetune:
        if best is None:
            raise ValueError(f"study {name!r} has no complete trial to fine-tune with")
        result.finetune_run_id = finetune_best(
            runs, best, name, parent, setting, init.key, strategy
        )
        client.set_tag(parent.run_id, "optuna.best_finetune_run", result.finetune_run_id)
    return result


def finetune_best(
    runs: Runs, best: FrozenTrial, study_name: str, parent: TrackedRun, setting: Setting,
    init_ref: str, strategy: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """Fine-tune with the best trial's parameters at the full budget; a normal, tested run.

    It is nested under the study's parent run and tagged ``optuna.study`` and ``optuna.best_trial``.
    Its test grid (clean, plus the study's setting) comes below the user's flags, which may change
    it; the parameters, pre-train, strategy and nesting are tune's.
    """

    from robust_ft import runner
    from robust_ft.settings import test_grid

    tags = {
        "optuna.study": study_name,
        "optuna.best_trial": str(best.number),
        "optuna.parent_run": parent.run_id,
        "optuna.role": "best-finetune",
    }
    grid = test_grid(setting.kind, setting.level_value)
    fixed = {
        **(strategy or {}),
        **param_overrides(best.params),
        "model.init_from": init_ref,
        "tracking.parent_run_id": parent.run_id,
        "tracking.experiment": parent.experiment,
        "tracking.tags": tags,
    }
    overrides = {**runs.overrides, **{f"data.init_args.{k}": v for k, v in grid.items()}}
    log.info(f"[tune] fine-tune with the best parameters {best.params} at the full budget")
    res = runner.run("fit", overrides, configs=runs.configs, argv=runs.extra, fixed=fixed)
    return res.run_id


# ----------------------------------------------------------------- helpers of tune()
def checked_space(a: argparse.Namespace, setting: Setting) -> tuple[SearchSpace, int]:
    """The search space and the epochs of a trial, after checking the setting can be tuned."""
    if setting.kind == "clean":
        raise ValueError("tuning fine-tunes on distorted data: give --kind (e.g. defocus)")
    if setting.val_split <= 0:
        raise ValueError("the objective is the validation error: set data.init_args.val_split > 0")
    first_ns = first_n_choices(a.search_first_n, setting)
    if not first_ns and not 0 < setting.first_n < setting.n_layers:
        raise ValueError(
            f"first_n={setting.first_n} is not a fine-tune of {setting.arch} "
            f"({setting.n_layers} layers); use --first-n 1..{setting.n_layers - 1}"
        )
    trial_epochs = a.trial_epochs or setting.max_epochs
    return build_space(a, setting, trial_epochs, first_ns), trial_epochs


def fixed_settings(
    a: argparse.Namespace, setting: Setting, space: SearchSpace, trial_epochs: int
) -> dict[str, str]:
    """The settings a study is started with; resuming it with others is refused."""
    first_n = ",".join(map(str, space.first_n)) if space.first_n else str(setting.first_n)
    return {
        "model": setting.arch,
        "dataset": setting.dataset,
        "kind": setting.kind,
        "level": setting.level,
        "first_n": first_n,
        "trial_epochs": str(trial_epochs),
        "trial_subset": str(a.trial_subset),
        "seed": str(a.seed),
    }


def check_settings(name: str, stored: dict[str, str], fixed: dict[str, str]) -> None:
    """Refuse to go on with a study under other fixed settings than it was started with."""
    diff = {k: (stored.get(k), v) for k, v in fixed.items() if stored.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: study has {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"study {name!r} was started with other fixed settings ({detail}); resume it with "
            "the same flags or pick a new --study-name"
        )


def study_init(study: optuna.Study, ref: str, setting: Setting) -> Pretrain:
    """The pre-train of a study: ``latest`` resolves once, when the study starts; a resumed
    study keeps its pre-train."""
    recorded = study.user_attrs.get("init_from")
    if ref == "latest" and recorded:
        ref = recorded
    match = {"model": setting.arch, "dataset": setting.dataset}
    path, run = resolve_checkpoint(ref, setting.experiment, match=match)
    key = run or str(Path(path).resolve())
    if recorded is None:
        study.set_user_attr("init_from", key)
    elif recorded != key:
        check_settings(study.study_name, {"init_from": recorded}, {"init_from": key})
    return Pretrain(Path(path), run, key)


def budget(a: argparse.Namespace, study: optuna.Study, callbacks: list) -> tuple[int | None, list]:
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


def print_result(r: TuneResult, uri: str) -> None:
    """The worker's last lines: trials, best value and parameters, where to look."""
    print(f"\n[tune] study {r.study_name!r}: {r.n_trials} trials")
    if r.best_value is not None:
        print(f"[tune] best val/err {r.best_value:.2f}% with {r.best_params}")
    if r.finetune_run_id:
        print(f"[tune] fine-tune with the best parameters: run {r.finetune_run_id}")
    hint = open_hint(uri, r.view) if r.view else ui_command(uri)
    print(f"[tune] MLflow parent run {r.parent_run_id}; the trials in the UI: {hint}")
