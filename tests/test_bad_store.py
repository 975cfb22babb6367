"""The bad-input matrix, round two: the run history, the stores and what runs do.

Every case runs the console command in-process and asserts the exit code, a message that names
the problem and the fix, no traceback, the time bound (10 s), that no secret of a URL is shown,
and that the store is unchanged: the runs that were there keep their status, tags, params and
metrics, and no run was added (or exactly one FAILED run with the reason, where a run can only
find out while it runs that it did nothing).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import CONF, store_client, synthetic_args
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from robust_ft.cli import main

LENET = ["--config", str(CONF / "lenet5_mnist.yaml")]
SYN = synthetic_args(n_train=64, n_test=32)
FIT = ["fit", *LENET, *SYN]
EXP = "lenet5-synthetic"
SECRET = "s3cr:t@/?#%pw"
"""a password with every URL-special character; written percent-encoded in the URLs"""
PW = quote(SECRET, safe="")
LIMIT_S = 10.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hash(argv: list[str]) -> str:
    """The config hash robust-ft gives a command line (what "the same command" means)."""
    from robust_ft.runner import parse

    return parse(argv[0], argv=argv[1:]).config_hash


def snapshot(uri: str) -> dict[str, tuple]:
    """Every run of a store: status, stage, end time, tags, params and metrics."""
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(exps, run_view_type=ViewType.ALL, max_results=1000) if exps else []
    return {
        r.info.run_id: (
            r.info.status,
            r.info.lifecycle_stage,
            r.info.end_time,
            dict(r.data.tags),
            dict(r.data.params),
            dict(r.data.metrics),
        )
        for r in runs
    }


class Store:
    """The working directory's store, with runs of several kinds already in it."""

    def __init__(self, workdir: Path):
        self.uri = f"sqlite:///{workdir / 'mlflow.db'}"
        c = self.client = MlflowClient(self.uri)
        exp = c.create_experiment(EXP)
        other = c.create_experiment("elsewhere")
        me = {"host": socket.gethostname(), "pid": str(os.getpid())}
        self.finished_other = self._run(exp, "FINISHED", {"config_hash": "0" * 16, **me})
        self.finished_same = self._run(exp, "FINISHED", {"config_hash": _hash(FIT), **me})
        self.in_other_exp = self._run(other, "KILLED", {"config_hash": _hash(FIT), **me})
        self.deleted = self._run(exp, "FAILED", {"config_hash": _hash(FIT), **me})
        c.delete_run(self.deleted)
        self.pretrain_no_ckpt = self._run(
            exp, "FINISHED", {"method": "pretrain", "model": "lenet5", "dataset": "synthetic"}
        )

    def _run(self, exp: str, status: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(exp, tags=tags)
        rid = run.info.run_id
        self.client.log_param(rid, "model.lr", "0.01")
        self.client.log_metric(rid, "val/err", 12.5, step=3)
        self.client.set_terminated(rid, status)
        return rid


@pytest.fixture
def store(workdir):
    return Store(workdir)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _dead_pid() -> str:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                         capture_output=True)  # fmt: skip
    return out.stdout.strip()


def _owned_by(s: Store, pid: str, config_hash: str, metrics: bool = False) -> str:
    run = s.client.create_run(
        s.client.get_experiment_by_name(EXP).experiment_id,
        tags={"host": socket.gethostname(), "pid": pid, "config_hash": config_hash},
    )
    if metrics:
        s.client.log_metric(run.info.run_id, "val/err", 50.0, step=0)
    return run.info.run_id


def _with_ckpt(w: Path, run_id: str) -> str:
    """A run id whose ``last.ckpt`` is where ``--tracking.resume`` looks for it."""
    ckpt = w / "outputs" / "checkpoints" / run_id / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not really")
    return run_id


def _env(mp, **values):
    for k, v in values.items():
        mp.setenv(k, v)


def _garbage_db(w: Path) -> str:
    (w / "junk.db").write_bytes(b"this is not a database" * 10)
    return f"sqlite:///{w / 'junk.db'}"


