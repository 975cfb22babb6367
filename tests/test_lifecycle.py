"""The programmatic core: ``runner.run`` and the one run lifecycle, ``tracking.tracked_run``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONF, SYNTH, store_client
from mlflow.tracking import MlflowClient

from robust_ft.overrides import nested, user_keys
from robust_ft.runner import parse, run
from robust_ft.tracking import TrackingError, tracked_run

TESTS = Path(__file__).resolve().parent
SYNTHETIC = {
    "class_path": SYNTH,
    "init_args": {"image_shape": [1, 28, 28], "n_train": 128, "n_test": 64, "batch_size": 32},
}


# ----------------------------------------------------------------- tracked_run statuses
def test_tracked_run_finished_failed_killed(workdir):
    client = MlflowClient()
    with tracked_run("life", run_name="ok", tags={"method": "x"}, params={"a": 1}) as ok:
        pass
    run = client.get_run(ok.run_id)
    assert (run.info.status, run.info.run_name, run.data.params["a"]) == ("FINISHED", "ok", "1")
    assert run.data.tags["pid"] == str(os.getpid()) and run.data.tags["method"] == "x"

    with pytest.raises(RuntimeError, match="boom"), tracked_run("life") as bad:
        raise RuntimeError("boom")
    run = client.get_run(bad.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"

    with pytest.raises(KeyboardInterrupt), tracked_run("life") as stopped:
        raise KeyboardInterrupt
    assert client.get_run(stopped.run_id).info.status == "KILLED"

    # the same run finishing later (a resume) clears the stale error tag
    with tracked_run("life", run_id=bad.run_id):
        pass
    run = client.get_run(bad.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags


def test_parent_ends_with_the_status_of_what_stopped_it(workdir):
    client = MlflowClient()

    def stop(parent):
        with tracked_run("life", parent_run_id=parent.run_id) as child:
            children.append(child)
            raise ValueError("bad cell")

    children = []
    with pytest.raises(ValueError), tracked_run("life", run_name="parent") as parent:
        stop(parent)
    child = children[0]
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    for rid in (parent.run_id, child.run_id):
        run = client.get_run(rid)
        assert run.info.status == "FAILED" and "bad cell" in run.data.tags["error"]


def test_adopting_mlflow_run_id_and_refusing_a_live_owner(workdir, monkeypatch):
    client = MlflowClient()
    exp = client.create_experiment("under-mlflow-run")
    outer = client.create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    with tracked_run("lenet5-whatever", run_name="pretrain-clean-L0") as t:
        assert t.run_id == outer and t.experiment == "under-mlflow-run"
    run = client.get_run(outer)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain-clean-L0"
    # a RUNNING run written by another live process of this host is not adopted
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = client.create_run(exp, tags={"host": os.uname().nodename, "pid": str(sleeper.pid)})
        adopt = tracked_run("x", run_id=busy.info.run_id)
        with pytest.raises(TrackingError, match="being written by process"), adopt:
            pass
        assert client.get_run(busy.info.run_id).info.status == "RUNNING"  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(TrackingError, match="does not exist"), tracked_run("x", run_id="0" * 32):
        pass


SLEEPER = """
import sys, time
from robust_ft.tracking import tracked_run
with tracked_run("life", run_name="sleeper") as t:
    print(t.run_id, flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_before_training_marks_killed(workdir, sig):
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run_id = proc.stdout.readline().strip()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert MlflowClient().get_run(run_id).info.status == "KILLED"


# ----------------------------------------------------------------- run()
def test_run_returns_what_it_made_and_takes_overrides_as_data(workdir):
    res = run(
        "fit",
        {"data": SYNTHETIC, "trainer.max_epochs": 1, "model": {"lr": 0.05}},
        configs=[CONF / "lenet5_mnist.yaml"],
        argv=["--tracking.log_model", "false"],
    )
    assert res.status == "FINISHED" and res.experiment == "lenet5-synthetic"
    assert set(res.test_errors) == {"test/err/clean/L0"}
    assert Path(res.checkpoints["best"]).is_file() and Path(res.checkpoints["last"]).is_file()
    run_ = MlflowClient().get_run(res.run_id)
    assert run_.info.status == "FINISHED" and float(run_.data.params["model.lr"]) == 0.05
    assert run_.data.metrics["test/err/clean/L0"] == pytest.approx(
        res.test_errors["test/err/clean/L0"]
    )


def test_overrides_dotted_or_nested_and_the_users_flags_win(workdir):
    dotted = {"model.lr": 0.5, "data.init_args.train_subset": 7, "trainer.max_epochs": 3}
    tree = {
        "model": {"lr": 0.5},
        "data": {"init_args": {"train_subset": 7}},
        "trainer": {"max_epochs": 3},
    }
    assert nested(dotted) == tree
    configs = [CONF / "lenet5_mnist.yaml"]
    a, b = parse("fit", dotted, configs=configs), parse("fit", tree, configs=configs)
    assert a.config == b.config and a.config.model.lr == 0.5
    assert a.config.model.finetune.lr == 1e-5  # from the config file
    user = parse(
        "fit",
        dotted,
        configs=configs,
        argv=["--model.lr", "0.01", "--config", str(CONF / "demo.yaml")],
    )
    assert user.config.model.lr == 0.01  # the user's flag, not the override
    assert user.config.trainer.max_epochs == 3  # demo.yaml sets it: the user's file wins
    assert user.config.data.init_args.train_subset == 7  # what the user did not set stays
    keys = user_keys(["--config", str(CONF / "demo.yaml"), "--model.lr=1"])
    assert {"model.lr", "trainer.max_epochs", "model.finetune.lr"} <= set(keys)
    assert keys["model.lr"] == "--model.lr=1" and keys["trainer.max_epochs"].startswith("--config")


def test_run_refuses_an_unknown_command_and_a_bad_key(workdir):
    with pytest.raises(ValueError, match="unknown command 'train'"):
        run("train")
    with pytest.raises(SystemExit):  # jsonargparse names the key and exits 2, as on the console
        parse("fit", {"model.no_such_option": 1}, configs=[CONF / "lenet5_mnist.yaml"])
    assert MlflowClient().search_experiments(filter_string="name != 'Default'") == []


# ----------------------------------------------------------------- a signal inside a sweep cell
def test_sigint_inside_a_sweep_cell_marks_cell_and_parent_killed(workdir):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}:{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable, "-m", "robust_ft", "sweep", "--synthetic", "--synthetic-size", "640,64",
        "--kinds", "defocus", "--levels", "2", "--first-n", "1", "--budget", "demo",
        "--name", "stopped", "--extra", "--trainer.max_epochs", "20",
        "--trainer.callbacks+=_slow.SlowBatches", "--trainer.callbacks.seconds", "0.05",
    ]  # fmt: skip
    _interrupt_mid_run_and_check_killed(cmd, env, "tags.cell != ''")


