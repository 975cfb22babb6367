"""One tracked run: ``run(command, overrides) -> RunResult``, the layer every face calls.

Settings are LightningCLI's: config files, the user's own command-line flags (``argv``), and the
orchestration's ``overrides`` (a nested dict or dotted keys) for every key the user did not set,
so what the user types wins; ``fixed`` overrides win over everything (a tuning trial's epochs).
``RobustCLI`` parses and instantiates the model and data (``run=False``); ``run`` then builds the
Trainer inside ``tracking.tracked_run``, which owns the MLflow run's life, and fits/tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from robust_ft import console
from robust_ft.callbacks.tracking import (
    LogConfig,
    LogDatasetInputs,
    MarkResumed,
    RunLogger,
    SaveOnInterrupt,
)
from robust_ft.checks import check_does_something, check_yaml_files, config_files
from robust_ft.data.datamodules import DistortedDataModule
from robust_ft.models.classifier import ImageClassifier
from robust_ft.overrides import merge, nested, user_keys, without
from robust_ft.settings import (
    SCHEDULE_KEYS,
    experiment_name,
    first_n_tag,
    is_finetune,
    method_name,
    spawns_ranks,
)

log = logging.getLogger("robust_ft")
COMMANDS = ("fit", "validate", "test")


@dataclass
class Tracking:
    """Where and how the run is tracked in MLflow."""

    experiment: str | None = None
    """experiment name (default ``<arch>-<dataset>``)"""
    run_name: str | None = None
    run_id: str | None = None
    """log into this existing run (default: ``MLFLOW_RUN_ID`` under ``mlflow run``)"""
    parent_run_id: str | None = None
    """make the run a nested child of this one (sweeps, studies, the demo)"""
    method: str | None = None
    """the ``method`` tag (default: derived from first_n and the distortion)"""
    tags: dict[str, str] = field(default_factory=dict)
    log_model: bool = True
    """log the network with ``mlflow.pytorch.log_model`` at the end"""
    checkpoint_dir: str = "outputs/checkpoints"
    test_after_fit: bool = True
    """``fit`` then tests the best checkpoint on the test grid, in the same run"""
    resume: str = "auto"
    """``auto``: continue the newest FAILED/KILLED run of the same config from its last
    checkpoint; ``never``; or an MLflow run id to continue"""
    log_checkpoints: bool = True
    """log the best and last checkpoints as artifacts after ``fit`` (off for tuning trials)"""


@dataclass
class RunResult:
    """What one tracked run produced."""

    run_id: str | None
    status: str
    experiment: str
    metrics: dict[str, float]
    checkpoints: dict[str, str] = field(default_factory=dict)
    """``best`` / ``last`` checkpoint files of a fit"""

    @property
    def test_errors(self) -> dict[str, float]:
        """``test/err/<kind>/<Lx>`` -> top-1 error (%)."""
        return {k: v for k, v in self.metrics.items() if k.startswith("test/err/")}


@dataclass
class RunArgs:
    """What ``RobustCLI`` parses: config files, the user's flags, the overrides they leave, fixed."""

    command: str
    configs: Sequence[str | Path] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    argv: Sequence[str] | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """overrides that win even over the user's flags (a tuning trial's epochs)"""
    instantiate: bool = True


