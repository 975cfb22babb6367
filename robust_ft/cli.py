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

    return (ValueError, FileNotFoundError, TrackingError)


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
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _exit_interrupted() -> None:
    """Exit 130 after Ctrl-C, 143 after SIGTERM (the shell's convention)."""
    import signal

    from robust_ft.tracking import interrupted_by_signal

    signum = interrupted_by_signal() or signal.SIGINT
    print("interrupted; the run is marked KILLED (run the same command again to resume)",
          file=sys.stderr)  # fmt: skip
    sys.exit(128 + int(signum))
