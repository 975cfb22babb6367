"""Optuna study of the fine-tune learning rates (`robust-ft tune`, `mlflow run . -e tune`).

Each trial is one first-N fine-tune from the clean pre-train, scored by its lowest validation
error (``val/err``) on the distorted validation split, never the test split. Unpromising trials
are pruned epoch by epoch. The study is one parent MLflow run; every trial is a nested child run.
"""

# Modules: cli (the command line), study (a worker: tune, finetune_best), setting (what is
# tuned, read via runner.parse; DDP checks), space (the search space), flags (the user's --extra
# next to tune's settings), objective (one trial = one runner.run), tracking (the parent run,
# summary, plots), storage (Optuna storages, pruners, opening a study).

from robust_ft.tracking import redact
from robust_ft.tune.cli import build_parser, main
from robust_ft.tune.objective import MONITOR, RUN_STATUS, Objective
from robust_ft.tune.setting import Runs, Setting, read_setting, trial_strategy
from robust_ft.tune.space import SearchSpace, param_overrides, parse_params
from robust_ft.tune.storage import make_pruner, make_storage, open_study, retry_callback
from robust_ft.tune.study import TuneResult, finetune_best, tune

__all__ = [
    "MONITOR",
    "RUN_STATUS",
    "Objective",
    "Runs",
    "SearchSpace",
    "Setting",
    "TuneResult",
    "build_parser",
    "finetune_best",
    "main",
    "make_pruner",
    "make_storage",
    "open_study",
    "param_overrides",
    "parse_params",
    "read_setting",
    "redact",
    "retry_callback",
    "trial_strategy",
    "tune",
]
