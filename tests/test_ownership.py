"""A run is written only by its owner; processes that start at once neither collide nor share.

Real processes on a real SQLite store: the store itself decides (a write-once claim param,
a file lock around creating a fresh store), no home-made lock file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONF, release_together, synthetic_args
from mlflow.tracking import MlflowClient

from robust_ft.tracking import tracked_run

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Each claimer says it has imported (a file each in the working directory) and waits for `go`
# (conftest.release_together), claims, and an owner holds the run until every other claimer has
# tried: at once under any load.
CLAIMER = """
import glob, os, sys, time
from pathlib import Path
from robust_ft.tracking import TrackingError, tracked_run
n, deadline = int(sys.argv[2]), time.time() + 120
Path(f"ready-{os.getpid()}").touch()
while not Path("go").exists():
    time.sleep(0.001)
try:
    with tracked_run("own", run_id=sys.argv[1], tags={"config_hash": "h" * 16}, mark_running=False):
        print("owned", flush=True)
        while len(glob.glob("tried-*")) < n - 1 and time.time() < deadline:
            time.sleep(0.05)
except TrackingError as e:
    print("refused:", e, flush=True)
finally:
    open(f"tried-{os.getpid()}", "w").close()
"""


def _env(uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = f"{REPO}:{TESTS}:{os.environ.get('PYTHONPATH', '')}"
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _at_once(
    cmds: list[list[str]], env, cwd, barrier: bool = False
) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side; with ``barrier``, release them together once all are
    ready (``conftest.release_together``)."""
    procs = [subprocess.Popen(c, env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]  # fmt: skip
    if barrier:
        release_together(procs, Path(cwd), "ready-*")
    outs = [p.communicate(timeout=600) for p in procs]
    return [
        subprocess.CompletedProcess(p.args, p.returncode, o, e)
        for p, (o, e) in zip(procs, outs, strict=True)
    ]


def test_of_processes_claiming_one_run_at_once_exactly_one_owns_it(workdir):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    with pytest.raises(KeyboardInterrupt), tracked_run("own", tags={"config_hash": "h" * 16}) as t:
        raise KeyboardInterrupt  # a killed run of config hhhh...
    cmds = [[sys.executable, "-c", CLAIMER, t.run_id, "3"] for _ in range(3)]
    results = _at_once(cmds, _env(uri), workdir, barrier=True)
    lines = [r.stdout.strip() for r in results]
    assert sum(x == "owned" for x in lines) == 1, [(r.stdout, r.stderr[-500:]) for r in results]
    refused = [x for x in lines if x != "owned"]
    assert all(x.startswith("refused:") for x in refused), refused
    assert all("taken by another process" in x or "being written by" in x for x in refused)
    run = MlflowClient(uri).get_run(t.run_id)
    claims = {k: v for k, v in run.data.params.items() if k.startswith("owner.")}
    assert len(claims) == 1 and run.info.status == "FINISHED"


def test_processes_starting_at_once_on_a_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = ("import sys, time; time.sleep(max(0, float(sys.argv[1]) - time.time()))\n"
            "from robust_ft.tracking import tracked_run\n"
            "with tracked_run('fresh'): pass")  # fmt: skip
    start = str(time.time() + 5)
    results = _at_once([[sys.executable, "-c", code, start] for _ in range(4)], _env(uri), tmp_path)
    assert [r.returncode for r in results] == [0] * 4, [r.stderr[-1500:] for r in results]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fresh").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4


def test_processes_opening_a_fresh_optuna_sqlite_storage_at_once(tmp_path):
    """Sweep workers and studies started at once on a new ``--storage``: without the store's
    file lock Optuna's table creation failed ("table studies already exists")."""
    code = ("import sys, time\n"
            "from robust_ft.tune.storage import make_storage\n"
            "for i in range(4):  # four fresh files, each opened by all at the same instant\n"
            "    time.sleep(max(0, float(sys.argv[1]) + i - time.time()))\n"
            "    make_storage(f'sqlite:///optuna{i}.db', 30)")  # fmt: skip
    start = str(time.time() + 8)  # after the imports
    results = _at_once([[sys.executable, "-c", code, start] for _ in range(3)], _env(""), tmp_path)
    assert [r.returncode for r in results] == [0] * 3, [r.stderr[-1500:] for r in results]


def _fit_cmd(epochs: int = 4) -> list[str]:
    return [
        sys.executable, "-m", "robust_ft", "fit", "--config", str(CONF / "lenet5_mnist.yaml"),
        *synthetic_args(n_train=320, n_test=32, batch=32),
        "--trainer.max_epochs", str(epochs), "--tracking.log_model", "false",
        "--trainer.callbacks+=_slow.SlowBatches", "--trainer.callbacks.seconds", "0.03",
    ]  # fmt: skip


@pytest.mark.slow  # a fit killed after its first checkpoint, then two re-runs: ~1-2 min
def test_two_reruns_of_a_killed_command_at_once_one_resumes_the_other_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _env(uri)
    proc = subprocess.Popen(_fit_cmd(), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not list((tmp_path / "outputs" / "checkpoints").glob("*/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, "the fit ended or never started"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    results = _at_once([_fit_cmd(), _fit_cmd()], env, tmp_path)
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [r.stderr[-2000:] for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert "error: " in loser.stderr and "Traceback" not in loser.stderr
    refusals = ("taken by another process", "being written by", "already running")
    assert any(r in loser.stderr for r in refusals), loser.stderr[-2000:]
    assert "resuming" not in loser.stderr
    winner = next(r for r in results if r.returncode == 0)
    assert "resuming MLflow run" in winner.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lenet5-synthetic").experiment_id])
    assert run.info.status == "FINISHED"
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val/err")]
    assert len(epochs) == len(set(epochs)) == 4  # every epoch logged once, none twice


def test_latest_takes_the_newest_finished_pretrain_with_a_checkpoint_and_says_so(workdir, caplog):
    """A newer FINISHED pre-train without a checkpoint (or one that failed) is passed over."""
    import logging

    from conftest import run_cli

    from robust_ft.tracking import resolve_checkpoint

    fit = ["fit", "--config", str(CONF / "lenet5_mnist.yaml"), *synthetic_args(n_train=64, n_test=32),
           "--trainer.max_epochs", "1", "--tracking.log_model", "false"]  # fmt: skip
    real = run_cli(fit)
    client = MlflowClient()
    exp = client.get_experiment_by_name("lenet5-synthetic").experiment_id
    tags = {"method": "pretrain", "model": "lenet5", "dataset": "synthetic"}
    for status in ("FINISHED", "FAILED"):  # newer, but no checkpoint / not finished
        client.set_terminated(client.create_run(exp, tags=tags).info.run_id, status)
    with caplog.at_level(logging.INFO, logger="robust_ft"):
        path, run_id = resolve_checkpoint(
            "latest", "lenet5-synthetic", workdir / "init", match={"model": "lenet5"}
        )
    assert run_id == real.run_id and path.name == "best.ckpt" and path.exists()
    lines = [r.getMessage() for r in caplog.records if r.name == "robust_ft"]
    assert any(f"init_from latest: pre-train run {real.run_id}" in x for x in lines), lines


LOGGER = """
import glob, os, sys, time
from mlflow.entities import Dataset, DatasetInput
from mlflow.tracking import MlflowClient
from robust_ft.callbacks.tracking import log_inputs
client, exp = MlflowClient(), sys.argv[1]
for r in range(int(sys.argv[2])):
    run = client.create_run(exp).info.run_id
    open(f"r{r}-{os.getpid()}", "w").close()
    while len(glob.glob(f"r{r}-*")) < 2:
        time.sleep(0.002)
    log_inputs(client, run, [DatasetInput(Dataset(f"set{r}", "d1g", "local", "{}"))])
print("logged", flush=True)
"""


def test_two_processes_logging_one_dataset_at_once_both_record_it(workdir):
    """The store looks a dataset up, then inserts it: two workers logging the same test set at
    the same moment collide on its unique key; both runs still record it, once."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    exp = client.create_experiment("inputs")
    results = _at_once([[sys.executable, "-c", LOGGER, exp, "15"] for _ in range(2)], _env(uri),
                       workdir)  # fmt: skip
    assert [r.stdout.strip() for r in results] == ["logged"] * 2, [
        r.stderr[-1500:] for r in results
    ]
    runs = client.search_runs([exp])
    assert len(runs) == 30
    assert all(len(r.inputs.dataset_inputs) == 1 for r in runs)


# One process fetches the checkpoint again and again (as each cell of a sweep does); the other
# loads the fetched file again and again until the fetcher is done.
FETCHER = """
import os, sys, time
from pathlib import Path
from robust_ft.checkpoints import read_state_dict
from robust_ft.tracking import resolve_checkpoint
run, role = sys.argv[1], sys.argv[2]
path, _ = resolve_checkpoint(run, "unused", "init")
Path(f"ready-{os.getpid()}").touch()
while not Path("go").exists():
    time.sleep(0.001)
loads = 0
if role == "fetch":
    for _ in range(30):
        resolve_checkpoint(run, "unused", "init")
    Path("fetched").touch()
while role == "load" and not Path("fetched").exists():
    assert len(read_state_dict(path)) == 8, path
    loads += 1
print(role, "done", loads > 0 or role == "fetch", flush=True)
"""


def test_a_checkpoint_fetched_again_is_never_read_half_written(workdir):
    """Cells of a sweep on several workers fetch the same pre-train checkpoint into one place
    (CI once loaded a half-written copy). While one process fetches it again and again, another
    loads the fetched file again and again: every load sees a whole checkpoint."""
    import torch

    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("fetch")).info.run_id
    ckpt = workdir / "best.ckpt"  # ~32 MB, so that a copy takes a while
    torch.save({"state_dict": {f"w{i}": torch.randn(1024, 1024) for i in range(8)}}, ckpt)
    client.log_artifact(run, str(ckpt), "checkpoints")
    cmds = [[sys.executable, "-c", FETCHER, run, role] for role in ("fetch", "load")]
    results = _at_once(cmds, _env(uri), workdir, barrier=True)
    assert [r.stdout.strip() for r in results] == ["fetch done True", "load done True"], [
        r.stderr[-1500:] for r in results
    ]
    fetched = [
        p.relative_to(workdir / "init") for p in (workdir / "init").rglob("*") if p.is_file()
    ]
    assert fetched == [Path(run, "best.ckpt")]  # the one file; no scratch copy is left behind
    from robust_ft.tracking import TrackingError, resolve_checkpoint

    with pytest.raises(TrackingError, match="is a directory, not a checkpoint file; name the file"):
        resolve_checkpoint(f"runs:/{run}/checkpoints", "unused", workdir / "init")
    assert len(list((workdir / "init").rglob("*"))) == 2  # still the run's folder and its file