class RobustCLI(LightningCLI):
    """LightningCLI for robust-ft: parses a ``RunArgs``, resolves references, builds the parts."""

    def __init__(self, spec: RunArgs):
        self.spec, self.command = spec, spec.command
        self._adopted: str | None = None
        super().__init__(
            ImageClassifier,
            DistortedDataModule,
            subclass_mode_data=True,
            save_config_callback=LogConfig,
            save_config_kwargs={"save_to_log_dir": False},
            seed_everything_default=0,
            auto_configure_optimizers=False,
            # robust-ft prints a line per epoch instead (ROBUST_FT_VERBOSE=1: Lightning's bar)
            trainer_defaults={} if console.verbose() else {"enable_progress_bar": False},
            parser_kwargs={"default_env": False, "prog": f"robust-ft {spec.command}"},
            args=spec,
            run=False,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(Tracking, "tracking")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from it")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("seed_everything", "data.init_args.seed")

    def parse_arguments(self, parser, args: RunArgs) -> None:
        """Config files and the user's flags as the console parses them, then the overrides the
        user did not set and the fixed ones (last: jsonargparse cannot parse flags over a
        ``parse_object`` result, so all overrides go in one ``parse_object``)."""
        argv = list(args.argv or [])
        check_yaml_files([*args.configs, *config_files(argv)])
        files = [f"--config={path}" for path in args.configs]  # jsonargparse's own file action
        cfg = parser.parse_args(files + argv)
        self.user_keys = user_keys(argv)  # read once: the overrides and the fine-tune need them
        overrides = without(nested(args.overrides), self.user_keys)  # the user's flags win
        overrides = merge(overrides, nested(args.fixed))  # except over fixed settings
        if overrides:
            cfg = parser.parse_object(overrides, namespace=cfg)
        self.config = cfg

    # ----------------------------------------------------------------- before instantiation
    def before_instantiate_classes(self) -> None:
        """Resolve ``model.init_from`` (run id, runs:/, latest), a resume, the fine-tune epochs."""
        from robust_ft.tracking import (
            default_tracking_uri,
            open_store,
            reap_dead_runs,
            resolve_checkpoint,
        )

        cfg = self.config
        self.init_run_id = self.resume_run_id = self.resume_ckpt = None
        fit_images_to_model(cfg, self.data_class())
        self.config_hash = self._config_hash()
        if not self.spec.instantiate:
            return
        check_does_something(cfg, self.command)
        open_store(default_tracking_uri())
        reap_dead_runs(self.experiment_name())
        self.resume_run_id, self.resume_ckpt = find_resume(self)
        self.check_adoption()
        ref = cfg.model.init_from
        if ref:
            match = {"model": cfg.model.arch, "dataset": self.dataset_name()}
            digest = self.data_class().configured_digest(cfg.data.init_args)
            if digest:  # an own dataset: only a pre-train on the same files
                match["dataset_digest"] = digest
            path, self.init_run_id = resolve_checkpoint(ref, self.experiment_name(), match=match)
            cfg.model.init_from = str(path)
        if self.command == "fit" and is_finetune(cfg.model.first_n, self.n_layers(), ref):
            finetune_schedule(cfg, self.user_keys, self.spec.fixed)

    def check_adoption(self) -> None:
        """Refuse, before anything is written, to continue a run this command may not write."""
        from robust_ft.tracking import TrackingError, check_adoptable, client, run_to_adopt

        tr = self.config.tracking
        run_id = run_to_adopt(tr.run_id or self.resume_run_id, True, tr.parent_run_id)
        if not run_id or not launch_rank_zero():  # DDP ranks > 0 write nothing
            return
        run = check_adoptable(client(), run_id, self.config_hash, tr.experiment)
        if self.command != "fit" or self.resume_ckpt:
            return
        if run.info.status == "FINISHED":
            why = "already FINISHED this fit; there is nothing to continue"
        elif run.data.metrics:
            why = "holds an earlier attempt's metrics but no checkpoint here to resume from"
        else:
            return
        raise TrackingError(
            f"MLflow run {run_id} {why}, and is left unchanged. Leave --tracking.run_id / "
            "MLFLOW_RUN_ID out to train again as a new run"
        )

    def n_layers(self) -> int:
        from robust_ft.models import n_param_layers

        return n_param_layers(self.config.model.arch)

    def _config_hash(self) -> str:
        """A digest of the resolved config minus tracking options: "the same command"."""
        import yaml

        d = yaml.safe_load(self.parser.dump(self.config, skip_unset=False, skip_validation=True))
        for key in ("tracking", "ckpt_path", "config"):
            d.pop(key, None)
        d["subcommand"] = self.command
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def experiment_name(self) -> str:
        """``--tracking.experiment``, else the adopted run's (`mlflow run` puts its run in the
        experiment it is given, ``Default`` without one), else ``<model>-<dataset>``."""
        import os

        from robust_ft.tracking import adopted_experiment

        tr = self.config.tracking
        if tr.experiment:
            return tr.experiment
        if self._adopted is None:
            env = None if tr.parent_run_id else os.environ.get("MLFLOW_RUN_ID")
            self._adopted = adopted_experiment(tr.run_id or env) or ""
        return self._adopted or experiment_name(self.config.model.arch, self.dataset_name())

    def data_class(self) -> type[DistortedDataModule]:
        import importlib

        module, _, name = self.config.data.class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def dataset_name(self) -> str:
        """The dataset's name: the paper's, or an own dataset's folder (``name``)."""
        return self.data_class().configured_name(self.config.data.init_args)

    # ----------------------------------------------------------------- instantiation
    def instantiate_classes(self) -> None:
        """The model and the data; the Trainer waits for the MLflow run (``build_trainer``)."""
        if not self.spec.instantiate:
            return
        self.config_init = self.parser.instantiate(self.config)
        self.datamodule, self.model = self.config_init.get("data"), self.config_init["model"]
        model, dm = self.model, self.datamodule
        if tuple(model.net.input_shape) != tuple(dm.image_shape):
            raise ValueError(
                f"{model.hparams.arch} expects images of shape {tuple(model.net.input_shape)} "
                f"(C,H,W) but {dm.dataset_name} gives {tuple(dm.image_shape)}; pick a matching "
                "model and dataset config (see conf/)"
            )

    def build_trainer(self, run_id: str | None, callbacks: Sequence = ()):
        """The Trainer, logging into ``run_id``, with robust-ft's callbacks and ``callbacks``."""
        from robust_ft.callbacks.confusion import ConfusionMatrixCallback
        from robust_ft.callbacks.distributed import EndSpawnedProcessGroup
        from robust_ft.callbacks.grad_stats import GradientVarianceCallback
        from robust_ft.callbacks.progress import EpochProgress
        from robust_ft.tracking import default_tracking_uri

        cfg = self.config
        tr = cfg.tracking
        self.run_logger = RunLogger(
            experiment_name=self.experiment_name(),
            tracking_uri=default_tracking_uri(),
            run_id=run_id,
        )
        ours: list = []
        if self.resume_run_id:  # back to RUNNING only once every DDP rank has decided to resume
            ours.append(MarkResumed(self.resume_run_id, self.resume_ckpt))
        self.checkpoint = None
        if self.command == "fit":
            # Only global rank 0 has the MLflow run (DDP): other ranks get a placeholder here
            # that ModelCheckpoint.setup replaces with rank 0's directory (a broadcast).
            self.checkpoint = ModelCheckpoint(
                dirpath=str(Path(tr.checkpoint_dir) / (run_id or "rank0")),
                filename="best",
                monitor="val/err" if self.datamodule.val_split else None,
                mode="min",
                save_last=True,
            )
            ours += [self.checkpoint, SaveOnInterrupt(self.checkpoint.dirpath)]
        ours += [LogDatasetInputs(), GradientVarianceCallback(), ConfusionMatrixCallback()]
        ours.append(EpochProgress())
        if spawns_ranks(cfg.trainer.get("strategy")):
            ours.append(EndSpawnedProcessGroup())
        configured = list(self.config_init.get("trainer", {}).get("callbacks") or [])
        self.trainer = self.instantiate_trainer(
            callbacks=configured + ours + list(callbacks), logger=self.run_logger
        )
        return self.trainer


def fit_images_to_model(cfg, data_class: type) -> None:
    """An own dataset's channels and size, where not given: the model's input shape."""
    init = cfg.data.init_args
    if "channels" not in init or "crop" not in init:
        return
    from robust_ft.models import input_shape

    c, h, _ = input_shape(cfg.model.arch)
    if init.channels is None:
        init.channels = c
    if init.crop is None:
        init.crop = h


def finetune_schedule(
    cfg, typed_keys: Mapping[str, str], fixed: Mapping[str, Any] | None = None
) -> None:
    """A fine-tune trains with ``model.finetune``: put it in force, with what the user typed.

    A flag of the main schedule the user typed (``--model.lr``, ``--trainer.max_epochs``, ...)
    is used for the fine-tune, so that the run trains, and logs, what the user asked for; the
    same setting typed for both schedules is refused. Config files do not count as typed, and a
    ``fixed`` setting of the caller (a tuning trial's epochs) stays.
    """
    from robust_ft.tracking import flatten

    ft = cfg.model.finetune
    if ft is None:
        return
    typed = {k for k, source in typed_keys.items() if not source.startswith("--config")}
    kept = set(flatten(nested(fixed)))
    pairs = [(f"model.{k}", k) for k in SCHEDULE_KEYS] + [("trainer.max_epochs", "max_epochs")]
    for main, key in pairs:
        if main not in typed or f"model.finetune.{key}" in kept:
            continue
        if f"model.finetune.{key}" in typed:
            raise ValueError(
                f"--{main} and --model.finetune.{key} both given, but a first-N fine-tune trains "
                f"with one schedule (model.finetune); give only --model.finetune.{key}"
            )
        value = cfg.trainer.max_epochs if key == "max_epochs" else cfg.model[key]
        setattr(ft, key, value)
    if ft.max_epochs:
        cfg.trainer.max_epochs = ft.max_epochs


def find_resume(cli: RobustCLI) -> tuple[str | None, str | None]:
    """(run id, last checkpoint) of the FAILED/KILLED run of the same config this fit continues."""
    from robust_ft.tracking import TrackingError, existing_run, find_runs, run_to_adopt

    cfg = cli.config
    mode = cfg.tracking.resume
    if cli.command != "fit" or mode == "never" or cfg.get("ckpt_path"):
        return None, None
    if mode == "auto":
        adopted = run_to_adopt(cfg.tracking.run_id, True, cfg.tracking.parent_run_id)
        if adopted:  # the run given (--tracking.run_id, MLFLOW_RUN_ID), if it was interrupted
            runs = [existing_run(adopted)]
        else:
            runs = find_runs(cli.experiment_name(), f"tags.config_hash = '{cli.config_hash}'")
            if launch_rank_zero():  # DDP ranks > 0 join the run of their rank 0
                from robust_ft.ownership import refuse_running_duplicate

                refuse_running_duplicate(runs)
        if not runs or runs[0].info.status not in ("FAILED", "KILLED"):
            return None, None
        run_id = runs[0].info.run_id
    else:
        run_id = mode
    ckpt = resume_checkpoint(Path(cfg.tracking.checkpoint_dir) / run_id)
    if not ckpt.exists():
        if mode == "auto":
            return None, None
        raise TrackingError(
            f"cannot resume run {run_id}: no checkpoint {ckpt}; resume from the machine and "
            "directory that ran it, or pass --tracking.checkpoint_dir"
        )
    return run_id, str(ckpt)


def resume_checkpoint(directory: Path) -> Path:
    """``last.ckpt`` (the end of the last epoch), or ``interrupted.ckpt`` when it is newer and
    holds the training loader's position (saved mid-epoch on SIGTERM/Ctrl-C by a streaming run,
    whose StreamingDataLoader is stateful: the resume continues mid-epoch)."""
    last, interrupted = directory / "last.ckpt", directory / "interrupted.ckpt"
    newer = interrupted.exists() and (
        not last.exists() or interrupted.stat().st_mtime_ns > last.stat().st_mtime_ns
    )
    return interrupted if newer and _holds_loader_state(interrupted) else last


def _holds_loader_state(ckpt: Path) -> bool:
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        return bool(state["loops"]["fit_loop"]["state_dict"].get("combined_loader"))
    except Exception:  # unreadable or another layout: resume from last.ckpt as before
        return False


def run_tags(cli: RobustCLI) -> dict[str, str]:
    """The run's name-giving tags: method, distortion, level, first_n, model, dataset, seed.

    ``level`` is written as in metric keys (``L2``, ``LU0-4``); ``first_n`` as ``first_n_tag``.
    """
    from robust_ft.levels import level_tag

    cfg, dm, model = cli.config, cli.datamodule, cli.model
    tr = cfg.tracking
    clean = dm.kind is None
    if cli.command == "fit":
        method = tr.method or method_name(
            cfg.model.first_n, model.n_layers, clean, cfg.model.init_from
        )
    else:
        method = tr.method or "notrain"
    tags = {
        "method": method,
        "distortion": dm.kind or "clean",
        "level": level_tag(dm.distortion.level) if dm.kind else "L0",
        "first_n": first_n_tag(method),
        "model": cfg.model.arch,
        "dataset": dm.dataset_name,
        "seed": str(cfg.seed_everything),
        "stage": cli.command,
        "config_hash": cli.config_hash,
        **(tr.tags or {}),
    }
    tags["weights"] = starting_weights(cfg.model)
    if dm.content_digest:
        tags["dataset_digest"] = dm.content_digest
    if cli.init_run_id:
        tags["init_from_run"] = cli.init_run_id
    return tags


def _name_and_tags(cli: RobustCLI) -> tuple[str, dict[str, str]]:
    """The run's name and tags; says so when AlexNet starts from random weights."""
    tags = run_tags(cli)
    if tags["weights"] == "random" and tags["model"] == "alexnet":  # it has published weights
        log.info("alexnet starts from random weights (model.pretrained false)")
    name = f"{tags['method']}-{tags['distortion']}-{tags['level']}"
    return cli.config.tracking.run_name or name, tags


def starting_weights(model_cfg) -> str:
    """What the network starts from: ``checkpoint``, ``published`` (ImageNet) or ``random``."""
    if model_cfg.init_from:
        return "checkpoint"
    if model_cfg.get("pretrained"):
        return "published"
    return "random"


def launch_rank_zero() -> bool:
    """Whether this process becomes DDP global rank 0, known before the Trainer sets DDP up.

    Ranks > 0 started by Lightning's launcher, torchrun or SLURM carry LOCAL_RANK / RANK /
    SLURM_PROCID (read by ``rank_zero_only`` at import); the main process of another node carries
    NODE_RANK (or torchrun's GROUP_RANK) > 0. Only rank 0 may create the MLflow run.
    """
    import os

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return getattr(rank_zero_only, "rank", 0) == 0 and int(node) == 0


def parse(
    command: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    configs: Sequence[str | Path] = (),
    argv: Sequence[str] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> RobustCLI:
    """Parse and validate settings as ``run`` would, building nothing (``.config``, names)."""
    return RobustCLI(RunArgs(command, configs, overrides or {}, argv, fixed or {}, False))


def run(
    command: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    configs: Sequence[str | Path] = (),
    argv: Sequence[str] | None = None,
    callbacks: Sequence = (),
    summary: bool = False,
    fixed: Mapping[str, Any] | None = None,
) -> RunResult:
    """Fit, validate or test one model as one MLflow run; the result says what it produced.

    Settings: ``configs``, the user's flags ``argv``, ``overrides`` of what the user did not set,
    ``fixed`` (what the caller must decide, e.g. a tuning trial's epochs; use sparingly).
    ``summary``: print the test errors as one kind x level table and where the run is (the
    console sets it).
    """
    from robust_ft.tracking import tracked_run

    console.quiet_loggers()  # Lightning is imported now
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    cli = RobustCLI(RunArgs(command, configs, overrides or {}, argv, fixed or {}))
    tr, (name, tags) = cli.config.tracking, _name_and_tags(cli)
    with tracked_run(
        cli.experiment_name(),
        run_name=name,
        tags=tags,
        run_id=tr.run_id or cli.resume_run_id,
        parent_run_id=tr.parent_run_id,
        mark_running=cli.resume_run_id is None,
        active=launch_rank_zero(),
    ) as tracked:
        if cli.resume_run_id:  # claimed (rank 0), or joining rank 0 (DDP ranks > 0)
            log.info("resuming MLflow run %s from %s", cli.resume_run_id, cli.resume_ckpt)
        trainer = cli.build_trainer(tracked.run_id, callbacks)
        _execute(cli, trainer, summary)
        if trainer.is_global_zero:
            _check_tested(cli, trainer)
        if trainer.is_global_zero and tracked.run_id:
            _log_outputs(cli, trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    ckpts = {}
    if cli.checkpoint is not None:
        ckpts = {"best": cli.checkpoint.best_model_path, "last": cli.checkpoint.last_model_path}
    if summary and trainer.is_global_zero:
        _print_summary(cli, metrics, tracked.run_id)
    return RunResult(tracked.run_id, tracked.status, cli.experiment_name(), metrics, ckpts)


def _execute(cli: RobustCLI, trainer, summary: bool) -> None:
    """The command itself: fit (then test the best checkpoint), validate or test."""
    model, dm, cfg = cli.model, cli.datamodule, cli.config
    verbose = console.verbose() and not summary  # Lightning's table per test set
    if cli.command == "validate":
        trainer.validate(model, datamodule=dm, verbose=verbose)
    elif cli.command == "test":
        trainer.test(model, datamodule=dm, verbose=verbose)
    else:
        ckpt = cfg.get("ckpt_path") or cli.resume_ckpt
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        # the step count, or (ddp_spawn: the step count stays in the spawned ranks) the logged
        # training loss, which Lightning brings back to this process
        trained = trainer.global_step > 0 or "train/loss" in trainer.callback_metrics
        if not trained and not trainer.interrupted:
            raise ValueError(
                "fit trained on no batch: the training split is empty (check --data.val_split, "
                "--data.train_subset and the dataset); the run is marked FAILED"
            )
        if trainer.fast_dev_run:
            trainer.test(model, datamodule=dm, verbose=verbose)
        elif cfg.tracking.test_after_fit:  # the best checkpoint (the last one without val/err)
            best = cli.checkpoint.best_model_path or cli.checkpoint.last_model_path
            if best:
                from robust_ft.checkpoints import load_net_weights

                # Weights only, not trainer.test(ckpt_path=best): that restores the callbacks'
                # state of the best epoch too, and ModelCheckpoint would forget last.ckpt.
                load_net_weights(model.net, best)
            trainer.test(model, datamodule=dm, verbose=verbose)


def _check_tested(cli: RobustCLI, trainer) -> None:
    """A test that evaluated no image is an error, not a FINISHED run without results."""
    tested = any(k.startswith("test/err") for k in trainer.callback_metrics)
    wanted = cli.command == "test" or (cli.command == "fit" and cli.config.tracking.test_after_fit)
    if wanted and not tested and not trainer.fast_dev_run:
        raise ValueError(
            "the test evaluated no image: the test split is empty (check --data.test_subset "
            "and the dataset); the run is marked FAILED"
        )


def _log_outputs(cli: RobustCLI, trainer) -> None:
    """Log the best/last checkpoints and the network to the run (rank 0)."""
    from robust_ft.tracking import log_network

    tr = cli.config.tracking
    if cli.checkpoint is not None and tr.log_checkpoints:
        for path in {cli.checkpoint.best_model_path, cli.checkpoint.last_model_path}:
            if path and Path(path).exists():
                cli.run_logger.log_artifact(path, "checkpoints")
    if tr.log_model and not trainer.fast_dev_run:
        info = cli.datamodule.info
        log_network(cli.run_logger.run_id, cli.model.net, info.mean, info.std)
    errors = [k for k in trainer.callback_metrics if k.startswith("test/err/")]
    if errors:  # the experiment's saved UI view gains this run's error columns
        from robust_ft.ui import add_to_view

        add_to_view(cli.run_logger.experiment, cli.run_logger.experiment_id, errors)


def _print_summary(cli: RobustCLI, metrics: dict[str, float], run_id: str | None) -> None:
    """The test errors as a kind x level table, and the run they are in."""
    from robust_ft.formatting import test_table
    from robust_ft.tracking import default_tracking_uri, redact
    from robust_ft.ui import open_hint, view_fragment

    table = test_table(metrics)
    if not table:
        return
    print(f"\nTest error (%), {cli.config.model.arch} on {cli.datamodule.dataset_name}:")
    print(table)
    if run_id:
        uri = default_tracking_uri()
        page = view_fragment(cli.run_logger.experiment_id)
        print(
            f"MLflow run {run_id} in {redact(uri)}; its experiment in the UI: {open_hint(uri, page)}"
        )
