"""A study in MLflow: its one parent run, the progress and best trial on it, Optuna's plots."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from robust_ft.tracking import (
    TrackedRun,
    default_tracking_uri,
    existing_run,
    reap_dead_runs,
    tracked_run,
)
from robust_ft.tracking import client as tracking_client
from robust_ft.tune.storage import wait_attr

PARENT_ATTR = "mlflow_parent_run_id"
"""the study's user attribute that names its parent run"""

log = logging.getLogger("robust_ft")


@contextlib.contextmanager
def study_parent(
    study: optuna.Study, created: bool, experiment: str, tags: Mapping[str, str],
    params: Mapping[str, Any],
) -> Iterator[TrackedRun]:  # fmt: skip
    """The study's one parent MLflow run, for this worker's block.

    The worker that creates the study creates the run (under `mlflow run`: adopts its run) and
    records it in the study; a joining worker finds it there. A worker *owns* the run -- RUNNING
    while it works, then FINISHED, FAILED or KILLED with it (``tracked_run``) -- when it made it,
    or found it ended (a resumed study). While another worker owns it, a joining worker logs
    trials and progress to it and leaves its status to the owner.
    """
    import hashlib

    name = study.study_name
    key = {"config_hash": hashlib.sha256(f"study:{name}".encode()).hexdigest()[:16]}
    parent = None if created else wait_attr(study, PARENT_ATTR)
    if parent is None:  # a new study (or its creator died before making the run)
        tags = {**tags, **key}
        with tracked_run(experiment, run_name=f"tune-{name}", tags=tags, params=params) as run:
            study.set_user_attr(PARENT_ATTR, run.run_id)
            yield run
        return
    client = tracking_client()
    hint = f"study {name!r} logs to it: point MLFLOW_TRACKING_URI at the study's store"
    run = existing_run(parent, client, missing=hint)
    own = os.environ.get("MLFLOW_RUN_ID")
    if own and own != parent:  # this worker's own `mlflow run`: link it to the study
        client.set_tag(own, "optuna.study", name)
        client.set_tag(own, "optuna.parent_run", parent)
    exp = client.get_experiment(run.info.experiment_id).name
    if parent in reap_dead_runs(exp):  # its owner died on this host: the run is free again
        run = client.get_run(parent)
    if run.info.status == "RUNNING":  # another worker owns it
        yield TrackedRun(parent, exp, default_tracking_uri(), adopted=True)
        return
    with tracked_run(exp, run_id=parent, tags=key) as owned:
        yield owned


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best trial, None before its first complete one."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def log_summary(run_id: str, study: optuna.Study) -> None:
    """Log the study's progress and best trial to its parent run (metrics are updatable)."""
    from mlflow.entities import Metric

    client = tracking_client()
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    step = counts["COMPLETE"] + counts["PRUNED"]
    now = int(time.time() * 1000)
    values = {f"trials/{s.lower()}": float(counts[s]) for s in ("COMPLETE", "PRUNED", "FAIL")}
    best = best_trial(study)
    if best is not None:
        values["best/val_err"] = float(best.value)
        values.update({f"best/{k}": float(v) for k, v in best.params.items()})
        client.set_tag(run_id, "optuna.best_trial", str(best.number))
        client.set_tag(run_id, "optuna.best_params", json.dumps(best.params, sort_keys=True))
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])


PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "slice": "plot_slice",
    "intermediate_values": "plot_intermediate_values",
}


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
    written = []
    for name, fn in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(vis, fn)(study)
            fig = np.atleast_1d(ax).ravel()[0].figure
            fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(out / f"{name}.png")
        except Exception as e:  # noqa: BLE001 - a plot never fails a study (e.g. 1 trial)
            log.info(f"[tune] plot {name} skipped: {e}")
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
        log.info(f"[tune] trials.csv skipped: {e}")
    return written


def log_plots(run_id: str, study: optuna.Study) -> None:
    """Log the study's plots and trial table to the parent run under ``optuna/``."""
    client = tracking_client()
    with tempfile.TemporaryDirectory() as d:
        for path in save_plots(study, Path(d)):
            client.log_artifact(run_id, str(path), "optuna")
