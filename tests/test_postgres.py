"""The compose stack's tracking services, run natively: PostgreSQL (Debian ``postgresql``) on
127.0.0.1 as MLflow's backend and Optuna's storage, an ``mlflow server`` on it serving the
artifacts, and a tiny pre-train (``robust-ft fit``), tuning study and fine-tune pointed at them.

PostgreSQL is installed with apt-get when missing (root), and a throwaway cluster runs as the
``postgres`` user (PostgreSQL refuses to run as root) on a free port, with password auth.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    CONF,
    apt_install,
    fit_then_test,
    free_port,
    open_fresh_store_at_once,
    synthetic_yaml,
)
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # PostgreSQL + MLflow server start-up, 3 short trainings: ~2 min

USER = "robust"
SYNTH_YAML = synthetic_yaml(cache=True)


def _pg_bin() -> Path | None:
    """The directory of initdb/pg_ctl: Debian's /usr/lib/postgresql/<v>/bin, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _ensure_postgres() -> Path:
    if _pg_bin() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        apt_install("postgresql")
    pg = _pg_bin()
    if pg is None:
        pytest.skip("no PostgreSQL (apt-get install postgresql, as root)")
    return pg


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>; yields (host:port, password)."""
    if importlib.util.find_spec("psycopg") is None:
        pytest.fail(
            "psycopg (3) is not installed: SQLAlchemy 2.1 opens postgresql:// URLs with it "
            "(pip install 'psycopg[binary]>=3.2,<4')"
        )
    pg = _ensure_postgres()
    root = Path(tempfile.mkdtemp(prefix="robust-ft-pg-"))  # under /tmp: reachable by postgres
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(12)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()
    data = root / "data"
    run = dict(check=True, capture_output=True, text=True)
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-U", USER,
                    f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256"],
                   **run)  # fmt: skip
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                    "-w", "-t", "120", "-o", opts, "start"], **run)  # fmt: skip
    try:
        for db in ("mlflow", "optuna"):
            subprocess.run([*as_user, str(pg / "createdb"), "-h", str(root), "-p", str(port),
                            "-U", USER, db], **run)  # fmt: skip
        yield f"127.0.0.1:{port}", password
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server`` with the PostgreSQL backend and served local artifacts; yields its URL."""
    hostport, password = postgres
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"postgresql://{USER}:{password}@{hostport}/mlflow",
        "--serve-artifacts", "--artifacts-destination", str(root / "mlartifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # the first start creates MLflow's tables in PostgreSQL
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(
                        "mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:]
                    )
                time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_fit_and_tune_against_postgres_backed_mlflow_server(
    postgres, mlflow_server, tmp_path, monkeypatch
):
    import optuna
    import psycopg
    from optuna.trial import TrialState

    from robust_ft import tune as tune_mod

    hostport, password = postgres
    storage = f"postgresql://{USER}:{password}@{hostport}/optuna"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    synth = tmp_path / "synth.yaml"
    synth.write_text(SYNTH_YAML)

    # 1. a clean pre-train through the real command line, tracked over HTTP
    fit = [sys.executable, "-m", "robust_ft", "fit", "--config", str(CONF / "lenet5_mnist.yaml"),
           "--config", str(synth), "--trainer.max_epochs", "1", "--model.lr", "0.05",
           "--tracking.log_model", "false"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(fit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    # 2. a 2-trial study in PostgreSQL, then the best rate fine-tuned at full budget
    res = tune_mod.main([
        "--model", "lenet5", "--dataset", "mnist", "--kind", "defocus", "--level", "1",
        "--config", str(synth), "--storage", storage, "--study-name", "pg-stack",
        "--n-trials", "2", "--trial-epochs", "1", "--pruner", "none", "--then-finetune",
        "--extra", "--model.finetune.max_epochs", "1",
    ])  # fmt: skip
    assert res.finetune_run_id is not None

    study = optuna.load_study(study_name="pg-stack", storage=storage)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("lenet5-synthetic")
    runs = client.search_runs([exp.experiment_id])
    by_method: dict[str, list] = {}
    for run in runs:
        by_method.setdefault(run.data.tags.get("method", "?"), []).append(run)
    (pretrain,) = by_method["pretrain"]
    assert pretrain.info.status == "FINISHED"
    assert "test/err/clean/L0" in pretrain.data.metrics
    # the checkpoint went through the server's artifact proxy (mlflow-artifacts:/...)
    assert pretrain.info.artifact_uri.startswith("mlflow-artifacts:")
    ckpts = {f.path for f in client.list_artifacts(pretrain.info.run_id, "checkpoints")}
    assert "checkpoints/best.ckpt" in ckpts
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res.parent_run_id]
    assert len(children) == 3  # 2 trials + the fine-tune of the best rate
    assert res.finetune_run_id in {r.info.run_id for r in children}
    assert all(r.info.status == "FINISHED" for r in children)
    assert client.get_run(res.parent_run_id).info.status == "FINISHED"

    # the runs really live in PostgreSQL, not in a file store next to the server
    host, port = hostport.split(":")
    conninfo = f"host={host} port={port} user={USER} password={password} dbname=mlflow"
    with psycopg.connect(conninfo) as conn:
        n = conn.execute(
            "select count(*) from runs where experiment_id = %s", (int(exp.experiment_id),)
        ).fetchone()[0]
    assert n == len(runs)


def test_two_sweep_workers_share_cells_through_postgres(postgres, tmp_path, monkeypatch):
    """`robust-ft sweep --workers 2` with the cells queued in a PostgreSQL Optuna storage."""
    from collections import Counter

    import optuna

    from robust_ft import sweep

    hostport, password = postgres
    storage = f"postgresql://{USER}:{password}@{hostport}/optuna"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # cells of a few seconds (SlowBatches), so that the second worker gets some
    plan = sweep.main(["--synthetic", "--synthetic-size", "640,64", "--kinds", "noise",
                       "--levels", "2", "--first-n", "1", "--budget", "demo", "--name", "pg",
                       "--workers", "2", "--storage", storage, "--extra",
                       "--trainer.callbacks+=_slow.SlowBatches", "--trainer.callbacks.seconds",
                       "0.05"])  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("lenet5-synthetic").experiment_id],
        f"tags.mlflow.parentRunId = '{plan.parent}'",
    )
    cells = Counter(r.data.tags["cell"].split("/", 3)[3] for r in runs)
    assert cells == Counter(["pretrain/clean/L0", "notrain/noise/L2", "first-1/noise/L2",
                             "retrain/noise/L2"])  # fmt: skip
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["pid"] for r in runs}) == 2
    study = optuna.load_study(study_name=f"sweep-{plan_key(plan, client)}", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["run_id"] for t in done) == sorted(r.info.run_id for r in runs)


