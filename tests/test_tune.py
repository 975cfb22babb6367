"""The Optuna study end to end: real SQLite/Journal Optuna storage, a real SQLite MLflow store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from conftest import CONF, run_cli, synthetic_yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from robust_ft import runner
from robust_ft import tune as tune_mod

SYNTH_YAML = synthetic_yaml(cache=False)
BASE = ["--model", "lenet5", "--dataset", "mnist", "--kind", "defocus", "--level", "1"]


@pytest.fixture
def synth(workdir):
    """A config overlay that swaps the dataset for tiny synthetic data (51 validation images)."""
    path = workdir / "synth.yaml"
    path.write_text(SYNTH_YAML)
    return str(path)


@pytest.fixture
def pretrain(synth):
    """A 1-epoch clean pre-train of LeNet-5 on the synthetic data, tracked (``latest`` finds it)."""
    return run_cli(
        ["fit", "--config", str(CONF / "lenet5_mnist.yaml"), "--config", synth,
         "--trainer.max_epochs", "1", "--model.lr", "0.05", "--tracking.log_model", "false",
         "--data.init_args.test_kinds", "[clean]"]
    )  # fmt: skip


def _children(client: MlflowClient, parent: str) -> dict[int, object]:
    """Trial number -> nested child run of a study's parent run."""
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    return {int(r.data.tags["optuna.trial"]): r for r in runs if "optuna.trial" in r.data.tags}


# ----------------------------------------------------------------- pure parts
def test_storage_url_forms(tmp_path):
    assert isinstance(
        tune_mod.make_storage(f"sqlite:///{tmp_path}/o.db"), optuna.storages.RDBStorage
    )
    journal = tune_mod.make_storage(f"journal:{tmp_path}/sub/o.log")
    assert isinstance(journal, optuna.storages.JournalStorage)
    for bad in ("optuna.db", "http://localhost:5000", "journal:", "sqlite:/x.db", "foo://x"):
        with pytest.raises(ValueError, match="sqlite:///optuna.db.*journal:PATH"):
            tune_mod.make_storage(bad)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://me:secret@db:5432/optuna", "postgresql://me:***@db:5432/optuna"),
        ("postgresql+psycopg://me:secret@db/optuna", "postgresql+psycopg://me:***@db/optuna"),
        ("http://user:secret@mlflow:5000", "http://user:***@mlflow:5000"),
        ("https://secret@mlflow.example", "https://***@mlflow.example"),
        ("postgresql://me@db/optuna", "postgresql://me@db/optuna"),  # no password: unchanged
        ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),
        ("journal:/tmp/study.log", "journal:/tmp/study.log"),
    ],
)
def test_redact_hides_passwords_and_tokens(url, shown):
    """One redactor for tracking URIs and Optuna storages (report, tune, error messages)."""
    assert tune_mod.redact(url) == shown


def test_search_space_and_overrides():
    space = tune_mod.SearchSpace((1e-6, 1e-2), lr_gamma=(0.01, 0.5), first_n=[1, 2])
    trial = optuna.trial.FixedTrial({"lr": 1e-4, "lr_gamma": 0.1, "first_n": 2})
    params = space.suggest(trial)
    assert params == {"lr": 1e-4, "lr_gamma": 0.1, "first_n": 2}
    assert tune_mod.param_overrides(params) == {
        "model.finetune.lr": 1e-4, "model.finetune.lr_gamma": 0.1, "model.first_n": 2,
    }  # fmt: skip
    assert tune_mod.parse_params("lr=1e-5, first_n=3") == {"lr": 1e-5, "first_n": 3}
    with pytest.raises(ValueError, match="name=value"):
        tune_mod.parse_params("momentum=0.9")


@pytest.mark.parametrize("name", ["median", "percentile", "hyperband", "none"])
def test_pruners(name):
    assert isinstance(tune_mod.make_pruner(name), optuna.pruners.BasePruner)


