"""The sweep: cells, budgets and keys; a tiny grid end to end; kill and resume; its report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import release_together, store_client
from mlflow.tracking import MlflowClient

from robust_ft import sweep, sweep_parent
from robust_ft.overrides import nested
from robust_ft.sweep import BUDGETS, PRESETS, Cell, cell_run, cells_of, parse_args, schedule

# A tiny grid on synthetic data: pretrain, first-1/clean, and per kind notrain, first-1, retrain.
TINY = [
    "--synthetic", "--synthetic-size", "128,64", "--kinds", "defocus,noise", "--levels", "0,2",
    "--first-n", "1", "--budget", "demo", "--name", "tiny",
]  # fmt: skip
TINY_CELLS = {
    "pretrain/clean/L0", "first-1/clean/L0",
    *(f"{m}/{k}/L2" for m in ("notrain", "first-1", "retrain") for k in ("defocus", "noise")),
}  # fmt: skip


def _cell_suffix(key: str) -> str:
    return key.split("/", 3)[3]


def _children(client: MlflowClient, experiment: str = "lenet5-synthetic") -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("sweep_role") != "parent"]


# ----------------------------------------------------------------- grid, budgets, keys
def test_paper_grid_cells():
    cells = cells_of(PRESETS["fashion_mnist"], seed=0)
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys)) == 1 + 16 + 4 + 64 + 16
    assert cells[0].method == "pretrain"
    level0 = [c for c in cells if c.level == "0"]  # shared across kinds
    assert {c.method for c in level0} == {"pretrain", "first-1", "first-2", "first-3", "first-4"}
    assert all(c.kind == "clean" for c in level0)
    table1 = cells_of(PRESETS["imagenet"], seed=0)  # no pre-train: the published weights
    assert [c.key for c in table1] == [
        "alexnet/imagenet/s0/notrain/combined/LU0-4",
        "alexnet/imagenet/s0/first-3/combined/LU0-4",
    ]


def test_sweep_key_normalises_arguments():
    a, _ = parse_args([*TINY])
    b, _ = parse_args([*TINY[:3], "--kinds", "noise,defocus", "--levels", "2,0.0", *TINY[7:]])
    c, _ = parse_args([*TINY[:-2], "--name", "other"])
    d, _ = parse_args([*TINY[:9], "--budget", "quick"])
    assert a.key == b.key == c.key != d.key
    assert len(a.cells()) == len(TINY_CELLS)
    assert {_cell_suffix(x.key) for x in a.cells()} == TINY_CELLS


def test_levels_and_presets_from_the_command_line():
    sw, _ = parse_args(["--preset", "imagenet", "--dry-run"])
    assert sw.grid.levels == ("U(0,4)",) and sw.grid.first_n == (3,) and not sw.grid.retrain
    sw, _ = parse_args(["--level-step", "0.5"])
    assert sw.grid.levels == tuple(f"{x / 2:g}" for x in range(9))
    with pytest.raises(ValueError, match="unknown distortion"):
        parse_args(["--kinds", "blur"])
    with pytest.raises(ValueError, match="first-n"):
        parse_args(["--first-n", "5"])


def test_budgets_scale_the_config_schedules():
    lenet = parse_args(["--preset", "mnist"])[0].cfg
    paper, demo = BUDGETS["paper"], BUDGETS["demo"]
    assert {"lr": 1e-3, "max_epochs": 20}.items() <= schedule(lenet, paper, False).items()
    assert {"lr": 1e-5, "max_epochs": 15}.items() <= schedule(lenet, paper, True).items()
    assert schedule(lenet, demo, False)["max_epochs"] == 2
    assert schedule(lenet, demo, False)["lr"] == pytest.approx(1e-2)  # as conf/demo.yaml
    assert schedule(lenet, demo, True)["lr"] == pytest.approx(1e-3)
    cifar = parse_args(["--preset", "cifar10"])[0].cfg
    main = schedule(cifar, BUDGETS["quick"], False)
    assert (main["max_epochs"], main["lr_milestones"], main["lr"]) == (11, [8, 10], 5e-2)
    ft = schedule(cifar, BUDGETS["quick"], True)
    assert (ft["max_epochs"], ft["lr_milestones"]) == (8, [6])
    assert ft["lr"] == pytest.approx(5e-3)


def test_first_n_of_every_layer_is_a_finetune_not_a_retrain():
    sw, _ = parse_args(["--preset", "mnist"])
    spec = cell_run(sw, Cell(sw.grid, 0, "first-4", "defocus", "2"), "p" * 32, "r" * 32)
    o = nested(spec.overrides)
    assert spec.command == "fit"
    assert o["trainer"]["max_epochs"] == 15 and o["model"]["lr"] == 1e-5
    assert o["tracking"]["method"] == "first-4" and o["model"]["init_from"] == "r" * 32
    assert o["data"]["init_args"]["test_kinds"] == ["clean", "defocus"]
    notrain = cell_run(sw, Cell(sw.grid, 0, "notrain", "noise", "3"), "p" * 32, "r" * 32)
    assert notrain.command == "test"
    assert "distortion" not in nested(notrain.overrides)["data"]["init_args"]


# ----------------------------------------------------------------- a tiny sweep end to end
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny sweep, run once in-process into its own SQLite store."""
    tmp = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        start = time.time()
        plan = sweep.main([*TINY, "--report", str(tmp / "report")])
        yield {"plan": plan, "tmp": tmp, "client": MlflowClient(), "seconds": time.time() - start}


