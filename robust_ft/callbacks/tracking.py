"""The logger and callbacks that write a run's tracking record: metrics, config, checkpoints."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

SUMMARY_PREFIXES = ("test/", "gradvar/")
"""Metrics measured once per run, after training: logged at step 0 so runs line up."""


class LogConfig(SaveConfigCallback):
    """Log the resolved config (flattened params + ``config.yaml``), the environment, the pipeline."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        import yaml

        from robust_ft.data.datamodules import DistortedDataModule
        from robust_ft.tracking import environment_params, flatten

        logger = trainer.logger
        if not isinstance(logger, RunLogger):
            return
        text = self.parser.dump(self.config, skip_unset=False)
        cfg = yaml.safe_load(text)
        cfg.pop("config", None)
        # Unset settings (None) are left out: a param column that reads "None" compares nothing
        # (the full config, unset values included, is the config.yaml artifact).
        params = {
            k: v for k, v in flatten(cfg).items() if not k.startswith("tracking.") and v is not None
        }
        dm = trainer.datamodule
        if isinstance(dm, DistortedDataModule) and dm.kind is not None:
            params["data.pipeline"] = json.dumps(dm.pipeline_dict(), sort_keys=True)
        logger.log_hyperparams({**params, **environment_params()})
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "config.yaml"
            p.write_text(text)
            logger.log_artifact(p)


class LogDatasetInputs(Callback):
    """Record what each stage reads as MLflow dataset inputs (the UI's Dataset column), rank 0.

    One input per split and distortion (``fashion_mnist/test/defocus/L2``), with the digest of
    the clean split's content, the split as the input's context, and the distortion as a tag.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        logger, dm = trainer.logger, trainer.datamodule
        if not (trainer.is_global_zero and isinstance(logger, RunLogger)) or dm is None:
            return
        inputs = [
            DatasetInput(
                Dataset(d["name"], d["digest"], "local", json.dumps({"uri": d["source"]})),
                tags=[
                    InputTag(MLFLOW_DATASET_CONTEXT, d["split"]),
                    InputTag("distortion", d["distortion"]),
                ],
            )
            for d in (dm.inputs(stage) if hasattr(dm, "inputs") else [])
        ]
        if inputs:
            log_inputs(logger.experiment, logger.run_id, inputs)


def log_inputs(client, run_id: str, inputs: list, attempts: int = 3) -> None:
    """``client.log_inputs``, again when another process added the same dataset meanwhile: the
    store looks a dataset up, then inserts it, so two workers logging one test set at once
    collide on its unique key; the next attempt finds the row the other one made."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return client.log_inputs(run_id, datasets=inputs)
        except MlflowException as e:
            race = any(w in str(e).lower() for w in ("unique", "duplicate"))
            if not race or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


class SaveOnInterrupt(Callback):
    """SIGINT/SIGTERM during training: save ``interrupted.ckpt`` next to the run's checkpoints."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            trainer.save_checkpoint(str(Path(self.dirpath) / "interrupted.ckpt"))


class MarkResumed(Callback):
    """Mark a resumed run RUNNING again, on rank 0 at ``setup``.

    Every DDP rank decides whether to resume by the run's FAILED/KILLED status; ranks > 0 start
    after rank 0 has set the run up, so the status must not change before all ranks have joined
    the process group (which ``setup`` follows), or they would start over.
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


class RunLogger(MLFlowLogger):
    """MLFlowLogger bound to a run that ``tracked_run`` owns: it logs, never ends the run.

    Lightning finalizes a logger after ``fit`` and again after ``test``; the run's status is
    decided once, by ``tracked_run``, when the whole command is over.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._logged_params: dict[str, str] = {}

    def log_hyperparams(self, params) -> None:
        """Log params once; a key logged again with the same value is skipped."""
        from robust_ft.tracking import flatten

        params = flatten(dict(params)) if isinstance(params, Mapping) else flatten(vars(params))
        fresh = {}
        for k, v in params.items():
            v = str(v)[:6000]
            if self._logged_params.get(k) != v:
                fresh[k] = v
        if fresh:
            from mlflow.entities import Param

            self.experiment.log_batch(self.run_id, params=[Param(k, v) for k, v in fresh.items()])
            self._logged_params.update(fresh)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Per-epoch metrics at their step; test results (one per run) at step 0; no ``epoch``.

        A metric with one value at step 0 in every run is what MLflow's chart view draws as a bar
        chart comparing runs; at each run's last training step it would be a scatter of points.
        The epoch is the x-axis of the per-epoch metrics already (their step), so not a metric.
        """
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        # float32 to 7 significant digits: 27.4 would read 27.3999996 in the UI's columns
        summary = {
            k: float(f"{float(v):.7g}")
            for k, v in metrics.items()
            if k.startswith(SUMMARY_PREFIXES)
        }
        series = {k: v for k, v in metrics.items() if k not in summary}
        if summary:
            super().log_metrics(summary, step=0)
        if series:
            super().log_metrics(series, step=step)

    def finalize(self, status: str = "success") -> None:
        """Nothing: ``tracked_run`` sets the final status."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.experiment.log_artifact(self.run_id, str(path), artifact_path)
