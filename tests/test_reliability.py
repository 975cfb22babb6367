"""Faults: SIGKILL then resume into the same run, SIGTERM -> KILLED, errors -> FAILED, determinism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF, synthetic_args
from mlflow.tracking import MlflowClient

TESTS = Path(__file__).resolve().parent


def _fit_cmd(epochs=5, extra=()):
    return [
        sys.executable, "-m", "robust_ft", "fit", "--config", str(CONF / "lenet5_mnist.yaml"),
        *synthetic_args(n_train=640, n_test=64, batch=32),
        "--trainer.max_epochs", str(epochs), "--trainer.deterministic", "true",
        "--trainer.enable_progress_bar", "false", "--model.lr", "0.02",
        "--tracking.log_model", "false",
        "--trainer.callbacks+=_slow.SlowBatches", "--trainer.callbacks.seconds", "0.03",
        *extra,
    ]  # fmt: skip


def _env(workdir):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}:{os.environ.get('PYTHONPATH', '')}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _runs(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lenet5-synthetic")
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def _start_and_wait_for_checkpoint(workdir, cmd, env):
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list((workdir / "outputs" / "checkpoints").glob("*/last.ckpt")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "run ended before it could be interrupted: " + proc.stderr.read().decode()[-2000:]
    )
    time.sleep(0.3)  # into the next epoch
    return proc


def test_sigkill_then_same_command_resumes_into_same_run(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir(), clean.mkdir()
    proc = _start_and_wait_for_checkpoint(killed, _fit_cmd(), _env(killed))
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, runs = _runs(killed)
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    run_id = runs[0].info.run_id

    r = subprocess.run(
        _fit_cmd(), cwd=killed, env=_env(killed), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming MLflow run {run_id}" in r.stderr
    client, runs = _runs(killed)
    assert [x.info.run_id for x in runs] == [run_id]  # the same run, no second one
    assert runs[0].info.status == "FINISHED"

    r = subprocess.run(
        _fit_cmd(), cwd=clean, env=_env(clean), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    client2, ref = _runs(clean)
    for key in ("test/err/clean/L0", "val/err"):
        assert runs[0].data.metrics[key] == pytest.approx(ref[0].data.metrics[key], abs=1e-9), key
    hist = [m.value for m in client.get_metric_history(run_id, "val/err")]
    ref_hist = [m.value for m in client2.get_metric_history(ref[0].info.run_id, "val/err")]
    assert hist[-len(ref_hist) :] == pytest.approx(ref_hist)  # epochs after the resume match too


def test_sigterm_marks_killed_and_saves_checkpoint(tmp_path):
    proc = _start_and_wait_for_checkpoint(tmp_path, _fit_cmd(epochs=50), _env(tmp_path))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    _, runs = _runs(tmp_path)
    assert runs[0].info.status == "KILLED"
    assert list((tmp_path / "outputs" / "checkpoints").glob("*/interrupted.ckpt"))


def test_exception_marks_failed_with_error_tag(workdir):
    from conftest import run_cli

    with pytest.raises(ValueError, match="first_n=0 trains nothing"):
        run_cli(
            [
                "fit",
                "--config",
                str(CONF / "lenet5_mnist.yaml"),
                *synthetic_args(),
                "--model.first_n",
                "0",
            ]
        )
    _, runs = _runs(workdir)
    assert runs[0].info.status == "FAILED"
    assert "first_n=0 trains nothing" in runs[0].data.tags["error"]


def test_dead_process_run_is_reaped(workdir):
    from robust_ft.tracking import reap_dead_runs

    client = MlflowClient()
    exp = client.create_experiment("reap-test")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    run = client.create_run(exp, tags={"host": os.uname().nodename, "pid": dead.stdout.strip()})
    alive = client.create_run(exp, tags={"host": os.uname().nodename, "pid": str(os.getpid())})
    assert reap_dead_runs("reap-test") == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


def test_same_seed_same_bytes_and_metrics(workdir):
    from conftest import run_cli

    from robust_ft.data.datamodules import Distortion, SyntheticDataModule

    def split(seed):
        dm = SyntheticDataModule(
            root=str(workdir / f"d{seed}"), distortion=Distortion("combined", 2), seed=seed
        )
        dm.prepare_data()
        dm.setup()
        return dm._data["train"][0].images.numpy()

    assert np.array_equal(split(3), split(3))
    assert not np.array_equal(split(3), split(4))
    args = ["fit", "--config", str(CONF / "lenet5_mnist.yaml"), *synthetic_args(), "--trainer.max_epochs", "2",
            "--trainer.deterministic", "true", "--tracking.log_model", "false", "--tracking.resume", "never",
            "--data.init_args.distortion.kind", "noise", "--data.init_args.distortion.level", "2"]  # fmt: skip
    a, b = run_cli(args), run_cli(args)
    assert a.run_id != b.run_id
    client = MlflowClient()
    ma, mb = (client.get_run(r.run_id).data.metrics for r in (a, b))
    for key in ("test/err/noise/L2", "val/err", "train/loss"):
        assert ma[key] == mb[key], key