def test_dry_run_lists_cells_and_estimate(workdir, capsys):
    plan = sweep.main([*TINY, "--dry-run"])
    out = capsys.readouterr().out
    assert plan.parent is None and len(plan.todo) == len(TINY_CELLS)
    assert sum(line.strip().startswith("run ") for line in out.splitlines()) == len(TINY_CELLS)
    assert "8 cells to run, 0 finished; estimate" in out
    assert _children(MlflowClient()) == []  # a dry run changes nothing


def test_sweep_runs_every_cell_once_nested_and_tagged(swept):
    client, parent = swept["client"], swept["plan"].parent
    runs = _children(client)
    assert Counter(_cell_suffix(r.data.tags["cell"]) for r in runs) == Counter(TINY_CELLS)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in runs)
    by_cell = {_cell_suffix(r.data.tags["cell"]): r for r in runs}
    ft = by_cell["first-1/defocus/L2"]
    assert (ft.data.tags["method"], ft.data.tags["distortion"], ft.data.tags["level"]) == (
        "first-1",
        "defocus",
        "L2",
    )  # fmt: skip  (the level as in the metric keys and the run name)
    assert ft.info.run_name == "first-1-defocus-L2-s0"
    assert ft.data.tags["first_n"] == "1"
    assert by_cell["pretrain/clean/L0"].data.tags["first_n"] == "all"
    assert by_cell["retrain/noise/L2"].data.tags["first_n"] == "all"
    assert ft.data.tags["init_from_run"] == by_cell["pretrain/clean/L0"].info.run_id
    assert {"test/err/clean/L0", "test/err/defocus/L2", "gradvar/conv2/defocus/L2"} <= set(
        ft.data.metrics
    )
    assert by_cell["notrain/noise/L2"].data.tags["first_n"] == "0"
    p = client.get_run(parent)
    assert p.info.status == "FINISHED" and p.data.tags["sweep"] == "tiny"
    assert p.data.tags["sweep_key"] == parse_args(TINY)[0].key
    exp = client.get_experiment(p.info.experiment_id)
    assert f"mlflow.sharedViewState.{p.data.tags['sweep_key']}" in exp.tags
    print(f"tiny sweep: {len(runs)} cells in {swept['seconds']:.0f} s")


