"""MLflow tracking: the default store, a logger that ends runs only when told, checkpoint lookup."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robust_ft.ownership import (  # noqa: F401 - who may write a run, re-exported
    check_adoptable,
    claim_run,
    live_owner,
    owner_alive,
    process_tags,
    run_to_adopt,
)
from robust_ft.stores import (  # noqa: F401 - the store's part of tracking, re-exported
    TrackingError,
    check_reachable,
    default_tracking_uri,
    open_store,
    redact,
    scrub,
    ui_command,
)

ARTIFACT_CKPT_DIR = "checkpoints"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's own "View run ... at <tracking URI>" line would show the URI's password; robust-ft
# prints where the run is itself, redacted.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to ``a.b.c`` keys (lists become strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def environment_params() -> dict[str, str]:
    """Git commit and package versions, logged with every run."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"env.python": platform.python_version()}
    for pkg in ("robust-ft", "torch", "lightning", "mlflow", "albumentations", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[f"env.{pkg}"] = version(pkg)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        if commit:
            out["env.git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# ----------------------------------------------------------------- the one run lifecycle
class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every layer (Lightning included) unwinds the same way."""


_signals = {"count": 0, "last": None}


def _on_signal(signum, frame) -> None:
    import signal

    _signals["count"] += 1
    _signals["last"] = signum
    raise Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def _signals_raise():
    """SIGINT and SIGTERM raise (KeyboardInterrupt / Interrupted) while the block runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def interrupted_by_signal() -> int | None:
    """The signal number that interrupted the last tracked run of this process, if any."""
    return _signals["last"]


def final_status(error: BaseException | None, signalled: bool) -> str:
    """FINISHED, KILLED (a signal, Ctrl-C, or Lightning's exit after one) or FAILED."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if error is None:
        return "FINISHED"
    if signalled or isinstance(error, (KeyboardInterrupt, SIGTERMException)):
        return "KILLED"
    if isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt):
        return "KILLED"  # Lightning turns Ctrl-C inside fit/test into sys.exit(1)
    return "FAILED"


@dataclass
class TrackedRun:
    """The MLflow run a ``tracked_run`` block writes to (``run_id`` None on DDP ranks > 0)."""

    run_id: str | None
    experiment: str
    uri: str
    adopted: bool = False
    status: str = "RUNNING"


# Over 50 lines for its signature and docstring: the lifecycle reads best in one place.
@contextlib.contextmanager
def tracked_run(
    experiment: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    adopt_env: bool = True,
    mark_running: bool = True,
    active: bool = True,
    uri: str | None = None,
):
    """Own one MLflow run for the block: create or adopt it, tag its owner, set its final status.

    The run is ``run_id`` when given, else ``MLFLOW_RUN_ID`` (``mlflow run``) when ``adopt_env``
    and the run is not nested (``.experiment`` is then the adopted run's), else a new run (a
    nested child of ``parent_run_id`` when given). An existing run is adopted only by the same
    config (``tags["config_hash"]``) and claimed atomically through the store before anything is
    written to it (``ownership.claim_run``); otherwise TrackingError, the run left unchanged.
    Ends FINISHED (a stale ``error`` tag of an earlier attempt is removed), KILLED on SIGINT or
    SIGTERM at any moment of the block, or FAILED with an ``error`` tag. ``active=False`` (DDP
    ranks > 0) yields a run without an id and writes nothing. ``mark_running=False`` leaves an
    adopted run's status as it is until the caller sets it (a DDP resume; see MarkResumed).
    """
    uri = uri or default_tracking_uri()
    if not active:
        yield TrackedRun(None, experiment, uri)
        return
    run_id = run_to_adopt(run_id, adopt_env, parent_run_id)
    all_tags = {**(tags or {}), **process_tags()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    mlflow_client = client(uri)
    tracked = _open_run(mlflow_client, experiment, run_id, run_name, all_tags, mark_running)
    tracked.uri = uri
    if params:
        from mlflow.entities import Param

        have = mlflow_client.get_run(tracked.run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
        mlflow_client.log_batch(tracked.run_id, params=fresh)
    before = _signals["count"]
    try:
        with _signals_raise():
            yield tracked
    except BaseException as e:
        tracked.status = final_status(e, _signals["count"] > before)
        with contextlib.suppress(Exception):  # never hide the block's own error
            mlflow_client.set_tag(tracked.run_id, "error", f"{type(e).__name__}: {e}"[:5000])
        with contextlib.suppress(Exception):
            mlflow_client.set_terminated(tracked.run_id, tracked.status)
        raise
    tracked.status = "FINISHED"
    run = mlflow_client.get_run(tracked.run_id)
    if "error" in run.data.tags:  # an earlier attempt's error; this one succeeded
        mlflow_client.delete_tag(tracked.run_id, "error")
    mlflow_client.set_terminated(tracked.run_id, "FINISHED")


def _open_run(mlflow_client, experiment, run_id, run_name, tags, mark_running) -> TrackedRun:
    """Adopt ``run_id`` (checked, claimed, then tags, name, RUNNING) or create a run."""
    from mlflow.entities import RunTag

    if run_id:
        adopted = claim_run(mlflow_client, run_id, tags.get("config_hash"))
        mlflow_client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        if run_name:
            mlflow_client.update_run(run_id, name=run_name)
        if mark_running:
            mlflow_client.update_run(run_id, status="RUNNING")
        name = mlflow_client.get_experiment(adopted.info.experiment_id).name
        return TrackedRun(run_id, name, "", adopted=True)
    run = mlflow_client.create_run(experiment_id(mlflow_client, experiment), run_name=run_name, tags=tags)  # fmt: skip
    return TrackedRun(run.info.run_id, experiment, "")


def experiment_id(mlflow_client, name: str) -> str:
    """The id of experiment ``name``, created if missing (also when another process creates it
    at the same moment)."""
    from mlflow.exceptions import MlflowException

    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except MlflowException:
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def existing_run(run_id: str, mlflow_client=None, missing: str | None = None):
    """The MLflow run ``run_id``, or a TrackingError that says what to check (``missing``)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = mlflow_client or client()
    try:
        return mlflow_client.get_run(run_id)
    except MlflowException as e:
        store = redact(mlflow_client.tracking_uri)
        hint = (
            missing or "check the id (--tracking.run_id or MLFLOW_RUN_ID) and MLFLOW_TRACKING_URI"
        )
        raise TrackingError(f"MLflow run {run_id} does not exist in {store}; {hint}") from e


def adopted_experiment(run_id: str | None, uri: str | None = None) -> str | None:
    """The experiment of the run a command adopts (``--tracking.run_id``, ``MLFLOW_RUN_ID``)."""
    if not run_id:
        return None
    mlflow_client = client(uri)
    return mlflow_client.get_experiment(existing_run(run_id, mlflow_client).info.experiment_id).name


def client(uri: str | None = None):
    """An MlflowClient on ``uri``, by default the store every robust-ft command uses."""
    from mlflow.tracking import MlflowClient

    uri = uri or default_tracking_uri()
    open_store(uri)  # fails fast with the fix; a fresh SQLite store is created under a lock
    return MlflowClient(uri)


def reap_dead_runs(experiment: str, uri: str | None = None) -> list[str]:
    """Mark FAILED the RUNNING runs of this host whose process is gone (e.g. SIGKILLed)."""
    mlflow_client = client(uri)
    reaped = []
    for run in find_runs(experiment, "attributes.status = 'RUNNING'", uri):
        if owner_alive(run.data.tags) is False:
            pid = run.data.tags["pid"]
            mlflow_client.set_tag(
                run.info.run_id, "error", f"process {pid} died without ending the run"
            )
            mlflow_client.set_terminated(run.info.run_id, "FAILED")
            reaped.append(run.info.run_id)
    return reaped


def find_runs(experiment: str, filter_string: str = "", uri: str | None = None, max_results=1000):
    """Runs of an experiment matching an MLflow filter, newest first ([] if no experiment)."""
    mlflow_client = client(uri)
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return mlflow_client.search_runs(
        [exp.experiment_id],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )


# Over 50 lines for its four reference forms, each with its own clear error.
def resolve_checkpoint(
    ref: str, experiment: str, dest: str | Path = "outputs/init", uri: str | None = None,
    match: Mapping[str, str] | None = None,
) -> tuple[Path, str | None]:  # fmt: skip
    """A local checkpoint file for ``ref`` and the MLflow run it came from (None for a path).

    ``ref``: a file path; an MLflow run id (its ``checkpoints/best.ckpt``); ``runs:/<id>/<path>``;
    or ``latest``: the newest FINISHED clean pre-train in ``experiment`` whose tags equal
    ``match`` (e.g. the same model and dataset: an experiment such as `mlflow run`'s
    ``Default`` may hold others).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = uri or default_tracking_uri()
    if ref not in ("latest",) and not ref.startswith("runs:/") and Path(ref).exists():
        return Path(ref), None
    if ref == "latest":
        run_id, artifact = latest_pretrain(experiment, match, uri), f"{ARTIFACT_CKPT_DIR}/best.ckpt"
    elif ref.startswith("runs:/"):
        run_id, _, artifact = ref[len("runs:/") :].partition("/")
        artifact = artifact or f"{ARTIFACT_CKPT_DIR}/best.ckpt"
    elif len(ref) == 32 and all(c in "0123456789abcdef" for c in ref):
        run_id, artifact = ref, f"{ARTIFACT_CKPT_DIR}/best.ckpt"
    else:
        raise TrackingError(
            f"checkpoint reference {ref!r} is neither an existing file, an MLflow run id, "
            "runs:/<run_id>/<path>, nor 'latest'"
        )
    existing_run(run_id, client(uri), missing="check the id of --model.init_from")
    out = Path(dest) / run_id
    out.mkdir(parents=True, exist_ok=True)
    # Cells of a sweep on several workers fetch the same pre-train at once: each downloads into
    # its own directory and moves the file into place (os.replace is atomic), so no reader ever
    # opens a file that another process is still writing.
    with tempfile.TemporaryDirectory(dir=out, prefix=".fetch-") as scratch:
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=scratch, tracking_uri=uri
            ))  # fmt: skip
        except (MlflowException, OSError) as e:
            raise TrackingError(f"run {run_id} has no artifact {artifact}: {e}") from e
        if not local.is_file():
            raise TrackingError(
                f"artifact {artifact} of run {run_id} is a directory, not a checkpoint file; "
                f"name the file, e.g. runs:/{run_id}/{ARTIFACT_CKPT_DIR}/best.ckpt"
            )
        final = out / local.resolve().relative_to(Path(scratch).resolve())
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, final)
    return final, run_id


def latest_pretrain(experiment: str, match: Mapping[str, str] | None, uri: str) -> str:
    """The newest FINISHED clean pre-train run with a best checkpoint; says which it picked."""
    import logging

    where = "tags.method = 'pretrain' and attributes.status = 'FINISHED'"
    where += "".join(f" and tags.{k} = '{v}'" for k, v in (match or {}).items())
    mlflow_client = client(uri)
    for run in find_runs(experiment, where, uri):
        files = {f.path for f in mlflow_client.list_artifacts(run.info.run_id, ARTIFACT_CKPT_DIR)}
        if f"{ARTIFACT_CKPT_DIR}/best.ckpt" in files:
            logging.getLogger("robust_ft").info(
                "init_from latest: pre-train run %s (%s, ended %s) in experiment %r",
                run.info.run_id, run.info.run_name, _when(run.info.end_time), experiment,
            )  # fmt: skip
            return run.info.run_id
    of = " of " + " and ".join(f"{k} {v}" for k, v in match.items()) if match else ""
    raise TrackingError(
        f"no finished clean pre-train run{of} with a checkpoint in experiment {experiment!r} at "
        f"{redact(uri)}; run `mlflow run . -e pretrain ...` first or pass --model.init_from "
        "<run id or .ckpt>"
    )


def _when(ms: int | None) -> str:
    import datetime

    if not ms:
        return "?"
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def log_network(run_id: str, net, mean, std, uri: str | None = None, name: str = "model") -> None:
    """Log the network as it is deployed (``UInt8Classifier``: raw uint8 images in) to a run.

    MLflow's PyTorch flavour, pickled (not ``torch.export``: the batch size stays free, and no
    export notes are printed); the signature says uint8 (-1, C, H, W) -> float32 (-1, classes).
    """
    import torch

    from robust_ft.models.uint8 import UInt8Classifier

    model = UInt8Classifier(net.cpu().eval(), mean, std).eval()
    with torch.no_grad():
        n_classes = model(torch.zeros(1, *model.input_shape, dtype=torch.uint8)).shape[1]
    signature = uint8_signature(model.input_shape, n_classes)
    log_torch_model(run_id, model, signature, name, uri)


def log_torch_model(run_id: str, model, signature, name: str, uri: str | None = None) -> None:
    """Log an nn.Module to a run with MLflow's PyTorch flavour, pickled, with ``signature``."""
    with active_run(run_id, uri):
        _log_model(model, name, signature)


@contextlib.contextmanager
def active_run(run_id: str, uri: str | None = None):
    """Make ``run_id`` the MLflow fluent API's active run inside the block (its ``log_model``
    functions link models to the active run only); the run keeps the status it had, and the
    fluent API its store (``tracked_run`` sets the final status)."""
    import mlflow

    uri = uri or default_tracking_uri()
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    outer = mlflow.active_run()
    try:
        if outer is not None and outer.info.run_id == run_id:
            yield
            return
        status = client(uri).get_run(run_id).info.status  # start_run makes it RUNNING
        mlflow.start_run(run_id=run_id, nested=outer is not None)
        try:
            yield
        finally:
            mlflow.end_run(status)
    finally:
        mlflow.set_tracking_uri(before)  # the fluent API's store is the caller's again


def uint8_signature(input_shape, num_classes: int):
    """uint8 images (-1, C, H, W) -> float32 logits (-1, classes)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *input_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )


def _log_model(model, name: str, signature) -> None:
    import mlflow
    import torch

    from robust_ft.console import without_log_lines

    # pickle was chosen (free batch size, an nn.Module that .eval()s): MLflow's caution about it
    # is no news to the user of robust-ft's own models
    with without_log_lines("mlflow.pytorch", "Saving pytorch model by Pickle"):
        mlflow.pytorch.log_model(
            model,
            name=name,
            signature=signature,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
