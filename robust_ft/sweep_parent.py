"""The parent run of a sweep: finding it, electing it among commands started at once, and the
``tracked_run`` arguments it is made or adopted with.

Commands of a new sweep that find no parent each stand a candidate run (tag ``sweep_candidate``);
the store elects one (``ownership.elect``: write-once params, no clock compared) as the
``sweep_role=parent``; the others withdraw and wait for it. ``sweep`` calls these; they only read
the sweep's name, key, key fields and experiment.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robust_ft.sweep import Sweep

ORDER = ["attributes.start_time ASC", "attributes.run_id ASC"]
ELECTION_WAIT_S = 60.0
"""how long a command that lost the election waits for the winner to become the parent"""


def find_parent(client, sw: Sweep):
    """The sweep's parent run (the oldest run tagged with its ``sweep_key``), or None."""
    exp = client.get_experiment_by_name(sw.experiment_name)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.sweep_key = '{sw.key}' and tags.sweep_role = 'parent'",
        order_by=ORDER,
        max_results=1,
    )
    return runs[0] if runs else None


def candidates(client, sw: Sweep, exp_id: str) -> list:
    """The runs that stood for the sweep's parent (tag ``sweep_candidate``; the elected one is
    also ``sweep_role=parent``), in the order of ``find_parent``."""
    runs = client.search_runs(
        [exp_id], f"tags.sweep_candidate = '{sw.key}'", order_by=ORDER, max_results=1000
    )
    return list(runs)


def new_parent(client, sw: Sweep, args: dict[str, Any]) -> str:
    """The parent run of a sweep that has none yet: this command's, or the one elected among the
    commands of the same sweep started at the same moment (``ownership.elect``).

    This command's run (a new one, or `mlflow run`'s) stands with the tag ``sweep_candidate``
    (one tag, set once: a single search sees every candidate); the one elected becomes the
    ``sweep_role=parent``; the others withdraw before anything else is written (a new run is
    deleted, `mlflow run`'s loses the sweep's tags) and wait for it.
    """
    from mlflow.entities import Param, RunTag

    from robust_ft.ownership import elect, owner_alive, process_tags
    from robust_ft.tracking import experiment_id

    exp_id = experiment_id(client, sw.experiment_name)
    tags = {k: v for k, v in args["tags"].items() if k != "sweep_role"}
    tags |= {"sweep_candidate": sw.key, **process_tags()}
    own = os.environ.get("MLFLOW_RUN_ID")
    if own:
        client.log_batch(own, tags=[RunTag(k, v) for k, v in tags.items()])
    mine = own or client.create_run(exp_id, run_name=sw.name, tags=tags).info.run_id
    for run in candidates(client, sw, exp_id):  # a candidate whose process died mid-election
        if "sweep_role" not in run.data.tags and owner_alive(run.data.tags) is False:
            client.delete_run(run.info.run_id)
    runs = candidates(client, sw, exp_id)
    settled = any(r.data.tags.get("sweep_role") == "parent" for r in runs)
    if not settled and elect(client, mine, runs):
        # the role and the sweep's params in one write: whoever finds the parent reads its params
        params = [Param(k, v) for k, v in (args["params"] or {}).items()]
        client.log_batch(mine, params=params, tags=[RunTag("sweep_role", "parent")])
        return mine
    if own:  # back to the run `mlflow run` made, which then points at the parent
        for key in tags.keys() - process_tags().keys():
            client.delete_tag(own, key)
    else:
        client.delete_run(mine)
    deadline = time.time() + ELECTION_WAIT_S
    while (parent := find_parent(client, sw)) is None:
        if time.time() > deadline:
            from robust_ft.tracking import TrackingError

            left = [r.info.run_id for r in candidates(client, sw, exp_id)]
            raise TrackingError(
                f"sweep {sw.name!r} (key {sw.key}): another command of it started at the same "
                f"moment and was elected to make its parent run, but none appeared in "
                f"{ELECTION_WAIT_S:.0f} s; if that command died, delete its candidate run(s) "
                f"{', '.join(left) or '(none left)'} (MLflow UI) and run the command again"
            )
        time.sleep(0.2)
    if own:
        client.set_tag(own, "sweep_parent", parent.info.run_id)  # `mlflow run`: point at it
    return parent.info.run_id


def children(client, parent) -> list:
    """Every child run of a parent run, oldest first."""
    return list(
        client.search_runs(
            [parent.info.experiment_id],
            f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=50000,
        )
    )


def parent_run_args(client, sw: Sweep) -> dict[str, Any]:
    """``tracked_run`` arguments of the sweep's parent: the run of the same ``sweep_key`` (a
    resume), else `mlflow run`'s run, else a new one; its params are logged once."""
    from robust_ft.tracking import flatten

    parent = find_parent(client, sw)
    own = os.environ.get("MLFLOW_RUN_ID")
    if parent is not None and own and own != parent.info.run_id:
        client.set_tag(own, "sweep_parent", parent.info.run_id)  # `mlflow run`: point at it
    params = {f"sweep.{k}": str(v)[:6000] for k, v in flatten(sw.key_fields()).items()}
    return {
        "experiment": sw.experiment_name,
        "run_name": sw.name,
        "run_id": parent.info.run_id if parent is not None else None,
        "tags": {
            "sweep": sw.name,
            "sweep_key": sw.key,
            "sweep_role": "parent",
            "method": "sweep",
            "config_hash": sw.key,
        },
        "params": params if parent is None else None,
    }