def test_restart_repeats_nothing(swept, monkeypatch, capsys):
    monkeypatch.chdir(swept["tmp"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{swept['tmp'] / 'mlflow.db'}")
    before = {r.info.run_id for r in _children(swept["client"])}
    again = sweep.main(TINY)
    assert again.parent == swept["plan"].parent
    assert {r.info.run_id for r in _children(swept["client"])} == before
    sweep.main([*TINY, "--dry-run"])
    out = capsys.readouterr().out
    assert out.count("  skip   ") == len(TINY_CELLS) and "0 cells to run" in out


def test_report_of_the_sweep_has_every_figure(swept):
    out = swept["tmp"] / "report"
    html = (out / "index.html").read_text()
    for png in ("error_lenet5_synthetic.png", "gradvar_lenet5_synthetic_conv2.png"):
        assert (out / png).stat().st_size > 1000
        assert f"src='{png}'" in html
    import pandas as pd

    errors = pd.read_csv(out / "errors.csv")  # 3 methods x 2 kinds x levels 0, 2; retrain no 0
    assert len(errors) == 10 and set(errors.method) == {"notrain", "first-1", "retrain"}
    assert len(pd.read_csv(out / "table1.csv")) == 4  # first-1, retrain x 2 kinds (top-1 only)
    assert set(pd.read_csv(out / "mce.csv").method) == {"notrain", "first-1", "retrain"}
    logged = {a.path for a in swept["client"].list_artifacts(swept["plan"].parent, "report")}
    assert "report/index.html" in logged and "report/error_lenet5_synthetic.png" in logged


# ----------------------------------------------------------------- kill and resume
def _mid_cell(client) -> bool:
    try:
        status = Counter(r.info.status for r in _children(client))
    except Exception:  # noqa: BLE001 - a frozen writer may hold the SQLite lock: look again
        return False
    return status["FINISHED"] >= 2 and status["RUNNING"] >= 1


@pytest.mark.slow
def test_killed_sweep_resumes_without_repeating_or_dropping_cells(workdir):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    client = store_client(uri)
    log = open(workdir / "sweep.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "robust_ft", "sweep", *TINY],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 900
    try:
        while True:  # kill it in the middle of a cell, after two cells finished
            if _mid_cell(client):
                proc.send_signal(signal.SIGSTOP)  # freeze it, then look again: a cell
                if _mid_cell(client):  # may finish between the first look and the kill
                    break
                proc.send_signal(signal.SIGCONT)
            assert proc.poll() is None, (workdir / "sweep.log").read_text()[-3000:]
            assert time.time() < deadline, "the sweep did not get going"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    killed = _children(client)
    finished = {r.data.tags["cell"]: (r.info.run_id, r.info.start_time) for r in killed
                if r.info.status == "FINISHED"}  # fmt: skip
    stale = {r.info.run_id for r in killed if r.info.status == "RUNNING"}
    assert 2 <= len(finished) < len(TINY_CELLS) and stale

    plan = sweep.main(TINY)  # the same arguments: the same parent, the rest of the cells
    runs = _children(client)
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert Counter(_cell_suffix(r.data.tags["cell"]) for r in done) == Counter(TINY_CELLS)
    again = {r.data.tags["cell"]: (r.info.run_id, r.info.start_time) for r in done}
    assert {k: again[k] for k in finished} == finished  # finished cells untouched
    # a killed cell is either marked FAILED and run again as a new run, or -- when it had saved
    # its last.ckpt -- resumed into the same run (the resume of a killed fit); never left RUNNING
    failed = {r.info.run_id for r in runs if r.info.status == "FAILED"}
    resumed = {r.info.run_id for r in done if "resumed_from" in r.data.tags}
    assert failed | resumed == stale and not failed & resumed
    assert len(runs) == len(TINY_CELLS) + len(failed)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {plan.parent}
    assert client.get_run(plan.parent).info.status == "FINISHED"


# ----------------------------------------------------------------- workers
SLOW = ["--extra", "--trainer.callbacks+=_slow.SlowBatches", "--trainer.callbacks.seconds", "0.05"]


def _one_finished_run_per_cell(client) -> list:
    runs = _children(client)
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert Counter(_cell_suffix(r.data.tags["cell"]) for r in done) == Counter(TINY_CELLS)
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    return runs


@pytest.mark.slow
def test_two_local_workers_share_the_cells(workdir):
    import optuna

    # cells of a few seconds, so that the second worker (a fresh interpreter) gets some
    plan = sweep.main([*TINY, "--synthetic-size", "640,64", "--workers", "2",
                       "--storage", f"sqlite:///{workdir / 'q.db'}", *SLOW])  # fmt: skip
    client = MlflowClient()
    runs = _one_finished_run_per_cell(client)
    assert len(runs) == len(TINY_CELLS)  # nothing ran twice
    assert client.get_run(plan.parent).info.status == "FINISHED"
    pids = {r.data.tags["pid"] for r in runs}
    assert len(pids) == 2 and str(os.getpid()) in pids  # this process and one more did the work
    (study,) = optuna.get_all_study_names(f"sqlite:///{workdir / 'q.db'}")
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{workdir / 'q.db'}").trials
    complete = Counter(t.user_attrs["cell"] for t in trials if t.state.name == "COMPLETE")
    assert sorted(complete.values()) == [1] * len(TINY_CELLS)


@pytest.mark.slow
def test_a_second_machines_command_joins_the_running_sweep(workdir, caplog):
    """The same sweep command started again with --storage while the first runs (as on a
    second machine) shares its cells under the same parent run, which the first command owns
    and ends."""
    import logging

    tests = os.path.dirname(__file__)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{tests}:{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    args = [*TINY, "--synthetic-size", "640,64", "--storage", f"sqlite:///{workdir / 'q.db'}",
            *SLOW]  # fmt: skip
    client = store_client()
    first = subprocess.Popen([sys.executable, "-m", "robust_ft", "sweep", *args], cwd=workdir,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 600
    while not any(r.info.status == "RUNNING" for r in _children(client)):
        assert first.poll() is None and time.time() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.2)
    with caplog.at_level(logging.INFO, logger="robust_ft"):
        joined = sweep.main(args)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert "is run by process" in caplog.text
    runs = _one_finished_run_per_cell(client)
    assert len(runs) == len(TINY_CELLS)  # nothing ran twice
    assert {r.data.tags["pid"] for r in runs} == {str(first.pid), str(os.getpid())}
    parent = client.get_run(joined.parent)
    assert parent.info.status == "FINISHED" and parent.data.tags["pid"] == str(first.pid)


@pytest.mark.slow
def test_a_killed_workers_cell_is_run_again_by_another(workdir):
    tests = os.path.dirname(__file__)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{tests}:{os.environ.get('PYTHONPATH', '')}",
    }
    cmd = [sys.executable, "-m", "robust_ft", "sweep", *TINY[:-2], "--name", "killed-worker",
           "--workers", "2", "--heartbeat", "2", "--synthetic-size", "640,64",
           *SLOW]  # fmt: skip
    client = store_client()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline, victim = time.time() + 600, None
    while victim is None and time.time() < deadline and proc.poll() is None:
        runs = [r for r in _children(client) if r.info.status == "RUNNING"]
        other = (r for r in runs if r.data.tags.get("pid") != str(proc.pid))  # not the main one
        victim = next((r for r in other if "val/err" in r.data.metrics), None)
        time.sleep(0.2)
    assert victim is not None, proc.communicate()[0][-3000:]
    os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)  # one worker, mid-cell
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    runs = _one_finished_run_per_cell(client)
    # the other worker picked the cell up and, finding the killed attempt's checkpoint, resumed it
    # into the same MLflow run (the resume of a killed `fit`): nothing ran twice, nothing is lost
    assert len(runs) == len(TINY_CELLS)
    again = client.get_run(victim.info.run_id)
    assert again.info.status == "FINISHED" and again.data.tags["resumed_from"].endswith("last.ckpt")
    assert again.data.tags["pid"] != victim.data.tags["pid"]


# ----------------------------------------------------------------- commands started at once
RACE = ["--synthetic", "--synthetic-size", "128,64", "--kinds", "defocus", "--levels", "2",
        "--first-n", "1", "--no-retrain", "--budget", "demo", "--name", "race"]  # fmt: skip
RACE_CELLS = {"pretrain/clean/L0", "notrain/defocus/L2", "first-1/defocus/L2"}

# Each round: wait for the file `go-<round>`, then stand for the parent of a new sweep at once.
# new_parent is called without find_parent before it, so every process makes a candidate: the
# widest race window there is (in a real start, a command that sees a parent makes none).
ELECTOR = """
import os, sys, time
from pathlib import Path
from robust_ft.sweep import parse_args
from robust_ft.sweep_parent import new_parent, parent_run_args
from robust_ft.tracking import client
here, rounds, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
c = client()
for i in range(rounds):
    sw, _ = parse_args([*args, "--seeds", str(i)])
    if os.environ.get("AS_MLFLOW_RUN"):  # the run `mlflow run` makes before the command starts
        exp = c.get_experiment_by_name(sw.experiment_name)
        exp = exp.experiment_id if exp else c.create_experiment(sw.experiment_name)
        os.environ["MLFLOW_RUN_ID"] = c.create_run(exp).info.run_id
    (here / f"ready-{i}-{os.getpid()}").touch()
    while not (here / f"go-{i}").exists():
        time.sleep(0.001)
    print("round", i, new_parent(c, sw, parent_run_args(c, sw)), flush=True)
"""

# A sweep command whose imports are done and whose store is open (robust-ft opens it once per
# process, under a file lock: two fresh processes would pass that lock one after the other),
# released by the file `go`.
AT_ONCE = """
import os, sys, time
from pathlib import Path
import robust_ft.runner, robust_ft.sweep, robust_ft.workers
from robust_ft.cli import main
from robust_ft.tracking import client
client()
(Path(sys.argv[1]) / f"ready-{os.getpid()}").touch()
while not (Path(sys.argv[1]) / "go").exists():
    time.sleep(0.001)
main(["sweep", *sys.argv[2:]])
"""


def _parents(client, key: str, deleted: bool = False) -> list:
    """The runs tagged with a sweep key (its children too), or the deleted ones."""
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name("lenet5-synthetic")
    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    return client.search_runs([exp.experiment_id], f"tags.sweep_key = '{key}'", run_view_type=view)


def test_a_new_parent_is_never_seen_without_its_params(workdir):
    """The moment a run becomes a sweep's parent (``sweep_role=parent``) it already holds the
    sweep's ``sweep.*`` params: a reader in between (another command of the sweep, ``report``)
    never finds a parent without them."""
    sw = parse_args(RACE)[0]
    client = MlflowClient()
    args = sweep_parent.parent_run_args(client, sw)
    run_id = sweep_parent.new_parent(client, sw, args)
    run = sweep_parent.find_parent(client, sw)
    assert run is not None and run.info.run_id == run_id
    assert (
        args["params"].items() <= run.data.params.items() and "sweep.grid.kinds" in run.data.params
    )


def elect_at_once(cwd, env: dict, n: int, rounds: int) -> list[dict[str, str]]:
    """``n`` ELECTOR processes released together for each of ``rounds`` new sweeps; per process,
    the parent run it named in each round."""
    cmd = [sys.executable, "-c", ELECTOR, str(cwd), str(rounds), *RACE]
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(n)]  # fmt: skip
    for i in range(rounds):
        release_together(procs, cwd, f"ready-{i}-*", f"go-{i}")
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [o[-2000:] for o in outs]
    return [dict(x.split()[1:] for x in o.splitlines() if x.startswith("round ")) for o in outs]


@pytest.mark.parametrize("mlflow_run", [False, True], ids=["robust-ft", "mlflow-run"])
def test_of_commands_standing_for_a_new_sweeps_parent_at_once_one_is_elected(workdir, mlflow_run):
    """Four processes make a candidate parent run of a new sweep at the same instant, three
    rounds: all name the same parent, it is the sweep's one parent, the others' runs are gone
    (under `mlflow run`: its runs stay, pointing at the parent)."""
    n, rounds = 4, 3
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"AS_MLFLOW_RUN": "1"} if mlflow_run else {})}
    if mlflow_run:  # made once here: the processes' `mlflow run` runs would race to make it
        MlflowClient().create_experiment("lenet5-synthetic")
    named = elect_at_once(workdir, env, n, rounds)
    client = MlflowClient()
    for i in range(rounds):
        key = parse_args([*RACE, "--seeds", str(i)])[0].key
        (parent,) = {names[str(i)] for names in named}  # every process names the same run
        (run,) = _parents(client, key)  # the sweep's one run: no other candidate is left
        assert run.info.run_id == parent and run.data.tags["sweep_role"] == "parent"
        assert run.data.tags["sweep_candidate"] == key
        assert run.data.params["elected"] == parent
        if not mlflow_run:
            assert len(_parents(client, key, deleted=True)) == n - 1  # every other one stood
            continue
        others = client.search_runs([run.info.experiment_id], f"tags.sweep_parent = '{parent}'")
        assert len(others) == n - 1 and not _parents(client, key, deleted=True)
        assert all("sweep_candidate" not in r.data.tags for r in others)  # they withdrew
        assert all("sweep_key" not in r.data.tags for r in others)


