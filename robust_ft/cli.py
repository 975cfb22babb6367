"""Command line: LightningCLI (`fit|validate|test`) tracked in MLflow, plus robust-ft's own commands."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from robust_ft.data.datamodules import DistortedDataModule
from robust_ft.models.classifier import ImageClassifier, method_name

# robust-ft's own commands: name -> "module:function(argv)"; everything else goes to LightningCLI.
COMMANDS = {
    "demo": (
        "robust_ft.pipeline:demo_main",
        "the main job: pre-train, evaluate, fine-tune, re-train",
    ),
    "show-distortions": ("robust_ft.pipeline:show_distortions_main", "render the paper's Fig. 3/4"),
    "sweep": ("robust_ft.sweep:main", "the paper's grid as one resumable MLflow sweep"),
    "report": ("robust_ft.report:main", "Fig. 6/7/8 and Table 1 analogs from MLflow runs"),
    "tune": ("robust_ft.tune:main", "Optuna study of fine-tune learning rates"),
}
LIGHTNING_COMMANDS = {
    "fit": "train (then test) one run, e.g. fit --config conf/lenet5_mnist.yaml",
    "validate": "validation error of a model",
    "test": "test errors of a model on the test grid (no training: the paper's no-train)",
}


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


class InterruptToKilled(Callback):
    """SIGINT/SIGTERM: save ``interrupted.ckpt`` and end the MLflow run KILLED (not FAILED)."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        for logger in trainer.loggers:
            logger.interrupted = True
        trainer.save_checkpoint(str(Path(self.dirpath) / "interrupted.ckpt"))


class MarkResumed(Callback):
    """Mark a resumed run RUNNING again, on rank 0 at ``setup``.

    Every DDP rank decides in ``_find_resume`` whether to resume by the run's FAILED/KILLED
    status; ranks > 0 start after rank 0 has set the run up, so the status must not change before
    all ranks have joined the process group (which ``setup`` follows), or they would start over.
    """

    def __init__(self, run_id: str, ckpt: str | None):
        self.run_id, self.ckpt, self.done = run_id, ckpt, False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.done or not trainer.is_global_zero:
            return
        client = trainer.logger.experiment
        client.update_run(self.run_id, status="RUNNING")
        client.set_tag(self.run_id, "resumed_from", self.ckpt)
        self.done = True