def plan_key(plan, client) -> str:
    return client.get_run(plan.parent).data.tags["sweep_key"]


def test_no_secret_of_a_postgresql_store_in_console_params_tags_or_artifacts(postgres, tmp_path):
    """A PostgreSQL store whose password holds every URL-special character (percent-encoded)
    and a query-string secret: `fit` and `test` print, log and store none of them; the UI hint
    refers to ``$MLFLOW_TRACKING_URI``."""
    from urllib.parse import quote

    import psycopg

    hostport, password = postgres
    host, port = hostport.split(":")
    secret = "s3cr:t@/?#%pw-" + secrets.token_hex(4)
    with psycopg.connect(f"host={host} port={port} user={USER} password={password} "
                         "dbname=mlflow", autocommit=True) as conn:  # fmt: skip
        conn.execute(f"create role leaky login password '{secret}'")
        conn.execute("create database leaky owner leaky")
    uri = f"postgresql+psycopg://leaky:{quote(secret, safe='')}@{hostport}/leaky?sslmode=disable"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    synth = tmp_path / "synth.yaml"
    synth.write_text(SYNTH_YAML)
    args = ["--config", str(CONF / "lenet5_mnist.yaml"), "--config", str(synth),
            "--tracking.log_model", "false"]  # fmt: skip
    out = fit_then_test(args, tmp_path, env, timeout=600)
    assert '--backend-store-uri "$MLFLOW_TRACKING_URI"' in out, out[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lenet5-synthetic").experiment_id])
    assert len(runs) == 2
    stored = repr([(r.data.params, r.data.tags) for r in runs])
    for run in runs:
        for f in client.list_artifacts(run.info.run_id):
            if not f.is_dir:
                stored += Path(client.download_artifacts(run.info.run_id, f.path, str(tmp_path))
                               ).read_text(errors="ignore")  # fmt: skip
    written = "".join(
        p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file() and
        p.suffix not in (".ckpt", ".npy")
    )  # fmt: skip
    for text in (out, stored, written):
        assert secret not in text and quote(secret, safe="") not in text and "s3cr" not in text


def _fresh_database(postgres, name: str) -> tuple[str, dict[str, str]]:
    """A new database ``name`` on the test server: its URI and an environment pointing at it."""
    import psycopg

    hostport, password = postgres
    host, port = hostport.split(":")
    with psycopg.connect(f"host={host} port={port} user={USER} password={password} "
                         "dbname=mlflow", autocommit=True) as conn:  # fmt: skip
        conn.execute(f"create database {name}")
    uri = f"postgresql://{USER}:{password}@{hostport}/{name}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    return uri, env


def test_processes_starting_at_once_on_a_fresh_postgresql_store(postgres, tmp_path):
    """MLflow's table creation runs in one process at a time (a PostgreSQL advisory lock)."""
    open_fresh_store_at_once(_fresh_database(postgres, "fresh")[0], tmp_path)


def test_commands_standing_for_a_sweeps_parent_at_once_on_postgresql(postgres, tmp_path):
    """The sweep's parent election (write-once params) on PostgreSQL: three processes, two
    rounds of a new sweep each; one parent per sweep, every process names it."""
    from test_sweep import RACE, elect_at_once

    from robust_ft.sweep import parse_args

    uri, env = _fresh_database(postgres, "elect")
    rounds = 2
    named = elect_at_once(tmp_path, env, 3, rounds)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lenet5-synthetic").experiment_id
    for i in range(rounds):
        key = parse_args([*RACE, "--seeds", str(i)])[0].key
        (parent,) = {names[str(i)] for names in named}
        (run,) = client.search_runs([exp], f"tags.sweep_key = '{key}'")
        assert run.info.run_id == parent and run.data.tags["sweep_role"] == "parent"


def test_an_initialisation_lock_held_too_long_is_named_on_postgresql(postgres, monkeypatch):
    """A session that holds the advisory lock of a fresh store's table creation (a process hung
    mid-migration) makes the next one stop after the wait, naming the lock, with no password."""
    import psycopg

    import robust_ft.stores as stores

    uri, _ = _fresh_database(postgres, "held")
    hostport, password = postgres
    host, port = hostport.split(":")
    with psycopg.connect(f"host={host} port={port} user={USER} password={password} "
                         "dbname=held", autocommit=True) as holder:  # fmt: skip
        holder.execute("select pg_advisory_lock(%s)", (stores.PG_INIT_LOCK,))
        monkeypatch.setattr(stores, "INIT_LOCK_WAIT_S", 2)
        start = time.monotonic()
        with pytest.raises(stores.TrackingError) as err:
            stores.open_store(uri)
        took = time.monotonic() - start
    text = str(err.value)
    assert f"advisory lock {stores.PG_INIT_LOCK}" in text and "stayed held" in text, text
    assert "***" in text and password not in text, text
    assert 2 <= took < 30, took
    stores.open_store(uri)  # the holder is gone: the lock is free and the store opens