def _sweeps_at_once(workdir, extra: list[str]) -> list[tuple[int, str]]:
    """Two identical sweep commands released at the same instant on a store without the sweep.

    The store and the experiment are made first: on a fresh SQLite file the first command makes
    the tables under a file lock while the second waits, and would find the parent made."""
    from robust_ft.tracking import client, experiment_id

    experiment_id(client(), "lenet5-synthetic")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", AT_ONCE, str(workdir), *RACE, *extra]
    procs = [subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]  # fmt: skip
    release_together(procs, workdir, "ready-*", "go")
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [(p.returncode, o) for p, o in zip(procs, outs, strict=True)]


def _one_parent_one_run_per_cell(client) -> str:
    """The race sweep has one parent run; each cell ran once, FINISHED, as its child."""
    key = parse_args(RACE)[0].key
    parents = [r for r in _parents(client, key) if "cell" not in r.data.tags]  # and candidates
    assert [r.data.tags["sweep_role"] for r in parents] == ["parent"]
    parent = parents[0].info.run_id
    runs = _children(client)
    assert Counter(_cell_suffix(r.data.tags["cell"]) for r in runs) == Counter(RACE_CELLS)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    assert client.get_run(parent).info.status == "FINISHED"
    return parent


@pytest.mark.slow
def test_two_sweep_commands_started_at_once_with_storage_share_one_parent(workdir):
    results = _sweeps_at_once(workdir, ["--storage", f"sqlite:///{workdir / 'q.db'}"])
    assert [code for code, _ in results] == [0, 0], [o[-3000:] for _, o in results]
    parent = _one_parent_one_run_per_cell(MlflowClient())
    joined = [o for _, o in results if f"parent run {parent} is run by process" in o]
    assert len(joined) == 1, [o[-3000:] for _, o in results]  # the other owned and ended it