# (id, setup(workdir, store, monkeypatch, procs) -> argv, message regex, outcome)
# outcome: "refused" (nothing written) | "failed" (one new FAILED run with the reason) |
# "reaped" (a dead process's RUNNING run is marked FAILED, as documented; nothing else)
CASES = [
    # --- the run history: a run is continued only by the command that made it
    ("run-id-of-finished-run-of-another-config", lambda w, s, mp, p: [*FIT, "--tracking.run_id", s.finished_other], "made by another config.*left unchanged", "refused"),
    ("mlflow-run-id-of-finished-run-of-another-config", lambda w, s, mp, p: (_env(mp, MLFLOW_RUN_ID=s.finished_other), FIT)[1], "made by another config", "refused"),
    ("run-id-of-finished-run-of-this-config", lambda w, s, mp, p: [*FIT, "--tracking.run_id", s.finished_same], "already FINISHED this fit", "refused"),
    ("run-id-of-deleted-run", lambda w, s, mp, p: [*FIT, "--tracking.run_id", s.deleted], "is deleted; restore it", "refused"),
    ("run-id-in-another-experiment", lambda w, s, mp, p: [*FIT, "--tracking.run_id", s.in_other_exp, "--tracking.experiment", EXP], "is in experiment 'elsewhere', not 'lenet5-synthetic'", "refused"),
    ("unknown-mlflow-run-id", lambda w, s, mp, p: (_env(mp, MLFLOW_RUN_ID="f" * 32), FIT)[1], "run f{32} does not exist", "refused"),
    ("unknown-run-id-option", lambda w, s, mp, p: [*FIT, "--tracking.run_id", "nope"], "run nope does not exist", "refused"),
    ("mlflow-run-id-of-run-a-live-process-writes", lambda w, s, mp, p: (_env(mp, MLFLOW_RUN_ID=_owned_by(s, str(p.append(_sleeper()) or p[-1].pid), _hash(FIT))), FIT)[1], "being written by process", "refused"),
    ("mlflow-run-id-of-dead-owner-other-config", lambda w, s, mp, p: (_env(mp, MLFLOW_RUN_ID=_owned_by(s, _dead_pid(), "1" * 16)), FIT)[1], "made by another config", "reaped"),
    ("resume-a-run-of-another-config", lambda w, s, mp, p: [*FIT, "--tracking.resume", _with_ckpt(w, s.finished_other)], "made by another config", "refused"),
    ("mlflow-run-id-of-dead-owner-same-config-no-checkpoint", lambda w, s, mp, p: (_env(mp, MLFLOW_RUN_ID=_owned_by(s, _dead_pid(), _hash(FIT), metrics=True)), FIT)[1], "earlier attempt's metrics but no checkpoint", "reaped"),
    ("test-into-a-fit-run", lambda w, s, mp, p: ["test", *LENET, *SYN, "--tracking.run_id", s.finished_same], "made by another config", "refused"),
    # --- runs that would do nothing
    ("max-epochs-0", lambda w, s, mp, p: [*FIT, "--trainer.max_epochs", "0"], "--trainer.max_epochs 0 leaves `fit` nothing to train", "refused"),
    ("max-steps-0", lambda w, s, mp, p: [*FIT, "--trainer.max_steps", "0"], "--trainer.max_steps 0 leaves", "refused"),
    ("limit-train-batches-0", lambda w, s, mp, p: [*FIT, "--trainer.limit_train_batches", "0"], "limit_train_batches 0", "refused"),
    ("test-subset-0", lambda w, s, mp, p: ["test", *LENET, *SYN, "--data.init_args.test_subset", "0"], "--data.test_subset 0 leaves `test` nothing to evaluate", "refused"),
    ("test-subset-negative-on-fit", lambda w, s, mp, p: [*FIT, "--data.init_args.test_subset", "-3"], "test_subset -3", "refused"),
    ("limit-test-batches-0", lambda w, s, mp, p: ["test", *LENET, *SYN, "--trainer.limit_test_batches", "0"], "limit_test_batches 0", "refused"),
    ("val-split-takes-every-training-image", lambda w, s, mp, p: [*FIT, "--data.init_args.val_split", "64"], "val_split|no batch|training split is empty", "any"),
    ("latest-pretrain-without-checkpoint", lambda w, s, mp, p: [*FIT, "--model.init_from", "latest", "--model.first_n", "1"], "no finished clean pre-train run .*with a checkpoint", "refused"),
    # --- levels: a documented range per kind
    ("defocus-level-1e9", lambda w, s, mp, p: [*FIT, "--data.init_args.distortion.kind", "defocus", "--data.init_args.distortion.level", "1e9"], "out of range for defocus: its levels run from 0 to 20", "refused"),
    ("noise-level-300", lambda w, s, mp, p: [*FIT, "--data.init_args.distortion.kind", "noise", "--data.init_args.distortion.level", "300"], "out of range for noise: .* 0 to 255", "refused"),
    ("combined-range-too-wide", lambda w, s, mp, p: [*FIT, "--data.init_args.distortion.kind", "combined", "--data.init_args.distortion.level", "U(0,50)"], "U\\(0,50\\) is out of range for combined", "refused"),
    ("infinite-level", lambda w, s, mp, p: [*FIT, "--data.init_args.distortion.kind", "motion", "--data.init_args.distortion.level", "inf"], "finite number", "refused"),
    ("level-not-a-number", lambda w, s, mp, p: [*FIT, "--data.init_args.distortion.kind", "motion", "--data.init_args.distortion.level", "strong"], "cannot read a level from 'strong'", "refused"),
    # --- stores that cannot be opened: within seconds, the fix, no secret
    ("sqlite-store-is-a-directory", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=f"sqlite:///{w}"), FIT)[1], "is a directory, not an SQLite file", "refused"),
    ("sqlite-store-directory-missing", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=f"sqlite:///{w}/no/such/dir/m.db"), FIT)[1], "directory .*no/such/dir does not exist", "refused"),
    ("sqlite-store-not-a-database", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=_garbage_db(w)), FIT)[1], "is not an SQLite database", "refused"),
    ("file-store-under-a-file", lambda w, s, mp, p: ((w / "afile").write_text("x"), _env(mp, MLFLOW_TRACKING_URI=f"file://{w}/afile/mlruns"), FIT)[2], "afile is a file, not a directory", "refused"),
    ("max-epochs-below-minus-one", lambda w, s, mp, p: [*FIT, "--trainer.max_epochs", "-5"], "max_epochs", "any"),
    ("tracking-uri-unknown-scheme", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=f"mongo://u:{PW}@h/db"), FIT)[1], "unknown scheme 'mongo'", "refused"),
    ("tracking-uri-bad-port", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=f"postgresql://u:{PW}@127.0.0.1:port/db"), FIT)[1], "is not a database URL", "refused"),
    ("postgres-server-down", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=f"postgresql+psycopg://robust:{PW}@127.0.0.1:{_closed_port()}/mlflow?sslpassword={PW}"), FIT)[1], "cannot open the database postgresql\\+psycopg://robust:\\*\\*\\*@127.0.0.1.*ROBUST_FT_CONNECT_TIMEOUT", "refused"),
    ("mysql-driver-missing-or-down", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=f"mysql+pymysql://root:{PW}@127.0.0.1:{_closed_port()}/mlflow"), FIT)[1], "mysql\\+pymysql://root:\\*\\*\\*@", "refused"),
    ("http-server-down-with-password", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=f"http://alice:{PW}@127.0.0.1:{_closed_port()}"), FIT)[1], "tracking server http://alice:\\*\\*\\*@127.0.0.1:\\d+ is unreachable", "refused"),
    ("https-server-down-with-token-query", lambda w, s, mp, p: (_env(mp, MLFLOW_TRACKING_URI=f"https://127.0.0.1:{_closed_port()}/?token={PW}"), FIT)[1], "token=\\*\\*\\*.*unreachable", "refused"),
    ("optuna-storage-down", lambda w, s, mp, p: ["tune", "--dataset", "mnist", "--kind", "defocus", "--storage", f"postgresql://u:{PW}@127.0.0.1:{_closed_port()}/optuna", "--extra", *SYN], "cannot open --storage postgresql.*u:\\*\\*\\*@", "refused"),
    # --- config files
    ("config-file-missing", lambda w, s, mp, p: ["fit", "--config", str(w / "nowhere.yaml"), *SYN], "config file .*nowhere.yaml does not exist", "refused"),
    ("config-file-bad-yaml", lambda w, s, mp, p: ((w / "bad.yaml").write_text("model: [unclosed\n  lr: :\n"), ["fit", "--config", str(w / "bad.yaml"), *SYN])[1], "config file .*bad.yaml is not valid YAML at line", "refused"),
    ("max-epochs-wrong-type", lambda w, s, mp, p: [*FIT, "--trainer.max_epochs", "many"], "max_epochs", "refused"),
]  # fmt: skip