class MlflowConfig(SaveConfigCallback):
    """Logs the resolved config (flattened params + ``config.yaml``), environment and tags."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        import yaml

        from robust_ft.tracking import RunLogger, environment_params, flatten

        logger = trainer.logger
        if not isinstance(logger, RunLogger):
            return
        text = self.parser.dump(self.config, skip_none=False)
        cfg = yaml.safe_load(text)
        cfg.pop("config", None)
        params = {k: v for k, v in flatten(cfg).items() if not k.startswith("tracking.")}
        dm = trainer.datamodule
        if isinstance(dm, DistortedDataModule) and dm.kind is not None:
            params["data.pipeline"] = json.dumps(dm.pipeline_dict(), sort_keys=True)
        logger.log_hyperparams({**params, **environment_params()})
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "config.yaml"
            p.write_text(text)
            logger.log_artifact(p)


class RobustCLI(LightningCLI):
    """LightningCLI for robust-ft: one MLflow run per invocation, test after fit, artifacts."""

    def __init__(self, *args, extra_callbacks: list | None = None, summary: bool = False, **kwargs):
        """``extra_callbacks`` are added to the trainer's (e.g. Optuna's pruning callback).

        ``summary``: after testing, print the errors as one kind x level table (and where the run
        is) instead of Lightning's table of one column per test set; the console command sets it.
        """
        self.extra_callbacks = list(extra_callbacks or [])
        self.summary = summary
        kwargs.setdefault("model_class", ImageClassifier)
        kwargs.setdefault("datamodule_class", DistortedDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", MlflowConfig)
        kwargs.setdefault("save_config_kwargs", {"save_to_log_dir": False})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        self.run_logger = None
        try:
            super().__init__(*args, **kwargs)
        except BaseException as e:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            # No run is left RUNNING: an interrupt marks it KILLED, any other error FAILED.
            interrupted = isinstance(e, (KeyboardInterrupt, SIGTERMException))
            if self.run_logger is not None and self.run_logger._initialized:
                status = "KILLED" if interrupted or self.run_logger.interrupted else "FAILED"
                self.run_logger.close(status, error=f"{type(e).__name__}: {e}")
            if isinstance(e, SIGTERMException):
                raise SystemExit(128 + 15) from e  # Lightning's SIGTERMException exits 0
            raise

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(Tracking, "tracking")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("seed_everything", "data.init_args.seed")

    # ----------------------------------------------------------------- before instantiation
    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Resolve ``model.init_from`` (run id, runs:/, latest) to a local checkpoint file."""
        from robust_ft.tracking import (
            check_reachable,
            default_tracking_uri,
            reap_dead_runs,
            resolve_checkpoint,
        )

        cfg = self._cfg()
        check_reachable(default_tracking_uri())
        reap_dead_runs(self.experiment_name())
        self.config_hash = self._config_hash(cfg)
        self.resume_run_id, self.resume_ckpt = self._find_resume(cfg)
        ref = cfg.model.init_from
        self.init_run_id = None
        if ref:
            path, self.init_run_id = resolve_checkpoint(ref, self.experiment_name())
            cfg.model.init_from = str(path)
        ft = cfg.model.finetune
        first_n = cfg.model.first_n
        if ft is not None and ft.max_epochs and first_n and self.subcommand == "fit":
            from robust_ft.models import n_param_layers

            n = n_param_layers(cfg.model.arch)
            if first_n < n or ref:
                cfg.trainer.max_epochs = ft.max_epochs

    def _config_hash(self, cfg) -> str:
        """A digest of the resolved config minus tracking options: "the same command"."""
        import hashlib

        import yaml

        d = yaml.safe_load(
            self._parser(self.subcommand).dump(cfg, skip_none=False, skip_validation=True)
        )
        for key in ("tracking", "ckpt_path", "config", "weights_only"):
            d.pop(key, None)
        d["subcommand"] = self.subcommand
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _find_resume(self, cfg) -> tuple[str | None, str | None]:
        """(run id, last checkpoint) of the run this fit continues, or (None, None)."""
        from robust_ft.tracking import TrackingError, find_runs

        mode = cfg.tracking.resume
        if self.subcommand != "fit" or mode == "never" or cfg.get("ckpt_path"):
            return None, None
        if mode == "auto":
            runs = find_runs(self.experiment_name(), f"tags.config_hash = '{self.config_hash}'")
            if not runs or runs[0].info.status not in ("FAILED", "KILLED"):
                return None, None
            run_id = runs[0].info.run_id
        else:
            run_id = mode
        ckpt = Path(cfg.tracking.checkpoint_dir) / run_id / "last.ckpt"
        if not ckpt.exists():
            if mode == "auto":
                return None, None
            raise TrackingError(
                f"cannot resume run {run_id}: no checkpoint {ckpt}; resume from the machine and "
                "directory that ran it, or pass --tracking.checkpoint_dir"
            )
        print(f"resuming MLflow run {run_id} from {ckpt}", file=sys.stderr)
        return run_id, str(ckpt)

    def fit(self, model, **kwargs) -> None:
        """``trainer.fit`` from the resume checkpoint, loaded with ``weights_only=True``."""
        kwargs["ckpt_path"] = kwargs.get("ckpt_path") or self.resume_ckpt
        kwargs["weights_only"] = True
        self.trainer.fit(model, **kwargs)

    def experiment_name(self) -> str:
        cfg = self._cfg()
        if cfg.tracking.experiment:
            return cfg.tracking.experiment
        data_cls = _import(cfg.data.class_path)
        return f"{cfg.model.arch}-{data_cls.dataset_name}"

    # ----------------------------------------------------------------- trainer with tracking
    def instantiate_trainer(self, **kwargs: Any):
        from robust_ft.tracking import RunLogger, default_tracking_uri, process_tags

        cfg = self._cfg()
        tr: Tracking = cfg.tracking
        dm: DistortedDataModule = self.datamodule
        model: ImageClassifier = self.model
        if tuple(model.net.input_shape) != tuple(dm.image_shape):
            raise ValueError(
                f"{cfg.model.arch} expects images of shape {tuple(model.net.input_shape)} (C,H,W) "
                f"but {dm.dataset_name} gives {tuple(dm.image_shape)}; pick a matching "
                "model and dataset config (see conf/)"
            )
        if self.subcommand == "fit":
            method = tr.method or method_name(
                cfg.model.first_n, model.n_layers, dm.kind is None, cfg.model.init_from
            )
        else:
            method = tr.method or "notrain"
        level = dm.distortion.level if dm.kind else 0
        tags = {
            "method": method,
            "distortion": dm.kind or "clean",
            "level": str(level),
            "first_n": str(cfg.model.first_n if cfg.model.first_n is not None else model.n_layers),
            "model": cfg.model.arch,
            "dataset": dm.dataset_name,
            "seed": str(cfg.seed_everything),
            "stage": self.subcommand,
            **(tr.tags or {}),
        }
        if self.init_run_id:
            tags["init_from_run"] = self.init_run_id
        tags.update(process_tags(), config_hash=self.config_hash)
        run_id = tr.run_id or self.resume_run_id
        if run_id is None and not tr.parent_run_id:
            run_id = os.environ.get("MLFLOW_RUN_ID")
        self.run_logger = RunLogger(
            experiment_name=self.experiment_name(),
            run_name=tr.run_name or f"{method}-{tags['distortion']}-L{level}",
            tracking_uri=default_tracking_uri(),
            tags=tags,
            run_id=run_id,
            parent_run_id=tr.parent_run_id,
        )
        if run_id:  # an existing run (mlflow run, resume) gets the tags too
            client = self.run_logger.experiment
            for k, v in tags.items():
                client.set_tag(run_id, k, v)
        callbacks = []
        if self.resume_run_id:  # back to RUNNING only once every DDP rank has decided to resume
            callbacks.append(MarkResumed(self.resume_run_id, self.resume_ckpt))
        if self.subcommand == "fit":
            monitor = "val/err" if dm.val_split else None
            # Only global rank 0 creates the MLflow run (DDP): other ranks get a placeholder here
            # that ModelCheckpoint.setup replaces with rank 0's directory (a broadcast).
            run_dir = run_id or (self.run_logger.run_id if launch_rank_zero() else "rank0")
            self.checkpoint = ModelCheckpoint(
                dirpath=str(Path(tr.checkpoint_dir) / run_dir),
                filename="best",
                monitor=monitor,
                mode="min",
                save_last=True,
            )
            callbacks += [self.checkpoint, InterruptToKilled(self.checkpoint.dirpath)]
        from robust_ft.callbacks.confusion import ConfusionMatrixCallback
        from robust_ft.callbacks.grad_stats import GradientVarianceCallback

        callbacks += [GradientVarianceCallback(), ConfusionMatrixCallback()]
        extra = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        kwargs["callbacks"] = list(extra) + callbacks + self.extra_callbacks
        kwargs["logger"] = self.run_logger
        return super().instantiate_trainer(**kwargs)

    # ----------------------------------------------------------------- after the subcommand
    def after_fit(self) -> None:
        cfg = self._cfg()
        trainer = self.trainer
        if trainer.interrupted:
            return
        if cfg.tracking.test_after_fit and not trainer.fast_dev_run:
            best = self.checkpoint.best_model_path or self.checkpoint.last_model_path
            if best:
                from robust_ft.checkpoints import load_net_weights

                load_net_weights(self.model.net, best)
            trainer.test(self.model, datamodule=self.datamodule, verbose=not self.summary)
            self._print_summary()
        elif trainer.fast_dev_run:
            trainer.test(self.model, datamodule=self.datamodule, verbose=not self.summary)
            self._print_summary()
        self._finish(log_checkpoints=cfg.tracking.log_checkpoints)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand == "test" and self.summary:
            kwargs["verbose"] = False  # _print_summary shows the same numbers as one grid
        return kwargs

    def after_test(self) -> None:
        self._print_summary()
        self._finish()

    def _print_summary(self) -> None:
        """The test errors as a kind x level table, and the run they are in (rank 0)."""
        if not self.summary or not self.trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        table = test_table(metrics)
        if not table:
            return
        print(f"\nTest error (%), {self.model.hparams.arch} on {self.datamodule.dataset_name}:")
        print(table)
        if self.run_logger is not None and self.run_logger.run_id:
            from robust_ft.tracking import default_tracking_uri, redact, ui_command

            uri = default_tracking_uri()
            run_id = self.run_logger.run_id
            print(f"MLflow run {run_id} in {redact(uri)}; open the UI: {ui_command(uri)}")

    def after_validate(self) -> None:
        self._finish()

    def _finish(self, log_checkpoints: bool = False) -> None:
        """Log checkpoints and the model, then mark the run FINISHED (rank 0)."""
        if self.run_logger is None or not self.trainer.is_global_zero:
            return
        logger = self.run_logger
        if log_checkpoints:
            for path in {self.checkpoint.best_model_path, self.checkpoint.last_model_path}:
                if path and Path(path).exists():
                    logger.log_artifact(path, "checkpoints")
        if self._cfg().tracking.log_model and not self.trainer.fast_dev_run:
            log_network(logger, self.model.net)
        logger.close("FINISHED")