@pytest.mark.slow
def test_of_two_sweep_commands_started_at_once_without_storage_one_is_refused(workdir):
    results = _sweeps_at_once(workdir, [])
    assert sorted(code for code, _ in results) == [0, 2], [o[-3000:] for _, o in results]
    parent = _one_parent_one_run_per_cell(MlflowClient())
    refused = next(o for code, o in results if code == 2)
    assert f"sweep 'race' is already running: its parent MLflow run {parent} is being written by process" in refused  # fmt: skip
    assert "--storage" in refused and "Traceback" not in refused


@pytest.mark.slow
@pytest.mark.parametrize("storage", [True, False], ids=["storage", "no-storage"])
def test_two_commands_resuming_a_killed_sweep_at_once_one_owns_it(workdir, storage):
    """The sweep's parent exists (killed before its first cell): both commands find it and
    claim it at the same moment; the store gives it to one, the other joins or is refused."""
    from robust_ft.tracking import tracked_run

    client = MlflowClient()
    sw, _ = parse_args(RACE)
    with (
        pytest.raises(KeyboardInterrupt),
        tracked_run(**sweep_parent.parent_run_args(client, sw)) as p,
    ):
        raise KeyboardInterrupt
    results = _sweeps_at_once(workdir, ["--storage", "sqlite:///q.db"] if storage else [])
    codes = sorted(code for code, _ in results)
    assert codes == ([0, 0] if storage else [0, 2]), [o[-3000:] for _, o in results]
    assert _one_parent_one_run_per_cell(client) == p.run_id
    other = f"parent run {p.run_id} is run by process" if storage else "is already running"
    assert sum(other in o for _, o in results) == 1, [o[-3000:] for _, o in results]


