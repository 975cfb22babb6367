"""The console command ``robust-ft``: ``fit|validate|test`` go to ``runner.run``; the rest to
their modules. Imports nothing heavy, so ``robust-ft --help`` and every command's ``--help``
that does not need Lightning answer at once.
"""

from __future__ import annotations

import importlib
import os
import sys

# robust-ft's own commands: name -> ("module:function(argv)", description).
COMMANDS = {
    "demo": (
        "robust_ft.pipeline:demo_main",
        "the main job: pre-train, evaluate, fine-tune, re-train",
    ),
    "make-folder": (
        "robust_ft.data.make_folder:main",
        "write a small generated ImageFolder tree (to try own data)",
    ),
    "show-distortions": ("robust_ft.pipeline:show_distortions_main", "render the paper's Fig. 3/4"),
    "sweep": ("robust_ft.sweep:main", "the paper's grid as one resumable MLflow sweep"),
    "report": ("robust_ft.report:main", "Fig. 6/7/8 and Table 1 analogs from MLflow runs"),
    "tune": ("robust_ft.tune:main", "Optuna study of fine-tune learning rates"),
    "advise": ("robust_ft.deploy.advise:main", "the cheapest good-enough method, from runs"),
    "estimate": ("robust_ft.deploy.estimate:main", "which distortion (kind, level) images carry"),
    "register": ("robust_ft.deploy.registry:main", "models into the MLflow Model Registry"),
    "build-router": ("robust_ft.deploy.router:main", "a served model routing images by distortion"),
}
LIGHTNING_COMMANDS = {
    "fit": "train (then test) one run, e.g. fit --config conf/lenet5_fashion_mnist.yaml",
    "validate": "validation error of a model",
    "test": "test errors of a model on the test grid (no training: the paper's no-train)",
}


def _usage() -> str:
    lines = [
        "usage: robust-ft COMMAND [options]   (python -m robust_ft COMMAND ...)",
        "",
        "commands:",
    ]
    for name, desc in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:18s} {desc}")
    for name, (_, desc) in COMMANDS.items():
        lines.append(f"  {name:18s} {desc}")
    lines.append("\n`robust-ft COMMAND --help` lists a command's options.")
    return "\n".join(lines)


def expand_args(argv: list[str]) -> list[str]:
    """Split ``"--a 1 --b 2"`` given as one argument (MLproject's quoted ``extra``); drop empties."""
    import shlex

    out: list[str] = []
    for a in argv:
        if a.startswith("--") and any(c.isspace() for c in a):
            out.extend(shlex.split(a))
        elif a != "":
            out.append(a)
    return out


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: one line, exit code 2 (``ROBUST_FT_DEBUG=1``: traceback)."""
    from robust_ft.tracking import TrackingError

    # OSError: a file or directory the user named cannot be read or written (its path is said)
    errors: tuple[type[BaseException], ...] = (ValueError, OSError, TrackingError)
    if "sqlalchemy" in sys.modules:  # a database refusing a statement (locked, permissions)
        from sqlalchemy.exc import OperationalError

        errors += (OperationalError,)
    if "mlflow" in sys.modules:  # a store refusing a write says what, in one line
        from mlflow.exceptions import MlflowException

        errors += (MlflowException,)
    if "lightning" in sys.modules:  # a Trainer setting Lightning refuses (max_epochs -5)
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        errors += (MisconfigurationException,)
    return errors


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``robust-ft``."""
    argv = expand_args(sys.argv[1:] if argv is None else list(argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    from robust_ft.console import console_logging, quiet_third_party

    console_logging()
    quiet_third_party()
    if command not in COMMANDS and command not in LIGHTNING_COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    try:
        if command in COMMANDS:
            module, _, fn = COMMANDS[command][0].partition(":")
            getattr(importlib.import_module(module), fn)(rest)
        elif rest in (["-h"], ["--help"]):  # cached: no Lightning import for a help text
            from robust_ft.helpcache import cached_help

            print(cached_help(command), end="")
        else:
            from robust_ft.runner import run

            # Lightning's DDP launcher starts ranks 1.. by re-running `sys.executable sys.argv`,
            # so sys.argv stays the user's command line.
            run(command, argv=rest, summary=True)
    except KeyboardInterrupt:
        _exit_interrupted()
    except SystemExit:
        from robust_ft.tracking import interrupted_by_signal

        if interrupted_by_signal():  # Lightning's exit after Ctrl-C/SIGTERM inside fit/test
            _exit_interrupted()
        raise
    except Exception as e:
        if os.environ.get("ROBUST_FT_DEBUG") or not isinstance(e, _user_errors()):
            raise
        from robust_ft.stores import scrub

        text = str(e) or type(e).__name__
        if type(e).__module__.startswith("sqlalchemy"):  # its first line; then SQL, a link
            text = text.strip().splitlines()[0]
        print(f"error: {scrub(text, _urls(rest))}", file=sys.stderr)
        sys.exit(2)


def _urls(argv: list[str]) -> list[str | None]:
    """The URLs whose secrets no message may show: the tracking URI and ``--storage``."""
    urls = [os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("OPTUNA_STORAGE")]
    for i, a in enumerate(argv):
        if a == "--storage" and i + 1 < len(argv):
            urls.append(argv[i + 1])
        elif a.startswith("--storage="):
            urls.append(a.partition("=")[2])
    return urls


def _exit_interrupted() -> None:
    """Exit 130 after Ctrl-C, 143 after SIGTERM (the shell's convention)."""
    import signal

    from robust_ft.tracking import interrupted_by_signal

    signum = interrupted_by_signal() or signal.SIGINT
    print("interrupted; the run is marked KILLED (run the same command again to resume)",
          file=sys.stderr)  # fmt: skip
    sys.exit(128 + int(signum))
