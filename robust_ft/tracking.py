"""MLflow tracking: the default store, a logger that ends runs only when told, checkpoint lookup."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger

ARTIFACT_CKPT_DIR = "checkpoints"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or a run reference is wrong."""


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite file ``mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def redact(url: str) -> str:
    """A URL (tracking URI, Optuna storage) without its password, for messages, logs and MLflow.

    ``user:password@`` keeps the user; a bare ``token@`` of an http(s) URL is hidden whole.
    """
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rsplit("@", 1)[-1]
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:***"
    elif parts.scheme in ("http", "https"):
        userinfo = "***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def ui_command(uri: str | None = None) -> str:
    """The one command that opens the MLflow UI on a store."""
    uri = uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {redact(uri)} in a browser"
    return f".venv/bin/mlflow ui --backend-store-uri {uri} --port 5000"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is unreachable ({e}); start it (`mlflow server`), fix "
            "MLFLOW_TRACKING_URI, or unset it to use the local SQLite store"
        ) from e


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


class RunLogger(MLFlowLogger):
    """MLFlowLogger whose run ends only when ``close`` is called (or training fails).

    Lightning finalizes a logger after ``fit`` and again after ``test``; a run that has been
    fitted but not tested must not look FINISHED, or a resumed sweep would skip it.
    """

    def __init__(self, *args, parent_run_id: str | None = None, **kwargs):
        tags = dict(kwargs.pop("tags", None) or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        super().__init__(*args, tags=tags, **kwargs)
        self._logged_params: dict[str, str] = {}

    def log_hyperparams(self, params) -> None:
        """Log params once; a key logged again with the same value is skipped."""
        params = flatten(dict(params)) if isinstance(params, Mapping) else flatten(vars(params))
        fresh = {}
        for k, v in params.items():
            v = str(v)[:6000]
            if self._logged_params.get(k) != v:
                fresh[k] = v
        if fresh:
            from mlflow.entities import Param

            self.experiment.log_batch(self.run_id, params=[Param(k, v) for k, v in fresh.items()])
            self._logged_params.update(fresh)

    interrupted = False  # set by the interrupt callback: SIGINT/SIGTERM end the run KILLED

    def finalize(self, status: str = "success") -> None:
        if status != "success" and self._initialized:
            self.close("KILLED" if self.interrupted or status == "interrupted" else "FAILED")

    def close(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run with an MLflow status; ``error`` is kept as the ``error`` tag."""
        if not self._initialized:
            return
        if error:
            self.experiment.set_tag(self.run_id, "error", error[:5000])
        self.experiment.set_terminated(self.run_id, status)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.experiment.log_artifact(self.run_id, str(path), artifact_path)


def process_tags() -> dict[str, str]:
    """Tags that tie a run to the process writing it (used to reap runs of dead processes)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def client(uri: str | None = None):
    """An MlflowClient on ``uri``, by default the store every robust-ft command uses."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri or default_tracking_uri())


def reap_dead_runs(experiment: str, uri: str | None = None) -> list[str]:
    """Mark FAILED the RUNNING runs of this host whose process is gone (e.g. SIGKILLed)."""
    host = socket.gethostname()
    mlflow_client = client(uri)
    reaped = []
    for run in find_runs(experiment, "attributes.status = 'RUNNING'", uri):
        tags = run.data.tags
        pid = tags.get("pid", "")
        if tags.get("host") == host and pid.isdigit() and not _alive(int(pid)):
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


def resolve_checkpoint(
    ref: str, experiment: str, dest: str | Path = "outputs/init", uri: str | None = None
) -> tuple[Path, str | None]:
    """A local checkpoint file for ``ref`` and the MLflow run it came from (None for a path).

    ``ref``: a file path; an MLflow run id (its ``checkpoints/best.ckpt``); ``runs:/<id>/<path>``;
    or ``latest`` (newest FINISHED clean pre-train in ``experiment``).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = uri or default_tracking_uri()
    if ref not in ("latest",) and not ref.startswith("runs:/") and Path(ref).exists():
        return Path(ref), None
    if ref == "latest":
        runs = find_runs(
            experiment, "tags.method = 'pretrain' and attributes.status = 'FINISHED'", uri
        )
        if not runs:
            raise TrackingError(
                f"no finished clean pre-train run in experiment {experiment!r} at {redact(uri)}; run "
                "`mlflow run . -e pretrain ...` first or pass --model.init_from <run id or .ckpt>"
            )
        run_id, artifact = runs[0].info.run_id, f"{ARTIFACT_CKPT_DIR}/best.ckpt"
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
    try:
        client(uri).get_run(run_id)
    except MlflowException as e:
        raise TrackingError(
            f"MLflow run {run_id} does not exist in {redact(uri)}: check the id"
        ) from e
    out = Path(dest) / run_id
    out.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=str(out), tracking_uri=uri
        )
    except (MlflowException, OSError) as e:
        raise TrackingError(f"run {run_id} has no artifact {artifact}: {e}") from e
    return Path(local), run_id