def test_a_candidate_left_by_a_dead_command_is_deleted_not_waited_for(workdir):
    """A command that died between standing and ending the election (its vote on itself
    written) leaves a candidate run; the next command deletes it and becomes the parent."""
    import socket

    from robust_ft.tracking import client, experiment_id

    c, sw = client(), parse_args(RACE)[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    tags = {
        "sweep_key": sw.key,
        "sweep_candidate": sw.key,
        "host": socket.gethostname(),
        "pid": dead,
    }
    stale = c.create_run(experiment_id(c, sw.experiment_name), tags=tags).info.run_id
    c.log_param(stale, "elected", stale)
    parent = sweep_parent.new_parent(c, sw, sweep_parent.parent_run_args(c, sw))
    assert parent != stale and c.get_run(stale).info.lifecycle_stage == "deleted"
    assert sweep_parent.find_parent(c, sw).info.run_id == parent


def test_a_candidate_elected_on_another_host_that_died_is_named_then_cleared(workdir, monkeypatch):
    """A command on another host that won the election and died before making its parent run:
    its process cannot be checked from here, so the next command waits for it (shortened here),
    then stops with an error naming the candidate run; deleting that run, as the error says,
    lets the command run again and become the parent."""
    from robust_ft.tracking import TrackingError, client, experiment_id

    monkeypatch.setattr(sweep_parent, "ELECTION_WAIT_S", 1.0)
    c, sw = client(), parse_args(RACE)[0]
    tags = {"sweep_key": sw.key, "sweep_candidate": sw.key, "host": "elsewhere", "pid": "1"}
    stale = c.create_run(experiment_id(c, sw.experiment_name), tags=tags).info.run_id
    c.log_param(stale, "elected", stale)  # it voted for itself, then died
    with pytest.raises(TrackingError, match=rf"none appeared in 1 s.*delete .*{stale}"):
        sweep_parent.new_parent(c, sw, sweep_parent.parent_run_args(c, sw))
    assert [r.info.run_id for r in sweep_parent.candidates(c, sw, experiment_id(c, sw.experiment_name))] == [stale]  # fmt: skip
    c.delete_run(stale)  # what the error says to do
    parent = sweep_parent.new_parent(c, sw, sweep_parent.parent_run_args(c, sw))
    assert parent != stale and sweep_parent.find_parent(c, sw).info.run_id == parent
