"""`robust-ft register`: Model Registry versions, tags and aliases, on SQLite and on a server."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CONF, free_port, isolated_store, run_cli, synthetic_args, wait_http
from mlflow.tracking import MlflowClient

from robust_ft import sweep
from robust_ft.deploy import registry
from robust_ft.deploy.registry import alias_for

TINY = ["--synthetic", "--synthetic-size", "128,64", "--kinds", "defocus", "--levels", "0,2",
        "--first-n", "1", "--budget", "demo", "--name", "reg"]  # fmt: skip


def test_aliases():
    assert alias_for("clean", "0") == alias_for("defocus", "0") == "clean"
    assert alias_for("defocus", "2") == "defocus-L2"
    assert alias_for("defocus", "2.5") == "defocus-L2_5"
    assert alias_for("combined", "U(0,4)") == "combined-U0-4"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny sweep (its cells log checkpoints, not models) in a SQLite store."""
    d = tmp_path_factory.mktemp("registry")
    with isolated_store(d) as uri:
        sweep.main(TINY)
        yield uri


def _run_of(client, cell_suffix: str):
    exp = client.get_experiment_by_name("lenet5-synthetic")
    runs = client.search_runs([exp.experiment_id], f"tags.cell LIKE '%/{cell_suffix}'")
    return runs[0]


def test_register_run_twice_is_one_version(store):
    import mlflow

    c = MlflowClient(store)
    pre = _run_of(c, "pretrain/clean/L0")
    first = registry.main(["--run", pre.info.run_id])[0]
    again = registry.main(["--run", pre.info.run_id])[0]
    assert first.created and not again.created and first.version == again.version
    assert len(c.search_model_versions("name = 'lenet5-synthetic'")) == 1
    v = c.get_model_version_by_alias("lenet5-synthetic", "clean")
    assert str(v.version) == first.version and v.tags["method"] == "pretrain"
    assert v.tags["source_run"] == pre.info.run_id
    assert float(v.tags["test_error"]) == pytest.approx(
        pre.data.metrics["test/err/clean/L0"], abs=1e-3
    )
    model = mlflow.pyfunc.load_model("models:/lenet5-synthetic@clean")
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    assert model.predict(images).shape == (5, 10)


def test_register_from_sweep_with_advice(store, capsys):
    from robust_ft.deploy.advise import main as advise_main

    c = MlflowClient(store)
    capsys.readouterr()
    done = registry.main(["--from-sweep", "reg", "--advise"])
    out = capsys.readouterr().out
    assert {r.alias for r in done} == {"clean", "defocus-L2"}
    assert "@defocus-L2" in out and "models:/lenet5-synthetic/" in out
    v = c.get_model_version_by_alias("lenet5-synthetic", "defocus-L2")
    advice = advise_main(["--model", "lenet5", "--dataset", "synthetic", "--kind", "defocus",
                          "--level", "2", "--sweep", "reg"])  # fmt: skip
    method = advice["answer"]
    assert v.tags["method"] == ("pretrain" if method == "notrain" else method)
    before = len(c.search_model_versions("name = 'lenet5-synthetic'"))
    registry.main(["--from-sweep", "reg", "--advise"])
    assert len(c.search_model_versions("name = 'lenet5-synthetic'")) == before


def test_register_from_sweep_every_trained_cell(store):
    """Without --advise: every trained cell is a version (no new aliases but ``clean``)."""
    c = MlflowClient(store)
    done = registry.main(["--from-sweep", "reg"])
    methods = sorted(r.tags["method"] for r in done)
    assert methods == ["first-1", "first-1", "pretrain", "retrain"]
    assert {r.alias for r in done} == {"clean", None}
    versions = c.search_model_versions("name = 'lenet5-synthetic'")
    assert {v.run_id for v in versions} >= {r.tags["source_run"] for r in done}
    assert len(versions) == len({v.run_id for v in versions})  # one version per run


def test_unknown_run_is_a_clear_error(store, capsys):
    from robust_ft import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["register", "--run", "0" * 32])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"MLflow run {'0' * 32} does not exist" in err, err


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A real `mlflow server` (one worker, SQLite backend, proxied artifacts) on 127.0.0.1."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    import mlflow

    before = mlflow.get_tracking_uri()
    try:
        wait_http(f"{uri}/health", proc)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        yield uri
    finally:
        mlflow.set_tracking_uri(before)  # later tests must not talk to a stopped server
        proc.terminate()
        proc.wait(timeout=30)


def test_register_on_a_server(server):
    import mlflow

    res = run_cli(["fit", "--config", str(CONF / "lenet5_mnist.yaml"),
                   *synthetic_args(n_train=96, n_test=32), "--trainer.max_epochs", "1",
                   "--data.init_args.distortion.kind", "noise",
                   "--data.init_args.distortion.level", "3"])  # fmt: skip
    reg = registry.main(["--run", res.run_id])[0]
    assert (
        reg.alias == "noise-L3" and registry.main(["--run", res.run_id])[0].version == reg.version
    )
    c = MlflowClient(server)
    v = c.get_model_version_by_alias("lenet5-synthetic", "noise-L3")
    assert v.tags["kind"] == "noise" and v.tags["first_n"] == "all" and v.run_id == res.run_id
    model = mlflow.pyfunc.load_model("models:/lenet5-synthetic@noise-L3")
    images = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    assert model.predict(images).shape == (2, 10)
