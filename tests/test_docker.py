"""docker/: the compose file and the image.

Fast: the compose file's services, health checks, restart policies and GPU reservation (and
``docker compose config`` where a compose client is installed); the entry point and the
.dockerignore agree with the code. Slow: the image built from scratch with a locally started
``dockerd`` (Debian ``docker.io``) on an ``mmdebstrap`` base, then ``robust-ft --help`` and a
2-process DDP fast_dev_run on the Debian package's Fashion-MNIST inside it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, apt_install, free_port

DOCKER_DIR = REPO / "docker"
IMAGE = "robust-ft:test"
PG_IMAGE = "robust-ft-postgres:test"
BASE = "robust-ft-base:bookworm"
# Wheels for the image, downloaded on the host (its proxy and CA settings apply) and kept
# between runs; the build installs only these (no index), so it needs no TLS from inside.
WHEELHOUSE = Path(os.environ.get("ROBUST_FT_WHEELHOUSE", REPO / ".cache" / "wheelhouse"))


def _compose() -> dict:
    return yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())


# ----------------------------------------------------------------- fast: files agree
def test_compose_stack_structure():
    c = _compose()
    services = c["services"]
    assert {"postgres", "mlflow", "trainer", "trainer-cpu", "tuner"} <= set(services)
    for name in ("postgres", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "unless-stopped"
    for name in ("trainer", "trainer-cpu", "tuner"):
        s = services[name]
        assert s["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert s["depends_on"]["mlflow"]["condition"] == "service_healthy"
        assert s["restart"].startswith("on-failure")
        assert {"data:/app/data", "outputs:/app/outputs"} <= set(s["volumes"])
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("trainer", "tuner"):  # every GPU of the machine
        (dev,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert dev == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert "--trainer.devices auto --trainer.strategy ddp" in services["trainer"]["command"]
    mlflow = services["mlflow"]
    assert "--serve-artifacts" in mlflow["command"]
    assert "/mlartifacts" in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "postgres:5432/optuna" in services["tuner"]["command"]
    assert set(c["volumes"]) == {"pgdata", "mlartifacts", "data", "outputs"}
    assert (DOCKER_DIR / "postgres-init" / "10-optuna.sql").read_text().count("CREATE DATABASE")


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return [shutil.which("docker-compose")] if shutil.which("docker-compose") else None


def test_compose_config_validates():
    client = _compose_client()
    if client is None:  # a fresh machine: install the Debian package (as the docker fixture does)
        apt_install("docker-compose")
        client = _compose_client()
    assert client is not None, "docker-compose is not on PATH after apt-get install docker-compose"
    env = {**os.environ, "POSTGRES_PASSWORD": "0123abcd"}
    r = subprocess.run(
        [*client, "-f", str(DOCKER_DIR / "compose.yaml"), "--profile", "gpu", "--profile", "cpu",
         "--profile", "tune", "config"], capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "postgresql://robust:0123abcd@postgres:5432/mlflow" in r.stdout
    # without a password the stack refuses to start instead of using a default one
    env.pop("POSTGRES_PASSWORD")
    r = subprocess.run([*client, "-f", str(DOCKER_DIR / "compose.yaml"), "config"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode != 0 and "POSTGRES_PASSWORD" in r.stderr


def test_entrypoint_routes_every_robust_ft_command():
    from robust_ft.cli import COMMANDS, LIGHTNING_COMMANDS

    text = (DOCKER_DIR / "entrypoint.sh").read_text()
    case = re.search(r'""\s*\|(.*)\)\s*\n\s*exec robust-ft', text).group(1)
    routed = {w.strip() for w in case.split("|")} - {"-h", "--help"}
    assert routed == set(COMMANDS) | set(LIGHTNING_COMMANDS)


def test_dockerignore_is_an_allowlist_of_what_the_image_copies():
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [x for x in lines if x and not x.startswith("#")]
    assert rules[0] == "*"
    allowed = {x[1:].rstrip("/") for x in rules if x.startswith("!")}
    copied = set()
    for line in (DOCKER_DIR / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copied |= {w for w in line.split()[1:-1] if not w.startswith("--")}
    assert copied == allowed
    for never in (".venv", ".git", "data", "outputs", "mlflow.db", "mlruns"):
        assert never not in allowed


# ----------------------------------------------------------------- slow: build and run
def _run(cmd, timeout, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def docker(tmp_path_factory):
    """A docker client whose daemon runs; starts ``dockerd`` (and stops it after) if needed."""
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (dockerd, mmdebstrap)")
    tools = (("docker.io", "dockerd"), ("mmdebstrap", "mmdebstrap"),
             ("docker-compose", "docker-compose"))  # fmt: skip
    missing = [p for p, tool in tools if not shutil.which(tool)]
    if missing:
        apt_install(*missing)
    client = shutil.which("docker")
    started = None
    if subprocess.run([client, "info"], capture_output=True).returncode != 0:
        run = tmp_path_factory.mktemp("dockerd")
        log = open(run / "dockerd.log", "w")  # noqa: SIM115
        started = subprocess.Popen(
            ["dockerd", "--pidfile", str(run / "dockerd.pid")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 120
        while subprocess.run([client, "info"], capture_output=True).returncode != 0:
            if started.poll() is not None or time.time() > deadline:
                pytest.fail("dockerd did not start:\n" + (run / "dockerd.log").read_text()[-3000:])
            time.sleep(1)
    try:
        yield client
    finally:
        if started is not None:
            started.terminate()
            try:
                started.wait(timeout=60)
            except subprocess.TimeoutExpired:
                started.kill()


# What a first build of the image takes on the disk of Docker's data root: the CUDA torch layer
# (5.8 GB), the other dependencies (1 GB), pip's downloads inside the build while it installs
# (2.7 GB), the PostgreSQL image (0.6 GB) and a margin.
IMAGE_BUILD_GB = 12


def _free_gb(path: str) -> float:
    return shutil.disk_usage(path).free / 1e9


@pytest.fixture(scope="module")
def image(docker):
    """robust-ft's image: the mmdebstrap base (unless present), then docker/build-image.sh from
    a host wheelhouse with the default (PyPI, CUDA-carrying) torch. Built images are removed
    after the module when the disk is short, so the tests after it keep room to run."""
    env = {**os.environ, "DOCKER": docker, "DOCKER_BUILDKIT": "0", "PYTHON": sys.executable,
           "DOCKER_BUILD_ARGS": "--force-rm"}  # fmt: skip
    root = _run([docker, "info", "-f", "{{.DockerRootDir}}"], 60).stdout.strip()
    present = subprocess.run([docker, "image", "inspect", IMAGE], capture_output=True)
    if present.returncode != 0 and _free_gb(root) < IMAGE_BUILD_GB:
        # Disk is the one thing a test cannot install: say so, with the numbers and the fix.
        pytest.skip(
            f"building robust-ft's image needs ~{IMAGE_BUILD_GB} GB free under {root}; "
            f"this machine has {_free_gb(root):.1f} GB: free some space or point dockerd's "
            "--data-root at a bigger disk"
        )
    if subprocess.run([docker, "image", "inspect", BASE], capture_output=True).returncode != 0:
        _run([str(DOCKER_DIR / "build-base.sh"), BASE], 900, env=env)
    try:
        _run([str(DOCKER_DIR / "wheelhouse.sh"), str(WHEELHOUSE)], 900, env=env)
        _run([str(DOCKER_DIR / "build-image.sh"), IMAGE], 1200,
             env={**env, "WHEELHOUSE": str(WHEELHOUSE), "BASE": BASE})  # fmt: skip
        yield docker
    finally:
        if _free_gb(root) < IMAGE_BUILD_GB:
            subprocess.run([docker, "image", "rm", "-f", IMAGE, PG_IMAGE], capture_output=True)
            subprocess.run([docker, "image", "prune", "-f"], capture_output=True)


@pytest.mark.slow
def test_image_runs_help_and_ddp_fast_dev_run(image, tmp_path):
    docker = image
    run = [docker, "run", "--rm", "--network", "none", IMAGE]
    out = _run([*run, "--help"], 300).stdout
    assert "usage: robust-ft COMMAND" in out and "fit" in out
    info = _run([*run, "sh", "-c", "id -u; ls /usr/share/datasets/fashion-mnist; "
                 "python -c 'import psycopg, mlflow, robust_ft; print(\"imports ok\")'"],
                300).stdout  # fmt: skip
    assert info.splitlines()[0] == "1000"  # not root
    assert "train-images-idx3-ubyte.gz" in info and "imports ok" in info

    # 2 DDP ranks on CPU under tini, on the Debian package's Fashion-MNIST, tracked in SQLite
    # in a mounted outputs directory
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    outputs.chmod(0o777)
    fit = [docker, "run", "--rm", "--network", "none", "--shm-size", "1g",
           "-v", f"{outputs}:/app/outputs", IMAGE,
           "fit", "--config", "conf/lenet5_fashion_mnist.yaml", "--trainer.fast_dev_run", "2",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--data.init_args.train_subset", "2000", "--data.init_args.test_subset", "400"]  # fmt: skip
    r = _run(fit, 600)
    # rank 0 prints the test grid once (the smoke run tests the clean set only)
    assert r.stdout.count("Test error (%), lenet5 on fashion_mnist:") == 1, r.stdout[-2000:]
    assert "| clean | " in r.stdout, r.stdout[-2000:]
    # the image's MLflow may be newer than ours: read its store with plain SQL
    with sqlite3.connect(outputs / "mlflow.db") as db:
        runs = db.execute("select status, name from runs").fetchall()
    assert len(runs) == 1 and runs[0][0] == "FINISHED", runs  # one run for the 2 ranks


@pytest.mark.slow
def test_compose_stack_trains_and_tracks(image, tmp_path):
    """docker/compose.yaml brought up for real (profile cpu): PostgreSQL (built from Debian's
    package: no registry here), the MLflow server on it, and trainer-cpu; the run lands in the
    server with its checkpoints, the Optuna database exists."""
    docker = image
    pg_image = PG_IMAGE
    _run([docker, "build", "--network", "host", "-f", str(DOCKER_DIR / "postgres.Dockerfile"),
          "-t", pg_image, "--build-arg", f"BASE={BASE}", str(DOCKER_DIR)], 900,
         env={**os.environ, "DOCKER_BUILDKIT": "0"})  # fmt: skip
    port = free_port()
    password = secrets.token_hex(12)
    env_file = tmp_path / "stack.env"
    env_file.write_text(
        f"POSTGRES_PASSWORD={password}\nROBUST_FT_IMAGE={IMAGE}\nPOSTGRES_IMAGE={pg_image}\n"
        f"MLFLOW_PUBLISH=127.0.0.1:{port}\n"
        "TRAIN_ARGS=fit --config conf/lenet5_fashion_mnist.yaml --trainer.accelerator cpu "
        "--trainer.devices 1 --trainer.max_epochs 1 --data.init_args.train_subset 1000 "
        "--data.init_args.test_subset 500 --trainer.enable_progress_bar false\n"
    )
    compose = [*_compose_client(), "-p", f"rft-test-{os.getpid()}", "-f",
               str(DOCKER_DIR / "compose.yaml"), "--env-file", str(env_file)]  # fmt: skip
    try:
        _run([*compose, "--profile", "cpu", "up", "-d"], 600)
        trainer = _run([*compose, "--profile", "cpu", "ps", "-q", "trainer-cpu"], 60).stdout.strip()
        deadline = time.time() + 600
        while True:
            state = _run([docker, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                          trainer], 60).stdout.split()  # fmt: skip
            if state[0] == "exited" or time.time() > deadline:
                break
            time.sleep(3)
        logs = subprocess.run([docker, "logs", "--tail", "40", trainer], capture_output=True,
                              text=True)  # fmt: skip
        logs = logs.stdout + logs.stderr
        assert state == ["exited", "0"], logs[-3000:]

        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.get_experiment_by_name("lenet5-fashion_mnist")
        (run,) = client.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
        ckpts = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert ckpts == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}
        psql = ["psql", "-U", "robust", "-d", "mlflow", "-tAc", "select datname from pg_database"]
        dbs = _run([*compose, "exec", "-T", "postgres", *psql], 60).stdout.split()
        assert {"mlflow", "optuna"} <= set(dbs)
    finally:
        subprocess.run([*compose, "--profile", "cpu", "down", "-v"], capture_output=True,
                       timeout=300)  # fmt: skip


@pytest.mark.slow
def test_compose_imagenet_command_runs_on_a_read_only_dataset(image, tmp_path):
    """The compose ``trainer-imagenet`` command (Table 1), in the image with the service's mounts
    and environment, on a small generated JPEG tree mounted read-only, on the CPU: without the
    published weights it says how to get them; with random weights it streams and tests clean and
    combined U(0,4), top-1 and top-5. Only the tracking store (SQLite in outputs) and the CPU
    flags differ from the service."""
    from robust_ft.data.make_folder import make_folder

    docker = image
    svc = _compose()["services"]["trainer-imagenet"]
    command = re.fullmatch(r"\$\{IMAGENET_ARGS:-(.*)\}", svc["command"]).group(1).split()
    env = [f"{k}={v}" for k, v in svc["environment"].items() if k != "MLFLOW_TRACKING_URI"]
    root = make_folder(tmp_path / "imagenet", classes=3, train_per_class=6, val_per_class=3,
                       size=64, mode="RGB", fmt="jpg")  # fmt: skip
    mounts = {"/app/data": tmp_path / "data", "/app/outputs": tmp_path / "outputs",
              "/models/torch": tmp_path / "torch"}  # fmt: skip
    for path in mounts.values():
        path.mkdir()
        path.chmod(0o777)
    volumes = [f"{host}:{inside}" for inside, host in mounts.items()]
    volumes.append(f"{root}:/datasets/imagenet:ro")
    assert {v.split(":", 1)[1] for v in volumes} >= {
        v.split(":", 1)[1] for v in svc["volumes"] if not v.startswith("$")
    }
    run = [docker, "run", "--rm", "--network", "none", "--shm-size", "1g",
           *(f"-v{v}" for v in volumes), *(f"-e{e}" for e in env), IMAGE, *command,
           "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
           "--data.init_args.num_workers", "1", "--data.init_args.batch_size", "6",
           "--data.init_args.val_split", "0.2", "--data.init_args.num_classes", "12",
           "--data.init_args.stream", "true", "--trainer.max_epochs", "1",
           "--trainer.enable_progress_bar", "false", "--tracking.log_model", "false"]  # fmt: skip
    missing = subprocess.run(run, capture_output=True, text=True, timeout=600)
    out = missing.stdout + missing.stderr
    assert missing.returncode != 0 and "pretrained false" in out and "Traceback" not in out, out
    done = _run([*run, "--model.pretrained", "false"], 900)
    assert "| combined |" in done.stdout, done.stdout[-2000:]
    with sqlite3.connect(mounts["/app/outputs"] / "mlflow.db") as db:
        (status,) = db.execute("select status from runs where name like 'first-3%'").fetchone()
        keys = {k for (k,) in db.execute("select key from latest_metrics")}
    assert status == "FINISHED"
    assert {"test/err/clean/L0", "test/err5/combined/LU0-4"} <= keys
    assert not list(root.rglob("*.bin")) and list((tmp_path / "data").rglob("index.json"))