# ----------------------------------------------------------------- studies
@pytest.mark.filterwarnings("ignore:Fixed parameter lr")  # the absurd rate is out of range
def test_study_prunes_nests_resumes_and_finetunes(workdir, synth, pretrain):
    """4 trials (the third absurd), then a resumed 5th trial and the best rate at full budget."""
    args = [
        *BASE, "--config", synth, "--trial-epochs", "2", "--lr-min", "1e-4", "--lr-max", "0.1",
        "--no-enqueue-default", "--enqueue", "lr=0.01", "--enqueue", "lr=0.03",
        "--enqueue", "lr=1000", "--pruner", "median", "--pruner-startup-trials", "2",
        "--pruner-warmup-epochs", "0", "--sampler-seed", "0", "--n-trials", "4",
    ]  # fmt: skip
    res = tune_mod.main(args)
    study = optuna.load_study(study_name=res.study_name, storage="sqlite:///optuna.db")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert trials[0].state == trials[1].state == TrialState.COMPLETE
    assert trials[2].params["lr"] == 1000 and trials[2].state == TrialState.PRUNED
    assert res.best_value == min(t.value for t in trials if t.state == TrialState.COMPLETE)

    client = MlflowClient()
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study"] == res.study_name
    assert parent.data.metrics["best/val_err"] == pytest.approx(res.best_value)
    assert parent.data.params["tune.kind"] == "defocus"
    arts = {a.path for a in client.list_artifacts(res.parent_run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/param_importances.png",
            "optuna/slice.png"} <= arts  # fmt: skip

    # the UI page the tuner prints: the study's trials, their state, rate and val/err
    import json

    view = client.get_experiment(parent.info.experiment_id).tags
    state = json.loads(view[f"mlflow.sharedViewState.tune-{res.study_name}"])
    assert (
        "params.`trial.lr`" in state["selectedColumns"]
        and "metrics.`val/err`" in state["selectedColumns"]
    )
    assert res.view.endswith(f"viewStateShareKey=tune-{res.study_name}")
    shown = client.search_runs([parent.info.experiment_id], state["searchFilter"])
    assert sorted(r.info.run_name for r in shown) == [f"trial-{n}" for n in range(4)]

    children = _children(client, res.parent_run_id)
    assert set(children) == {0, 1, 2, 3}
    for t in trials:
        run = children[t.number]
        assert run.data.tags["optuna.state"] == t.state.name
        assert run.info.status == tune_mod.RUN_STATUS[t.state.name]
        assert "error" not in run.data.tags
        assert float(run.data.params["model.finetune.lr"]) == pytest.approx(t.params["lr"])
        assert run.data.tags["init_from_run"] == pretrain.run_id
        assert not any(k.startswith("test/") for k in run.data.metrics)  # never the test split
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val/err")]
        assert history == pytest.approx(list(t.intermediate_values.values()))
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(min(history))
    assert len(client.get_metric_history(children[2].info.run_id, "val/err")) == 1

    # resumed by name: the trial count goes on, same parent run; then the best rate, full budget
    res2 = tune_mod.main(
        [*args[:-1], "1", "--study-name", res.study_name, "--then-finetune",
         "--extra", "--model.finetune.max_epochs", "1"]
    )  # fmt: skip
    assert res2.parent_run_id == res.parent_run_id
    assert [t.number for t in study.get_trials()] == [0, 1, 2, 3, 4]
    assert set(_children(client, res.parent_run_id)) == {0, 1, 2, 3, 4}
    final = client.get_run(res2.finetune_run_id)
    assert final.info.status == "FINISHED"
    assert final.data.tags["optuna.study"] == res.study_name
    assert final.data.tags["optuna.best_trial"] == str(study.best_trial.number)
    assert final.data.tags["mlflow.parentRunId"] == res.parent_run_id
    assert final.data.tags["method"] == "first-3"
    assert float(final.data.params["model.finetune.lr"]) == pytest.approx(study.best_params["lr"])
    assert {"test/err/clean/L0", "test/err/defocus/L1"} <= set(final.data.metrics)
    assert (
        client.get_run(res.parent_run_id).data.tags["optuna.best_finetune_run"] == final.info.run_id
    )


def test_resume_with_other_settings_is_refused(workdir, synth):
    init = workdir / "fake.ckpt"
    init.write_bytes(b"not used: no trial runs")
    common = ["--config", synth, "--init-from", str(init), "--study-name", "s", "--n-trials", "0"]
    tune_mod.main([*BASE, *common])
    with pytest.raises(ValueError, match="kind: study has 'defocus', now 'motion'"):
        tune_mod.main([*BASE[:5], "motion", *BASE[6:], *common])


def test_failed_trial_is_retried_once(workdir, synth, monkeypatch):
    init = workdir / "fake.ckpt"
    init.write_bytes(b"never loaded")

    def boom(command, overrides=None, **kwargs):
        raise RuntimeError("worker lost its GPU")

    monkeypatch.setattr(runner, "run", boom)
    with pytest.raises(RuntimeError, match="lost its GPU"):
        tune_mod.main([*BASE, "--config", synth, "--init-from", str(init), "--study-name", "f",
                       "--n-trials", "5", "--max-failures", "2"])  # fmt: skip
    study = optuna.load_study(study_name="f", storage="sqlite:///optuna.db")
    first, retry = study.get_trials()  # stopped after two failures in a row
    assert first.state == retry.state == TrialState.FAIL
    assert retry.params == first.params
    assert retry.system_attrs["failed_trial"] == first.number
    client = MlflowClient()
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = _children(client, parent)
    assert children[1].data.tags["optuna.retry_of"] == "0"
    for run in children.values():
        assert run.info.status == "FAILED"
        assert run.data.tags["optuna.state"] == "FAIL"
        assert "lost its GPU" in run.data.tags["error"]
    assert client.get_run(parent).info.status == "FAILED"


@pytest.mark.slow  # two fresh interpreters: ~100 s on 2 busy cores
def test_two_workers_share_one_journal_study(workdir, synth, pretrain):
    """Two processes on one JournalStorage study: 2 x 2 trials, distinct numbers, one parent run."""
    cmd = [sys.executable, "-m", "robust_ft", "tune", *BASE, "--config", synth,
           "--storage", "journal:optuna.log", "--study-name", "w", "--n-trials", "2",
           "--trial-epochs", "1", "--pruner", "none"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    out = subprocess.PIPE
    procs = [
        subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name="w", storage=tune_mod.make_storage("journal:optuna.log"))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params["lr"] == pytest.approx(1e-5)  # the configured rate comes first
    client = MlflowClient()
    exp = client.get_experiment_by_name("lenet5-synthetic")
    parents = client.search_runs(
        [exp.experiment_id], "tags.`optuna.study` = 'w' and tags.method = 'pipeline'"
    )
    assert [r.info.run_id for r in parents] == [study.user_attrs["mlflow_parent_run_id"]]
    assert set(_children(client, parents[0].info.run_id)) == {0, 1, 2, 3}


@pytest.mark.slow  # 2-rank trials spawned per trial: ~3 min on 2 cores
@pytest.mark.filterwarnings("ignore:Fixed parameter lr")
def test_ddp_trials_prune_on_every_rank(workdir, synth, pretrain):
    """Trials on 2 CPU ranks: `devices 2` becomes ddp_spawn, one MLflow run per trial (not per
    rank), and the absurd trial is pruned through the storage and stopped on both ranks."""
    cmd = [sys.executable, "-m", "robust_ft", "tune", *BASE, "--config", synth,
           "--trial-epochs", "2", "--no-enqueue-default", "--enqueue", "lr=0.01",
           "--enqueue", "lr=0.03", "--enqueue", "lr=1000", "--pruner", "median",
           "--pruner-startup-trials", "2", "--pruner-warmup-epochs", "0", "--n-trials", "3",
           "--then-finetune", "--extra", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--model.finetune.max_epochs", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "2 devices per trial: trainer.strategy=ddp_spawn" in r.stderr  # a progress line

    (summary,) = optuna.get_all_study_summaries("sqlite:///optuna.db")
    study = optuna.load_study(study_name=summary.study_name, storage="sqlite:///optuna.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
    ]
    pruned = trials[2]
    assert pruned.system_attrs["ddp_pl:pruned"] is True  # decided on rank 0, broadcast to rank 1
    assert pruned.system_attrs["ddp_pl:epoch"] == 0 and list(pruned.intermediate_values) == [0]

    client = MlflowClient()
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = _children(client, parent)
    assert set(children) == {0, 1, 2}  # one run per trial: rank 1 logs nothing of its own
    for t in trials:
        run = children[t.number]
        assert run.data.params["trainer.strategy"] == "ddp_spawn"
        assert run.data.params["trainer.devices"] == "2"
        assert run.data.tags["optuna.state"] == t.state.name
        assert run.info.status == tune_mod.RUN_STATUS[t.state.name]
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val/err")]
        assert history == pytest.approx(list(t.intermediate_values.values()))
    final = client.get_run(client.get_run(parent).data.tags["optuna.best_finetune_run"])
    assert final.info.status == "FINISHED" and final.data.params["trainer.strategy"] == "ddp_spawn"
    assert {"test/err/clean/L0", "test/err/defocus/L1"} <= set(final.data.metrics)


def test_ddp_trials_need_a_spawning_strategy_and_an_rdb(workdir, synth):
    init = workdir / "fake.ckpt"
    init.write_bytes(b"never loaded: the study is refused first")
    common = [*BASE, "--config", synth, "--init-from", str(init), "--n-trials", "1"]
    cpu2 = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    cases = [
        (["--storage", "journal:o.log", "--extra", *cpu2], "journal: storages are not supported"),
        (["--extra", *cpu2, "--trainer.strategy", "ddp_find_unused_parameters_true"],
         "use one of ddp_spawn, ddp_fork"),
        (["--extra", *cpu2, "--trainer.num_nodes", "2"], "start a `robust-ft tune` worker on each"),
    ]  # fmt: skip
    for flags, message in cases:
        with pytest.raises(ValueError, match=message):
            tune_mod.main([*common, *flags])
    assert not Path("o.log").exists() and not Path("optuna.db").exists()  # nothing half-made


@pytest.fixture(scope="module")
def postgres_url():
    """``ROBUST_FT_TEST_PG_URL``, else a throwaway local PostgreSQL cluster (skip if none)."""
    if os.environ.get("ROBUST_FT_TEST_PG_URL"):
        yield os.environ["ROBUST_FT_TEST_PG_URL"]
        return
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL: set ROBUST_FT_TEST_PG_URL or put initdb/pg_ctl on PATH")
    root = Path(tempfile.mkdtemp(prefix="robust-ft-pg-"))  # /tmp: reachable by postgres
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = str(root / "data"), str(root / "log")
    try:
        for cmd in (
            [initdb, "-D", data, "-A", "trust", "-U", "optuna"],
            [pg_ctl, "-D", data, "-l", log, "-w", "start", "-o", f"-p {port} -k {root}"],
        ):
            r = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"cannot start PostgreSQL: {(r.stdout + r.stderr)[-500:]}")
        yield f"postgresql://optuna@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # a PostgreSQL cluster and two trials: ~40 s
def test_study_on_postgresql(workdir, synth, pretrain, postgres_url):
    """An RDB URL as the compose stack gives it (plain postgresql://), heartbeat on."""
    storage = tune_mod.make_storage(postgres_url)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.get_heartbeat_interval() == 60
    name = f"pg-{os.getpid()}-{workdir.name}"
    res = tune_mod.main([*BASE, "--config", synth, "--storage", postgres_url, "--study-name", name,
                         "--n-trials", "2", "--trial-epochs", "1", "--pruner", "none"])  # fmt: skip
    study = optuna.load_study(study_name=name, storage=storage)
    assert [(t.number, t.state) for t in study.get_trials()] == [
        (0, TrialState.COMPLETE), (1, TrialState.COMPLETE)
    ]  # fmt: skip
    assert set(_children(MlflowClient(), res.parent_run_id)) == {0, 1}
    optuna.delete_study(study_name=name, storage=storage)


def test_extra_flag_of_a_searched_parameter_is_refused(workdir, synth):
    """--extra is applied last and would win over the sampled value: refused, naming the option."""
    init = workdir / "fake.ckpt"
    init.write_bytes(b"never loaded: the study is refused first")
    common = [*BASE, "--config", synth, "--init-from", str(init), "--n-trials", "1"]
    overlay = workdir / "rate.yaml"
    overlay.write_text("model:\n  finetune:\n    lr: 0.001\n")
    cases = [
        (["--extra", "--model.finetune.lr", "1e-3"], "sets model.finetune.lr.*--lr-min/--lr-max"),
        (["--extra", "--model.finetune.lr=1e-3"], "--lr-min/--lr-max"),
        (["--extra", "--config", str(overlay)], "sets model.finetune.lr.*tune's --config"),
        (["--search-weight-decay", "--extra", "--model.weight_decay", "0"], "--wd-min/--wd-max"),
        (["--extra", "--model.init_from", str(init)], "use --init-from instead"),
    ]
    for flags, message in cases:
        with pytest.raises(ValueError, match=message):
            tune_mod.main([*common, *flags])
    assert not Path("optuna.db").exists()  # nothing half-made


def test_trial_settings_replace_the_same_extra_flags(workdir):
    """--trial-epochs narrows trials only: ``runner.run(fixed=...)`` wins over the user's flag of
    that setting, the user's flags win over every other override."""
    from robust_ft.runner import parse

    extra = ["--model.finetune.max_epochs", "1", "--trainer.max_epochs=4"]
    fixed = {"model.finetune.max_epochs": 2, "data.init_args.train_subset": 100}
    base = {"trainer.max_epochs": 9, "data.init_args.train_subset": 7}
    conf = [CONF / "lenet5_mnist.yaml"]
    trial = parse("fit", base, configs=conf, argv=extra, fixed=fixed).config
    assert (trial.model.finetune.max_epochs, trial.data.init_args.train_subset) == (2, 100)
    assert trial.trainer.max_epochs == 4  # the user's flag over the override
    final = parse("fit", base, configs=conf, argv=extra).config
    assert (final.model.finetune.max_epochs, final.data.init_args.train_subset) == (1, 7)
