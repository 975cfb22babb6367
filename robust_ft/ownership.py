"""Who may write an MLflow run: its owner (the process that made or claimed it), and a run is
continued only by the command that made it (its ``config_hash``).

A claim is a write-once param ``owner.<n>``; the tracking store refuses a second value for the
same key, so the store itself decides between two processes that claim a run at once. The same
write-once params elect one run of several made at once for one purpose (``elect``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

from robust_ft.stores import TrackingError

CLAIM = "owner."
"""params ``owner.<n>`` = ``host:pid:ms``: who continued a run the n-th time (write-once)"""
ADOPT_FIX = "leave --tracking.run_id / MLFLOW_RUN_ID out to start a new run, or pass the right id"


def run_to_adopt(run_id: str | None, adopt_env: bool = True, parent_run_id: str | None = None):
    """The run a block adopts: ``run_id``, else ``MLFLOW_RUN_ID`` for a run that is not nested."""
    if run_id is None and adopt_env and not parent_run_id:
        return os.environ.get("MLFLOW_RUN_ID") or None
    return run_id


def check_adoptable(mlflow_client, run_id: str, config_hash: str | None, experiment=None):
    """The run ``run_id`` if this process may continue it, else TrackingError (nothing written).

    Allowed: a run of the same config (its ``config_hash`` tag), or a fresh run with no hash
    and no metrics (the one `mlflow run` makes); not a deleted run, not a run of another
    ``experiment``, not a run that a live process owns (its last claim, or its pid tags).
    """
    from robust_ft.tracking import existing_run

    run = existing_run(run_id, mlflow_client)
    if run.info.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow run {run_id} is deleted; restore it in the MLflow UI first, or {ADOPT_FIX}"
        )
    exp = mlflow_client.get_experiment(run.info.experiment_id).name
    if experiment and exp != experiment:
        raise TrackingError(
            f"MLflow run {run_id} is in experiment {exp!r}, not {experiment!r} "
            f"(--tracking.experiment); {ADOPT_FIX}"
        )
    theirs = run.data.tags.get("config_hash")
    if theirs != config_hash and (theirs or run.data.metrics):
        raise TrackingError(
            f"MLflow run {run_id} was made by another config (config_hash {theirs or 'none'}, "
            f"this command's {config_hash or 'none'}): a run is only continued by the command "
            f"that made it, and is left unchanged; {ADOPT_FIX}"
        )
    owner = live_owner(run)
    if owner:
        raise TrackingError(
            f"MLflow run {run_id} is being written by {owner}; wait for it to end or stop it, "
            "then run the command again"
        )
    return run


def claim_run(mlflow_client, run_id: str, config_hash: str | None):
    """Check the run (``check_adoptable``), then claim it for this process, atomically.

    A claim is the write-once param ``owner.<n>``: the store refuses a second value for the same
    key, so of two processes continuing the run at the same moment exactly one gets it.
    """
    from mlflow.exceptions import MlflowException

    run = check_adoptable(mlflow_client, run_id, config_hash)
    n = 1 + max((int(k[len(CLAIM) :]) for k in _claims(run)), default=0)
    key, value = f"{CLAIM}{n}", f"{socket.gethostname()}:{os.getpid()}:{_now_ms()}"
    try:
        mlflow_client.log_param(run_id, key, value)
    except MlflowException:
        if mlflow_client.get_run(run_id).data.params.get(key) == value:
            raise
        raise TrackingError(
            f"MLflow run {run_id} was taken by another process at the same moment (it continues "
            "the run); this one stops without writing to it. Run the command again once that "
            "one has ended, if it still needs to"
        ) from None
    return run


ELECTED = "elected"
"""param ``elected`` = the run id its writer voted for (write-once; see ``elect``)"""


def elect(mlflow_client, mine: str, candidates) -> bool:
    """Whether run ``mine`` wins the election among ``candidates``: runs made at once for one
    purpose, ``mine`` among them, each read after its own creation, in an order all agree on.

    ``mine`` writes its id into the write-once param ``elected`` of every candidate, in order,
    and wins only if every write holds (a deleted candidate has withdrawn and is passed over).
    Two winners would both have written to the candidate made first, which each of them saw,
    and the store keeps one value per key: so at most one wins. A loser was stopped by a value
    whose writer got further along the same order, so at least one wins. No clock is compared.
    """
    from mlflow.exceptions import MlflowException

    for run in candidates:
        run_id = run.info.run_id
        try:
            mlflow_client.log_param(run_id, ELECTED, mine)
        except MlflowException:
            now = mlflow_client.get_run(run_id)
            if now.info.lifecycle_stage == "deleted":
                continue
            if now.data.params.get(ELECTED) in (None, mine):
                raise  # not a vote for another run: a store error
            return False
    return True


def _claims(run) -> dict[str, str]:
    return {
        k: v
        for k, v in run.data.params.items()
        if k.startswith(CLAIM) and k[len(CLAIM) :].isdigit()
    }


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def live_owner(run) -> str | None:
    """Who else writes ``run`` now ("process 12 on host h"), None if nobody (or this process).

    Owners: the last claim while the run has not ended since, and the pid tags of a RUNNING run.
    A live process is known on this host only; on another host a RUNNING run counts as owned.
    """
    claims = _claims(run)
    owners = []
    if claims:
        host, pid, ms = claims[max(claims, key=lambda k: int(k[len(CLAIM) :]))].rsplit(":", 2)
        if run.info.status == "RUNNING" or int(ms) > (run.info.end_time or 0):
            owners.append((host, pid))
    if run.info.status == "RUNNING" and "pid" in run.data.tags:
        owners.append((run.data.tags.get("host", ""), run.data.tags["pid"]))
    for host, pid in owners:
        alive = owner_alive({"host": host, "pid": pid})
        if pid == str(os.getpid()) and host == socket.gethostname():
            continue
        if alive or (alive is None and run.info.status == "RUNNING"):
            return f"process {pid} on host {host}"
    return None


def process_tags() -> dict[str, str]:
    """Tags that tie a run to the process writing it (used to reap runs of dead processes)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host lives (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process named by a run's ``host``/``pid`` tags lives (None: another host)."""
    pid = tags.get("pid", "")
    if tags.get("host") != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid) == os.getpid() or _alive(int(pid))


def refuse_running_duplicate(runs) -> None:
    """Refuse to start the command that a live process of this host is running already."""
    for run in runs:
        mine = run.data.tags.get("pid") == str(os.getpid())
        if run.info.status == "RUNNING" and not mine and owner_alive(run.data.tags):
            raise TrackingError(
                f"the same command is already running: MLflow run {run.info.run_id} of this "
                f"config is being written by process {run.data.tags['pid']}; wait for it to end "
                "or stop it, or change a setting (e.g. --seed_everything) to start another run"
            )