def test_table(metrics: dict[str, float]) -> str:
    """``test/err/<kind>/<Lx>`` (and ``test/err5/...``) as a markdown table: kinds x levels.

    Cells are the top-1 error, with the top-5 error in parentheses where it was measured.
    """
    grid: dict[str, dict[str, str]] = {}
    levels: list[str] = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 4 or parts[:2] != ["test", "err"]:
            continue
        kind, level = parts[2], parts[3]
        top5 = metrics.get(f"test/err5/{kind}/{level}")
        grid.setdefault(kind, {})[level] = f"{value:.2f}" + (
            "" if top5 is None else f" ({top5:.2f})"
        )
        if level not in levels:
            levels.append(level)
    if not grid:
        return ""
    kinds = sorted(grid, key=lambda k: (k != "clean", list(grid).index(k)))
    levels.sort(key=_level_order)
    lines = ["| test set | " + " | ".join(levels) + " |", "|---|" + "---:|" * len(levels)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(grid[kind].get(lv, "") for lv in levels) + " |")
    return "\n".join(lines)


def _level_order(tag: str) -> tuple[float, str]:
    """``L2`` < ``L2.5`` < ``L10`` < anything else (``U(0,4)``), by name."""
    try:
        return float(tag[1:]), tag
    except ValueError:
        return float("inf"), tag


