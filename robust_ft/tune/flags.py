"""The user's ``--extra`` flags next to the settings tune gives its runs.

``runner.run`` applies the user's flags (``argv``) after tune's overrides, so they win. Where that
would silently undo the study a flag is refused (``check_extra``): a flag that sets a searched
parameter, the pre-train or a run's identity. Where tune narrows one run on purpose -- a trial's
epochs (``--trial-epochs``), images (``--trial-subset``), name, tracking and test settings, the
spawning strategy of multi-device runs -- it passes them as ``runner.run(fixed=...)``, which wins
over the user's flag of that setting for that run only: ``--trial-epochs 2 --extra
--model.finetune.max_epochs 1`` gives 2-epoch trials and a 1-epoch final fine-tune.
"""

from __future__ import annotations

from robust_ft.tune.space import PARAM_KEYS

# A searched parameter -> the tune options that set it instead of an --extra flag.
SEARCH_OPTIONS = {
    "lr": "--lr-min/--lr-max (its range) or --enqueue lr=X (a rate to try first)",
    "lr_gamma": "--gamma-min/--gamma-max, or --no-gamma to keep the configured lr_gamma",
    "weight_decay": "--wd-min/--wd-max, or leave out --search-weight-decay",
    "first_n": "--search-first-n N,N,.., or --first-n N without --search-first-n",
}
# Settings tune gives every run itself -> the tune option that sets them (None: none, leave out).
TUNE_OPTIONS = {
    "model.init_from": "--init-from",
    "tracking.run_id": None,
    "tracking.parent_run_id": None,
}


def check_extra(extra: list[str], searched: list[str]) -> None:
    """Refuse a user flag that would undo the study: a searched parameter, the pre-train, a run id."""
    from robust_ft.overrides import covers, user_keys

    refused = {PARAM_KEYS[p]: SEARCH_OPTIONS[p] for p in searched}
    for key, source in user_keys(extra).items():
        for target in (*refused, *TUNE_OPTIONS):
            if not covers(key, target):
                continue
            if target in refused:
                what, option = "which the study searches", refused[target]
            else:
                what, option = "which tune sets for each run", TUNE_OPTIONS[target]
            instead = f"; use {option} instead" if option else "; leave it out"
            if source.startswith("--config "):
                instead += f" (or give the overlay as tune's {source})"
            raise ValueError(f"--extra {source} sets {target}, {what}{instead}")