def _secret_free(text: str) -> bool:
    return SECRET not in text and PW not in text and "s3cr" not in text


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_store_and_history_bad_input(store, workdir, monkeypatch, capsys, case):
    name, setup, pattern, outcome = case
    procs: list[subprocess.Popen] = []
    try:
        argv = setup(workdir, store, monkeypatch, procs)
        before = snapshot(store.uri)
        files = {p for p in workdir.rglob("*") if p.is_file()}
        start = time.monotonic()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        took = time.monotonic() - start
        after = snapshot(store.uri)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    out = capsys.readouterr()
    err = out.err + out.out
    assert exc.value.code == 2, err[-2000:]
    assert re.search(pattern, err, re.S), err[-2000:]
    assert "Traceback" not in err
    assert took < LIMIT_S, f"{took:.1f} s"
    assert _secret_free(err), err
    new = set(after) - set(before)
    kept = {rid: after[rid] for rid in before}
    if outcome == "reaped":  # the dead process's run is FAILED, nothing else changed
        dead = os.environ["MLFLOW_RUN_ID"]
        assert kept.pop(dead)[0] == "FAILED"
        before.pop(dead)
    assert kept == before  # the runs that were there are unchanged
    if outcome in ("refused", "reaped"):
        assert not new, [after[r] for r in new]
    elif new:  # "failed" (or "any"): one run, FAILED with the reason in its error tag
        assert len(new) == 1
        status, _, _, tags, _, _ = after[new.pop()]
        assert status == "FAILED" and re.search(pattern, tags.get("error", ""), re.S), tags
    else:
        assert outcome == "any"
    leftovers = [p for p in workdir.rglob("*") if p.is_file() and p not in files
                 and (p.suffix in (".ckpt", ".npy", ".tmp") or ".tmp" in p.name)]  # fmt: skip
    assert not leftovers, leftovers
    written = "".join(p.read_text(errors="ignore") for p in workdir.rglob("*.log"))
    assert _secret_free(written) and _secret_free(repr(after))


