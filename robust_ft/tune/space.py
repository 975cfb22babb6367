"""What a trial samples: the search space, its parameters as run settings, ``--enqueue`` points."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from robust_ft.tune.setting import Setting

# A trial parameter -> the config key it sets (an override of every trial and the final fine-tune).
PARAM_KEYS = {
    "lr": "model.finetune.lr",
    "lr_gamma": "model.finetune.lr_gamma",
    "weight_decay": "model.weight_decay",
    "first_n": "model.first_n",
}

log = logging.getLogger("robust_ft")


@dataclass
class SearchSpace:
    """What a trial samples: a log-uniform rate; optionally lr_gamma, weight decay, first_n."""

    lr: tuple[float, float]
    lr_gamma: tuple[float, float] | None = None
    weight_decay: tuple[float, float] | None = None
    first_n: list[int] | None = None

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one point of the space."""
        out: dict[str, Any] = {"lr": trial.suggest_float("lr", *self.lr, log=True)}
        if self.lr_gamma:
            out["lr_gamma"] = trial.suggest_float("lr_gamma", *self.lr_gamma, log=True)
        if self.weight_decay:
            out["weight_decay"] = trial.suggest_float("weight_decay", *self.weight_decay, log=True)
        if self.first_n:
            out["first_n"] = trial.suggest_categorical("first_n", self.first_n)
        return out

    def describe(self) -> dict[str, str]:
        """The space as strings (logged with the study's parent run); its keys are the searched."""
        out = {"lr": f"loguniform{self.lr}"}
        if self.lr_gamma:
            out["lr_gamma"] = f"loguniform{self.lr_gamma}"
        if self.weight_decay:
            out["weight_decay"] = f"loguniform{self.weight_decay}"
        if self.first_n:
            out["first_n"] = f"categorical{self.first_n}"
        return out


def param_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as ``runner.run`` overrides (``model.finetune.lr``, ...)."""
    return {PARAM_KEYS[k]: v for k, v in params.items()}


def parse_params(text: str) -> dict[str, float | int]:
    """``lr=1e-5,lr_gamma=0.1`` -> a dict of trial parameters (for ``--enqueue``)."""
    out: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in PARAM_KEYS:
            raise ValueError(
                f"--enqueue {text!r}: expected name=value pairs of lr, lr_gamma, weight_decay, "
                "first_n, e.g. lr=1e-5,lr_gamma=0.1"
            )
        out[key] = int(value) if key == "first_n" else float(value)
    return out


def first_n_choices(spec: str | None, setting: Setting) -> list[int]:
    """The first_n values of ``--search-first-n`` (bare flag: every fine-tune), [] without it."""
    if spec is None:
        return []
    if spec == "all":
        return list(range(1, setting.n_layers))
    choices = sorted({int(x) for x in spec.split(",") if x.strip()})
    bad = [n for n in choices if not 0 < n < setting.n_layers]
    if bad or not choices:
        raise ValueError(
            f"--search-first-n {spec!r}: {setting.arch} fine-tunes first_n "
            f"1..{setting.n_layers - 1}"
        )
    return choices


def build_space(
    a: argparse.Namespace, setting: Setting, trial_epochs: int, first_ns: list[int]
) -> SearchSpace:
    """The space of the command line's ranges around the configured schedule."""
    lr = (a.lr_min or setting.lr / 1000, a.lr_max or setting.lr * 100)
    if not 0 < lr[0] < lr[1]:
        raise ValueError(f"the learning-rate range must satisfy 0 < min < max (got {lr})")
    gamma = None
    if setting.step_schedule and not a.no_gamma:
        if min(setting.milestones) < trial_epochs:
            gamma = (a.gamma_min, a.gamma_max)
        else:
            log.info(
                f"[tune] lr_gamma not searched: trials stop ({trial_epochs} epochs) before the "
                f"first milestone {min(setting.milestones)}"
            )
    wd = (a.wd_min, a.wd_max) if a.search_weight_decay else None
    return SearchSpace(lr, gamma, wd, first_ns or None)


def config_point(setting: Setting, space: SearchSpace) -> dict[str, Any]:
    """The configured (paper's) parameters as a trial, so the study starts from them."""
    out: dict[str, Any] = {"lr": setting.lr}
    if space.lr_gamma:
        out["lr_gamma"] = setting.lr_gamma
    if space.weight_decay:
        out["weight_decay"] = setting.weight_decay
    if space.first_n:
        out["first_n"] = setting.first_n if setting.first_n in space.first_n else space.first_n[-1]
    return out
