"""What robust-ft's console shows: its own lines, not third-party warnings, tips or banners.

``ROBUST_FT_VERBOSE=1`` shows everything (Lightning's banners and progress bar, every warning,
Lightning's per-test-set tables); ``ROBUST_FT_DEBUG=1`` also shows tracebacks of input errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger("robust_ft")
THIRD_PARTY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                       "mlflow", "alembic", "optuna", "torch")  # fmt: skip


def verbose() -> bool:
    """Whether the user asked for everything (``ROBUST_FT_VERBOSE=1``)."""
    return os.environ.get("ROBUST_FT_VERBOSE", "") not in ("", "0", "false")


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is now (pytest and tools replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def console_logging() -> None:
    """robust-ft's own progress lines (logger ``robust_ft``) go to stderr as plain text."""
    if not log.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_scrub_secrets)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _scrub_secrets(record: logging.LogRecord) -> bool:
    """A console line never shows a secret of the tracking URI or Optuna storage."""
    from robust_ft.stores import scrub

    record.msg, record.args = scrub(record.getMessage()), None
    return True


_quiet = {"on": False}


def quiet_third_party() -> None:
    """Third-party INFO lines and warnings off (unless ``verbose()``); robust-ft's stay.

    Loggers: Lightning's banners and tips, MLflow's database notices, Optuna's trial lines.
    Warnings: every warning attributed to another package's module (deprecations, Lightning's
    hints, torch.export's notes from logging the model); those of robust_ft's modules stay.
    """
    import warnings

    if verbose():
        return
    _quiet["on"] = True
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # spawned workers and DDP ranks too
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"robust_ft(\..*)?$")
    quiet_loggers()


def quiet_loggers() -> None:
    """Third-party loggers to WARNING, again: Lightning sets its own to INFO when imported."""
    if _quiet["on"]:
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def without_log_lines(logger: str, prefix: str):
    """Drop one known third-party log line (messages starting with ``prefix``) while inside,
    unless ``verbose()``."""

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return verbose() or not record.getMessage().startswith(prefix)

    target, drop = logging.getLogger(logger), Drop()
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


@contextlib.contextmanager
def warnings_off():
    """No warnings while inside (unless ``verbose()``): for a third-party call whose warnings are
    attributed to robust-ft's calling line, which ``quiet_third_party`` lets through."""
    import warnings

    with warnings.catch_warnings():
        if not verbose():
            warnings.simplefilter("ignore")
        yield