# ----------------------------------------------------------------- a signal inside a tune trial
@pytest.mark.slow
def test_sigint_inside_a_tune_trial_marks_trial_and_study_parent_killed(workdir):
    from conftest import run_cli, synthetic_yaml

    synth = workdir / "synth.yaml"
    synth.write_text(synthetic_yaml(cache=False).replace("n_train: 256", "n_train: 640"))
    run_cli(["fit", "--config", str(CONF / "lenet5_mnist.yaml"), "--config", str(synth),
             "--trainer.max_epochs", "1", "--tracking.log_model", "false"])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{TESTS}:{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable, "-m", "robust_ft", "tune", "--model", "lenet5", "--dataset", "mnist",
        "--kind", "defocus", "--level", "1", "--config", str(synth), "--n-trials", "3",
        "--trial-epochs", "20", "--pruner", "none",
        "--extra", "--trainer.callbacks+=_slow.SlowBatches", "--trainer.callbacks.seconds", "0.05",
    ]  # fmt: skip
    _interrupt_mid_run_and_check_killed(cmd, env, "tags.`optuna.trial` != ''")


def _interrupt_mid_run_and_check_killed(cmd: list[str], env: dict, runs_filter: str) -> None:
    """Start ``cmd``, Ctrl-C it while a nested run trains: that run and its parent end KILLED."""
    client = store_client()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, child = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None and child is None:
        exp = client.get_experiment_by_name("lenet5-synthetic")
        runs = client.search_runs([exp.experiment_id], runs_filter) if exp else []
        training = (r for r in runs if r.info.status == "RUNNING" and "val/err" in r.data.metrics)
        child = next(training, None)
        time.sleep(0.2)
    assert child is not None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert client.get_run(child.info.run_id).info.status == "KILLED"
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
