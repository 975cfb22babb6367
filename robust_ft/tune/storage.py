"""Where a study lives: Optuna storages from URLs, the pruner, creating or joining a study."""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from robust_ft.stores import connect_args, connect_timeout, initialising, redact, scrub

RDB_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")
STORAGE_FORMS = (
    "sqlite:///optuna.db (a local file), an RDB URL such as "
    "postgresql://user:password@host:5432/optuna or mysql+pymysql://user:password@host/optuna, "
    "or journal:PATH (an Optuna JournalStorage file, e.g. journal:./optuna.log)"
)


def _rdb_url(url: str):
    """(URL, SQLAlchemy URL) of an RDB storage, checked, with the driver that is installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if url.startswith("postgres://"):  # the short form SQLAlchemy no longer accepts
        url = "postgresql://" + url[len("postgres://") :]
    dialect = url.partition("://")[0].partition("+")[0] if "://" in url else ""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ValueError(
            f"--storage {redact(url)} is not a storage URL ({scrub(str(e), [url])}); "
            f"use {STORAGE_FORMS}"
        ) from None
    if dialect not in RDB_DIALECTS:
        raise ValueError(
            f"--storage {redact(url)} is not a storage URL Optuna accepts; use {STORAGE_FORMS}"
        )
    if parsed.drivername == "postgresql" and _has("psycopg2") and not _has("psycopg"):
        # SQLAlchemy >= 2.1 defaults to psycopg 3; use the psycopg2 driver that is installed
        url = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url, parsed


def make_storage(url: str, heartbeat: int = 60) -> optuna.storages.BaseStorage:
    """An Optuna storage from ``sqlite:///file.db``, any RDB URL, or ``journal:PATH``.

    RDB storages record a heartbeat every ``heartbeat`` seconds (0: off); a trial whose worker
    died is failed by the next worker and retried once.
    """
    if url.startswith("journal:"):
        return _journal(url)
    from sqlalchemy.exc import SQLAlchemyError

    url, parsed = _rdb_url(url)
    kwargs: dict[str, Any] = {}
    args = connect_args(url, connect_timeout())  # a server that is down fails in seconds
    if args:
        kwargs["engine_kwargs"] = {"connect_args": args}
    if parsed.get_backend_name() == "sqlite":
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several workers wait
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    if heartbeat > 0:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
        kwargs[RETRY_KWARG] = retry_callback()
    try:  # a fresh database's tables are made by one process at a time, as MLflow's
        with warnings.catch_warnings(), initialising(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except ImportError as e:
        raise ValueError(
            f"--storage {redact(url)} needs a database driver that is not installed "
            f"({e.__cause__ or e}); "
            "e.g. pip install psycopg2-binary for PostgreSQL or pymysql for MySQL"
        ) from e
    except SQLAlchemyError as e:
        first = scrub(str(e).splitlines()[0], [url])
        raise ValueError(
            f"cannot open --storage {redact(url)}: {first}; check that the database server runs "
            f"and the user and password (waited up to {connect_timeout():g} s, "
            "ROBUST_FT_CONNECT_TIMEOUT sets it)"
        ) from None


def _journal(url: str) -> optuna.storages.JournalStorage:
    """A JournalStorage of ``journal:PATH`` (also ``journal://PATH``)."""
    from optuna.storages.journal import JournalFileBackend

    path = url[len("journal:") :].removeprefix("//")
    if not path:
        raise ValueError(f"--storage {url!r} names no journal file; use {STORAGE_FORMS}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(path))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def retry_callback() -> Any:
    """Optuna's callback that re-queues a failed trial once, with the same parameters."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    cls = cls or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=1)


RETRY_KWARG = (
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


def wait_attr(study: optuna.Study, key: str, timeout: float = 60.0) -> Any:
    """A study user attribute that its creating worker is about to set (None on timeout)."""
    deadline = time.time() + timeout
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.time() > deadline:
            return value
        time.sleep(0.5)
