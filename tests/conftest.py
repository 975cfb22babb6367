"""Shared fixtures: an isolated working directory with its own SQLite MLflow store."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

# Tests are tiny: one thread avoids OpenMP spin-waits on a busy 2-core machine (4x faster there).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory):
    """The session's own ``ROBUST_FT_CACHE_DIR`` (digests, decoded images, help texts): tests
    never read a user's cache nor write into it; processes they start inherit it."""
    before = os.environ.get("ROBUST_FT_CACHE_DIR")
    os.environ["ROBUST_FT_CACHE_DIR"] = str(tmp_path_factory.mktemp("robust-ft-cache"))
    yield
    if before is None:
        os.environ.pop("ROBUST_FT_CACHE_DIR", None)
    else:
        os.environ["ROBUST_FT_CACHE_DIR"] = before


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temp working directory whose MLflow store is ``sqlite:///<tmp>/mlflow.db``."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


SYNTH = "robust_ft.data.datamodules.SyntheticDataModule"


def synthetic_args(shape=(1, 28, 28), n_train=256, n_test=128, num_classes=10, batch=32):
    """CLI flags that swap a config's dataset for tiny synthetic data of a model's input shape."""
    return [
        "--data.class_path", SYNTH,
        "--data.init_args.image_shape", "[" + ",".join(map(str, shape)) + "]",
        "--data.init_args.n_train", str(n_train),
        "--data.init_args.n_test", str(n_test),
        "--data.init_args.num_classes", str(num_classes),
        "--data.init_args.batch_size", str(batch),
        "--data.init_args.root", "data",
    ]  # fmt: skip


def synthetic_yaml(cache: bool = True) -> str:
    """A config overlay that swaps in tiny synthetic LeNet-5 data (for commands that take --config)."""
    return f"""\
data:
  class_path: {SYNTH}
  init_args:
    image_shape: [1, 28, 28]
    num_classes: 10
    n_train: 256
    n_test: 64
    batch_size: 32
    val_split: 0.2
    cache: {str(cache).lower()}
    root: data
trainer:
  enable_progress_bar: false
"""


def run_cli(args: list[str], callbacks=()):
    """``robust-ft fit|test ...`` in-process: ``runner.run`` with the command line as the user's."""
    from robust_ft.runner import run

    return run(args[0], argv=args[1:], callbacks=callbacks)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 120) -> None:
    """Wait until ``url`` answers, failing at once if the server process ``proc`` exits."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


@contextlib.contextmanager
def isolated_store(directory: Path):
    """A module's own SQLite MLflow store in ``directory``: cwd, ``MLFLOW_TRACKING_URI`` and
    MLflow's fluent URI point at it inside the block and are restored after; yields the URI."""
    import mlflow

    mp = pytest.MonkeyPatch()
    mp.chdir(directory)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(before)
        mp.undo()


def fit_then_test(args: list[str], cwd, env: dict, timeout: float = 600) -> str:
    """``robust-ft fit`` (1 epoch) then ``robust-ft test`` with ``args`` as processes; both must
    succeed; their console output, joined."""
    import subprocess
    import sys

    out = ""
    for cmd in (["fit", *args, "--trainer.max_epochs", "1"], ["test", *args]):
        r = subprocess.run([sys.executable, "-m", "robust_ft", *cmd], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=timeout)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        out += r.stdout + r.stderr
    return out


def store_client(uri: str | None = None):
    """A plain ``MlflowClient`` of ``uri`` (default: the environment's) whose store's tables exist.

    Made here, before a test starts a robust-ft command on a fresh store: a plain client takes
    no initialisation lock, so creating the tables at the same moment as the command could clash.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    client.search_experiments()
    return client


def copy_checkout(dest: Path) -> Path:
    """A copy of the repository's tracked and new files (no outputs, no .venv) at ``dest``;
    symbolic links stay links (``conf`` links to the package's configs)."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for f in files:
        src, out = REPO / f, dest / f
        if not (src.is_symlink() or src.is_file()):
            continue  # deleted in the work tree, still in the index
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)
    return dest


def apt_install(*packages: str, recommends: bool = False) -> None:
    """``apt-get install`` the Debian packages (as root), updating the lists once if it fails."""
    import subprocess

    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *packages]
    cmd += [] if recommends else ["--no-install-recommends"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def open_fresh_store_at_once(uri: str, cwd: Path, n: int = 3) -> None:
    """``n`` processes open the fresh store ``uri`` at the same moment, each with one run: all
    of them exit cleanly and every run is FINISHED (the store's tables were created once)."""
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    code = ("import sys, time; time.sleep(max(0, float(sys.argv[1]) - time.time()))\n"
            "from robust_ft.tracking import tracked_run\n"
            "with tracked_run('fresh'): pass")  # fmt: skip
    start = str(time.time() + 6)
    procs = [subprocess.Popen([sys.executable, "-c", code, start], env=env, cwd=cwd,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]  # fmt: skip
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [e[-1500:] for e in errs]
    assert not any("Traceback" in e for e in errs), errs
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fresh").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * n


def release_together(procs, here: Path, ready: str, go: str = "go") -> None:
    """Touch the file ``here/go`` once every process has touched a file matching ``ready``
    (processes that wait for ``go`` after their imports then start one thing at the same instant,
    under any machine load)."""
    import time

    deadline = time.time() + 300
    while len(list(here.glob(ready))) < len(procs):
        assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs]
        assert time.time() < deadline, "the processes did not get ready"
        time.sleep(0.05)
    (here / go).touch()


def pytest_collection_modifyitems(config, items):
    """The Docker tests run last: building the image takes the most disk (~10 GB) and time,
    and a machine short of either then fails or skips them without touching the others."""
    items.sort(key=lambda item: item.path.name == "test_docker.py")
