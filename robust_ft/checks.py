"""Settings refused before a run starts: config files that are missing or not YAML, and options
under which a fit would train nothing or a test evaluate nothing (such a run would otherwise end
FINISHED and could be taken for a result, e.g. by ``init_from latest``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def config_files(argv: Sequence[str]) -> list[str]:
    """The files of ``--config``/``-c`` options of a command line."""
    out = []
    for i, token in enumerate(argv):
        if token in ("--config", "-c") and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif token.startswith("--config="):
            out.append(token.partition("=")[2])
    return out


def check_yaml_files(paths: Sequence[str | Path]) -> None:
    """Refuse a config file that does not exist or is not YAML, naming the file and the line."""
    import yaml

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} does not exist; see conf/ for them")
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(
                f"config file {path} is not valid YAML{where} ({problem}); fix it, or compare "
                "with the configs in conf/"
            ) from None


# option -> (the stage it empties, where its value is in the config)
EMPTYING = {
    "max_epochs": ("train", "trainer"),
    "max_steps": ("train", "trainer"),
    "limit_train_batches": ("train", "trainer"),
    "train_subset": ("train", "data"),
    "limit_test_batches": ("test", "trainer"),
    "test_subset": ("test", "data"),
    "limit_val_batches": ("val", "trainer"),
}


def check_does_something(cfg, command: str) -> None:
    """Refuse, up front, settings under which a fit trains nothing or a test tests nothing."""
    stages = {"fit": {"train", "test"}, "test": {"test"}, "validate": {"val"}}[command]
    if command == "fit" and not cfg.tracking.test_after_fit:
        stages = {"train"}
    where = {"trainer": cfg.trainer, "data": cfg.data.get("init_args") or {}}
    for key, (stage, section) in EMPTYING.items():
        if stage in stages and _none(where[section], key):
            raise ValueError(
                f"--{section}.{key} {where[section].get(key)} leaves `{command}` nothing to "
                f"{'train' if stage == 'train' else 'evaluate'} (it would end as a run that did "
                "nothing); give a positive value, or leave the option out"
            )


def _none(options, key: str) -> bool:
    """Whether a count or fraction option is set to none (None: unset; -1 epochs or steps: no
    limit)."""
    value = options.get(key)
    if value is None or isinstance(value, bool):
        return False
    return value == 0 if key in ("max_epochs", "max_steps") else value <= 0