TINY_SWEEP = ["--synthetic", "--synthetic-size", "128,64", "--kinds", "defocus", "--levels", "0,2",
              "--first-n", "1", "--budget", "demo", "--name", "dup"]  # fmt: skip


@pytest.mark.slow  # a sweep in another process must get going first: ~30-60 s
def test_a_duplicate_of_a_running_sweep_is_refused_and_writes_nothing(workdir, capsys):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = store_client(uri)
    log = open(workdir / "first.log", "w")  # noqa: SIM115 - closed below
    first = subprocess.Popen([sys.executable, "-m", "robust_ft", "sweep", *TINY_SWEEP],
                             cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                             preexec_fn=lambda: os.nice(19))  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (parent := _running_parent(client)):
            assert first.poll() is None, (workdir / "first.log").read_text()[-2000:]
            assert time.time() < deadline, "the first sweep did not start"
            time.sleep(0.5)
        before = snapshot(uri)[parent]
        start = time.monotonic()
        with pytest.raises(SystemExit) as exc:
            main(["sweep", *TINY_SWEEP])
        took = time.monotonic() - start
        assert snapshot(uri)[parent] == before
        mine = client.search_runs(
            [client.get_experiment_by_name(EXP).experiment_id], f"tags.pid = '{os.getpid()}'"
        )
        assert not mine
    finally:
        first.kill()
        first.wait()
        log.close()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert re.search(f"MLflow run {parent} is being written by process {first.pid}", err), err
    assert took < LIMIT_S, f"{took:.1f} s"


def _running_parent(client: MlflowClient) -> str | None:
    """The first sweep's parent run once it is RUNNING and has a cell under it, else None."""
    exp = client.get_experiment_by_name(EXP)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], "tags.sweep_role = 'parent'")
    if not runs or runs[0].info.status != "RUNNING":
        return None
    # the parent is set up (params, owner) once its first cell has started: before that, the
    # first sweep is still writing to it and a snapshot would race with those writes
    parent = runs[0].info.run_id
    cells = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return parent if cells else None


RO_SCRIPT = """
import sys, time
import robust_ft.runner  # imported before the clock starts, as in the in-process cases
from robust_ft.cli import main
start = time.monotonic()
try:
    main(sys.argv[1:])
except SystemExit as e:
    print(f"exit {e.code} after {time.monotonic() - start:.1f} s", file=sys.stderr)
"""


def test_a_read_only_working_directory_is_refused_with_the_fix(tmp_path):
    """The default store is ``mlflow.db`` in the working directory: a read-only one (a bind mount
    remounted read-only, which binds root too) is named, with the fix, before anything runs."""
    ro = tmp_path / "ro"
    ro.mkdir()
    argv = ["fit", *LENET, *synthetic_args(n_train=64, n_test=32)[:-2],
            "--data.init_args.root", str(tmp_path / "data")]  # fmt: skip
    inner = (f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} {ro} && cd {ro} && "
             f"exec {sys.executable} -c '{RO_SCRIPT}' " + " ".join(argv))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("needs unshare -m (root or CAP_SYS_ADMIN) for a read-only mount")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "exit 2 after" in r.stderr, r.stderr[-2000:]
    assert re.search(f"cannot open the MLflow store sqlite:///{ro}/mlflow.db: its directory {ro} "
                     "is not writable.*run from a writable directory", r.stderr), r.stderr  # fmt: skip
    assert "Traceback" not in r.stderr
    took = float(re.search(r"exit 2 after ([\d.]+) s", r.stderr)[1])
    assert took < LIMIT_S
    assert not list(ro.iterdir()) and not (tmp_path / "data").exists()
