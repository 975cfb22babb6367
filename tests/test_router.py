"""`robust-ft build-router`: the routing pyfunc model, in process and served over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import free_port, isolated_store

from robust_ft import sweep
from robust_ft.deploy import estimate, registry, router
from robust_ft.deploy.router import choose, routes_of

TINY = ["--synthetic", "--synthetic-size", "128,64", "--kinds", "defocus,noise", "--levels",
        "0,2", "--first-n", "4", "--no-retrain", "--budget", "demo", "--name", "rt"]  # fmt: skip


def test_routes_and_choice():
    routes = routes_of(["clean", "defocus-L1", "defocus-L3", "noise-L2_5", "combined-U0-4"])
    assert routes == {"clean": ("clean", 0.0), "defocus-L1": ("defocus", 1.0),
                      "defocus-L3": ("defocus", 3.0), "noise-L2_5": ("noise", 2.5)}  # fmt: skip
    assert choose(routes, "defocus", 2.4) == "defocus-L3"
    assert choose(routes, "noise", 0.7) == "noise-L2_5"
    assert choose(routes, "motion", 2.0) == choose(routes, "clean", 0.0) == "clean"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny sweep's advised models, a smoke-sized estimator, and the router, in SQLite."""
    d = tmp_path_factory.mktemp("router")
    with isolated_store(d) as uri:
        sweep.main(TINY)
        registry.main(["--from-sweep", "rt", "--advise"])
        estimate.main(["--train", "--epochs", "1", "--train-images", "2000"])
        name, version, routes = router.main(["--model", "lenet5", "--dataset", "synthetic"])
        yield uri, name, routes, d


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def test_router_predicts_any_batch(built):
    import mlflow

    uri, name, routes, _ = built
    assert name == "lenet5-synthetic-router" and set(routes) == {"clean", "defocus-L2", "noise-L2"}
    model = mlflow.pyfunc.load_model(f"models:/{name}@current")
    clean = mlflow.pytorch.load_model("models:/lenet5-synthetic@clean")
    for n in (1, 2, 128):
        out = model.predict(_images(n))
        assert list(out.columns) == ["class", "route", "probabilities"] and len(out) == n
        assert set(out.route) <= set(routes)
        probs = np.stack(out.probabilities)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
        assert (probs.argmax(1) == out["class"]).all()
    out = model.predict(_images(128))
    on_clean = np.flatnonzero(out.route == "clean")
    if len(on_clean):
        import torch

        with torch.no_grad():
            expected = clean(torch.from_numpy(_images(128)[on_clean])).softmax(1).numpy()
        np.testing.assert_allclose(
            np.stack(out.probabilities[on_clean]), expected, rtol=1e-4, atol=1e-6
        )


def _post(url: str, images: np.ndarray) -> dict:
    body = json.dumps({"inputs": images.tolist()}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_http(built):
    uri, name, routes, d = built
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@current",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]  # fmt: skip
    # uvicorn is started by name: the venv's bin/ must be on PATH (as in an activated venv)
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                break
            except OSError:
                assert time.time() < deadline, "the model server did not answer in 180 s"
                time.sleep(1)
        for n in (1, 128):
            preds = _post(f"http://127.0.0.1:{port}/invocations", _images(n))["predictions"]
            assert len(preds) == n
            assert {p["route"] for p in preds} <= set(routes)
            assert all(len(p["probabilities"]) == 10 and 0 <= p["class"] < 10 for p in preds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_compose_serve_service():
    """docker/compose.yaml's ``serve`` (profile serve) serves the router from the stack's MLflow."""
    import shutil

    import yaml
    from conftest import REPO

    compose = REPO / "docker" / "compose.yaml"
    s = yaml.safe_load(compose.read_text())["services"]["serve"]
    assert (
        s["profiles"] == ["serve"]
        and s["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    )
    assert s["command"].startswith("mlflow models serve -m models:/")
    assert (
        "lenet5-fashion_mnist-router@current" in s["command"]
        and "--env-manager local" in s["command"]
    )
    assert "/ping" in " ".join(s["healthcheck"]["test"])
    assert s["depends_on"]["mlflow"]["condition"] == "service_healthy"
    client = shutil.which("docker-compose")
    if client is None:
        pytest.skip("docker-compose is not installed (tests/test_docker.py installs it)")
    env = {**os.environ, "POSTGRES_PASSWORD": "0123abcd", "SERVE_MODEL": "m@a"}
    r = subprocess.run([client, "-f", str(compose), "--profile", "serve", "config"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "models:/m@a" in r.stdout


def test_routing_benchmark_test_set_and_oracle():
    """benchmarks/routing.py: each image its own kind and level; level 0 untouched; the oracle
    uses the router's members."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("routing", REPO / "benchmarks" / "routing.py")
    routing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(routing)
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    x, kinds, levels = routing.mixed_test_set(images, seed=3)
    again, _, _ = routing.mixed_test_set(images, seed=3)
    assert (x == again).all() and set(levels) <= {0, 1, 2, 3, 4} and len(set(kinds)) > 1
    assert (x[levels == 0] == images[levels == 0]).all()
    assert (x[levels > 0] != images[levels > 0]).any(axis=(1, 2, 3)).mean() > 0.9
    routes = routes_of(["clean", "noise-L2", "noise-L4"])
    assert routing.oracle_alias(routes, "noise", 0) == "clean"
    assert routing.oracle_alias(routes, "noise", 3) in ("noise-L2", "noise-L4")
    assert routing.oracle_alias(routes, "motion", 3) == "clean"
