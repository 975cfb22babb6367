"""A sweep on many workers: its cells are trials of one Optuna study, claimed by worker processes.

Why Optuna: the stack already runs its RDB storage (SQLite on one machine, the compose stack's
PostgreSQL for several), and it gives what a work queue needs: enqueued trials are claimed
atomically (a WAITING trial becomes RUNNING for exactly one worker), every running trial sends a
heartbeat, and a trial whose worker died is failed after the grace period and put back in the
queue (``RetryFailedTrialCallback``). Nothing here is a protocol of our own.

Rules:
- each unfinished cell is enqueued once per start (a cell already WAITING or RUNNING is not);
  should two trials of one cell still be claimed (two starts at once), the lower trial number
  runs it and the other steps aside, so a cell never runs twice at the same time;
- a cell waits for its pre-train (another worker may be training it); when the pre-train is not
  running anywhere, the cell goes back to the queue behind it;
- a worker stops when no trial is WAITING or RUNNING: it waits for the others' cells, so that a
  dead worker's cell, failed by its missing heartbeat and re-queued, is picked up;
- a cell that fails stops its worker (the sweep ends FAILED; the same command resumes it);
- every cell is one nested MLflow run under the sweep's one parent run.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from robust_ft.sweep import Cell, Sweep, run_cell
from robust_ft.tracking import client as tracking_client

log = logging.getLogger("robust_ft")
POLL_S = 1.0
LIVE = (TrialState.WAITING, TrialState.RUNNING)


def study_name(sw: Sweep) -> str:
    return f"sweep-{sw.key}"


def open_queue(sw: Sweep, storage_url: str, heartbeat: int) -> optuna.Study:
    """The sweep's study (created by the first worker to come)."""
    from robust_ft.tune.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url, heartbeat)
    return optuna.create_study(
        study_name=study_name(sw), storage=storage, load_if_exists=True, direction="minimize"
    )


def enqueue_unfinished(study: optuna.Study, sw: Sweep, done: set[str]) -> int:
    """Enqueue, in run order, every cell not finished in MLflow and not already queued."""
    queued = {t.user_attrs.get("cell") for t in study.get_trials(deepcopy=False, states=LIVE)}
    n = 0
    for cell in sw.cells():
        if cell.key not in done and cell.key not in queued:
            study.enqueue_trial({}, user_attrs={"cell": cell.key})
            n += 1
    return n


@dataclass
class CellObjective:
    """One trial = one cell, run by ``runner.run`` as a nested run of the sweep's parent."""

    sw: Sweep
    parent: str

    def __call__(self, trial: optuna.Trial) -> float:
        key = trial.user_attrs.get("cell")
        if key is None:  # the queue emptied between the look and the claim
            trial.set_user_attr("idle", True)
            raise optuna.TrialPruned("no cell was waiting")
        if self._claimed_elsewhere(trial, key):
            trial.set_user_attr("duplicate", True)
            raise optuna.TrialPruned(f"cell {key} is run by another trial")
        cell = next(c for c in self.sw.cells() if c.key == key)
        pretrain = self._pretrain_run(trial, cell)
        res = run_cell(self.sw, cell, self.parent, pretrain, f"trial {trial.number}:")
        trial.set_user_attr("run_id", res.run_id)
        return 0.0

    def _claimed_elsewhere(self, trial: optuna.Trial, key: str) -> bool:
        """Another trial of the same cell is COMPLETE, or RUNNING with a lower number."""
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):  # fmt: skip
            if t.user_attrs.get("cell") != key or t.number == trial.number:
                continue
            if t.state == TrialState.COMPLETE or t.number < trial.number:
                return True
        return False

    def _pretrain_run(self, trial: optuna.Trial, cell: Cell) -> str | None:
        """The finished pre-train of the cell's seed; waits while another worker trains it."""
        if cell.method == "pretrain" or not self.sw.grid.pretrain:
            return None
        key = next(c.key for c in self.sw.cells() if c.seed == cell.seed and c.method == "pretrain")
        client = tracking_client()
        while True:
            run = self._finished_run(client, key)
            if run is not None:
                return run
            requeue_dead(trial.study)  # the pre-train's worker may have died
            states = {t.state for t in trial.study.get_trials(deepcopy=False) if t.user_attrs.get("cell") == key}  # fmt: skip
            if TrialState.RUNNING not in states:  # not being trained: queue this cell behind it
                trial.study.enqueue_trial({}, user_attrs={"cell": cell.key})
                trial.set_user_attr("deferred", True)
                raise optuna.TrialPruned(f"waits for its pre-train {key}")
            time.sleep(POLL_S)

    def _finished_run(self, client, key: str) -> str | None:
        runs = client.search_runs(
            [client.get_run(self.parent).info.experiment_id],
            f"tags.mlflow.parentRunId = '{self.parent}' and tags.cell = '{key}' "
            "and attributes.status = 'FINISHED'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None


def requeue_dead(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating; the storage's callback re-queues them."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def work(sw: Sweep, parent: str, storage_url: str, heartbeat: int) -> None:
    """One worker: claim and run cells until none is waiting or running anywhere."""
    from robust_ft.console import console_logging, quiet_third_party

    console_logging()
    quiet_third_party()
    study = open_queue(sw, storage_url, heartbeat)
    objective = CellObjective(sw, parent)
    while True:
        requeue_dead(study)
        states = [t.state for t in study.get_trials(deepcopy=False, states=LIVE)]
        if TrialState.WAITING in states:
            study.optimize(objective, n_trials=1, catch=())
        elif TrialState.RUNNING in states:
            time.sleep(POLL_S)
        else:
            return


def run_workers(sw: Sweep, parent: str, storage_url: str, workers: int, heartbeat: int) -> None:
    """Enqueue the unfinished cells, then work on them in this process and ``workers - 1`` more."""
    import multiprocessing

    from robust_ft.sweep import plan

    study = open_queue(sw, storage_url, heartbeat)
    done = set(plan(tracking_client(), sw).done)
    n = enqueue_unfinished(study, sw, done)
    log.info(f"[sweep] {n} cells queued in study {study.study_name!r}; {workers} worker(s) here")
    # This process is one of the workers (its imports are done: it starts the pre-train at once);
    # the others are fresh interpreters ("spawn": no forked threads or locks).
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=work, args=(sw, parent, storage_url, heartbeat)) for _ in range(workers - 1)]  # fmt: skip
    for p in procs:
        p.start()
    try:
        work(sw, parent, storage_url, heartbeat)
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:  # Ctrl-C reached them too; SIGTERM of this process did not
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=120)
        raise
    codes = [p.exitcode for p in procs]
    undone = [c.key for c in sw.cells() if c.key not in plan(tracking_client(), sw).done]
    if undone:
        raise RuntimeError(
            f"{len(undone)} cells did not finish (worker exit codes {codes}), e.g. {undone[0]}; "
            "the failed cell's run says why (its `error` tag); run the same command to resume"
        )
    if any(codes):
        log.info(f"[sweep] a worker ended early (exit codes {codes}); its cell was run again")
