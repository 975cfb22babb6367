"""One trial = one nested fine-tune run (``runner.run``), scored by its lowest ``val/err``."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from robust_ft.tracking import client as tracking_client
from robust_ft.tune.setting import Runs
from robust_ft.tune.space import SearchSpace, param_overrides
from robust_ft.tune.storage import retry_callback
from robust_ft.tune.tracking import log_summary

MONITOR = "val/err"
FATAL_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
# MLflow run status of a trial's child run per Optuna state (MLflow has no PRUNED status).
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

log = logging.getLogger("robust_ft")


@dataclass
class Objective:
    """One trial = one nested fine-tune run, scored by its lowest ``val/err``."""

    runs: Runs
    space: SearchSpace
    init_path: str
    init_run: str | None
    parent_run: str
    experiment_id: str
    study_name: str
    trial_fixed: dict[str, Any] = field(default_factory=dict)
    """what every trial sets beyond its parameters: strategy, epochs, training images"""
    fatal: BaseException | None = None
    last_error: BaseException | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        from robust_ft import runner

        run_id = None
        ckpt_dir = tempfile.mkdtemp(prefix="robust-ft-trial-")
        try:
            params = self.space.suggest(trial)
            run_id = self._start_child(trial, params)
            pruning = PyTorchLightningPruningCallback(trial, monitor=MONITOR)
            fixed = self.settings(trial.number, params, run_id, ckpt_dir)
            runner.run(
                "fit",
                self.runs.overrides,
                configs=self.runs.configs,
                argv=self.runs.extra,
                fixed=fixed,
                callbacks=[pruning],
            )
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

    def settings(
        self, number: int, params: dict[str, Any], run_id: str, ckpt_dir: str
    ) -> dict[str, Any]:
        """What tune fixes for one trial (a user flag of the same setting is left out)."""
        return {
            **self.trial_fixed,
            **param_overrides(params),
            "model.init_from": self.init_path,
            "tracking.run_id": run_id,  # the child run made by _start_child
            "tracking.run_name": f"trial-{number}",
            "tracking.test_after_fit": False,
            "tracking.log_model": False,
            "tracking.log_checkpoints": False,
            "tracking.checkpoint_dir": ckpt_dir,
            # trials never see the test split: one image keeps the datamodule happy
            "data.init_args.test_kinds": None,
            "data.init_args.test_levels": None,
            "data.init_args.test_subset": 1,
        }

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
            if "error" in run.data.tags:  # the run saw TrialPruned as an error; it is not one
                client.delete_tag(run_id, "error")
            client.set_tag(run_id, "optuna.pruned_at_epoch", str(len(history) - 1))
            client.set_tag(run_id, "optuna.note", note[:500])
        if error and "error" not in run.data.tags:
            client.set_tag(run_id, "error", error[:5000])
        if value is not None:
            client.log_metric(run_id, "val/err_best", value)
        status = RUN_STATUS[state]
        if state == "FAIL" and run.info.status == "KILLED":  # interrupted (Ctrl-C, SIGTERM)
            status = "KILLED"
        client.set_terminated(run_id, status)

    def _best_val_err(self, run_id: str) -> float:
        """The objective: the lowest ``val/err`` of the run's epochs (its best checkpoint's)."""
        history = tracking_client().get_metric_history(run_id, MONITOR)
        values = [m.value for m in history if not math.isnan(m.value)]
        if not values:
            raise RuntimeError(f"trial run {run_id} logged no {MONITOR}")
        return min(values)


class WorkerCallback:
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
            log.info(f"[tune] could not update the parent run: {e}")