def launch_rank_zero() -> bool:
    """Whether this process becomes DDP global rank 0, known before the Trainer sets DDP up.

    Ranks > 0 started by Lightning's launcher, torchrun or SLURM carry LOCAL_RANK / RANK /
    SLURM_PROCID (read by ``rank_zero_only`` at import); the main process of another node carries
    NODE_RANK (or torchrun's GROUP_RANK) > 0. Only rank 0 may create the MLflow run.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return getattr(rank_zero_only, "rank", 0) == 0 and int(node) == 0


def log_network(logger, net) -> None:
    """Log the network with MLflow's PyTorch flavour (explicit requirements: no slow inference)."""
    import mlflow
    import torch

    example = torch.zeros(1, *net.input_shape).numpy()
    with _active(logger):
        mlflow.pytorch.log_model(
            net.cpu().eval(),
            name="model",
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )


class _active:
    """Make the logger's run the active MLflow run for fluent-API calls, then restore."""

    def __init__(self, logger):
        self.logger = logger

    def __enter__(self):
        import mlflow

        mlflow.set_tracking_uri(self.logger._tracking_uri)
        self._prev = mlflow.active_run()
        if self._prev is not None and self._prev.info.run_id == self.logger.run_id:
            self._own = False
            return self._prev
        self._own = True
        mlflow.start_run(run_id=self.logger.run_id, nested=self._prev is not None)
        return mlflow.active_run()

    def __exit__(self, *exc):
        import mlflow

        from robust_ft.tracking import client

        if self._own:
            # end_run would mark the run FINISHED; keep its status as the logger decides.
            status = client(self.logger._tracking_uri).get_run(self.logger.run_id).info.status
            mlflow.end_run(status)
        return False


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------- entry points
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from robust_ft.tracking import TrackingError

    return (*USER_ERRORS, TrackingError)


@dataclass
class RunResult:
    """What one tracked run produced."""

    run_id: str | None
    metrics: dict[str, float]


def run_cli(args: list[str], extra_callbacks: list | None = None) -> RunResult:
    """Run one LightningCLI invocation in-process and return its run id and final metrics."""
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both are given
    try:
        cli = RobustCLI(args=args, extra_callbacks=extra_callbacks)
    finally:
        sys.argv = argv
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    run_id = cli.run_logger.run_id if cli.run_logger is not None else None
    return RunResult(run_id, metrics)


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


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``robust-ft``."""
    argv = expand_args(sys.argv[1:] if argv is None else list(argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    try:
        if argv[0] in COMMANDS:
            fn = _import(COMMANDS[argv[0]][0].replace(":", "."))
            fn(argv[1:])
        elif argv[0] in LIGHTNING_COMMANDS:
            # LightningCLI reads args=; sys.argv must still hold them: Lightning's DDP launcher
            # starts ranks 1.. by re-running `sys.executable sys.argv`.
            sys.argv = [sys.argv[0], *argv]
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            RobustCLI(args=argv, summary=True)
        else:
            print(f"error: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
            sys.exit(2)
    except _user_errors() as e:
        if os.environ.get("ROBUST_FT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
