"""The MLflow UI shows a sweep's runs with their metrics: `mlflow server` + headless Chromium.

Chromium is driven over the DevTools protocol (``--virtual-time-budget`` never returns on the
MLflow UI, which keeps polling). The page is the sweep's saved view (experiment tag
``mlflow.sharedViewState.<sweep_key>``, written by the sweep). By default the test runs a tiny
synthetic sweep; ``ROBUST_FT_UI_STORE=<path to mlflow.db>`` points it at an existing store
instead, and ``ROBUST_FT_UI_SCREENSHOT=<dir>`` keeps the screenshots there (docs/mlflow_ui.png and
docs/mlflow_ui_charts.png are made with the Fashion-MNIST sweep's store).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import apt_install, free_port, wait_http
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def _chromium() -> str:
    """The Chromium binary; installed with apt-get when missing (a failed install fails the
    test, like the other tests' servers); skips only where nothing can be installed."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is missing and cannot be installed (not root or no apt-get)")
    apt_install("chromium", recommends=True)  # its fonts: the page's text is what is checked
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium, but no `chromium` is on PATH"
    return found


async def _browse(chromium: str, url: str, expect: list[str], timeout: float) -> tuple[str, bytes]:
    """Open ``url`` in headless Chromium, wait until ``expect`` is on the page; text and PNG."""
    import aiohttp

    profile = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "--window-size=1700,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file, deadline = Path(profile) / "DevToolsActivePort", time.time() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.time() < deadline, "chromium did not start"
            await asyncio.sleep(0.2)
        port = port_file.read_text().split()[0]
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        ws_url = next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"]
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 1 << 30))

            async def call(method: str, **params) -> dict:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                while (msg := await ws.receive_json()).get("id") != n:
                    pass
                return msg.get("result", {})

            async def js(expr: str):
                r = await call("Runtime.evaluate", expression=expr, returnByValue=True)
                return r.get("result", {}).get("value")

            await call("Page.navigate", url=url)
            text = ""
            while time.time() < deadline and not all(e in text for e in expect):
                await asyncio.sleep(1)
                text = await js("document.body ? document.body.innerText : ''") or ""
            # tidy the picture: hide the shared-view banner and the assistant panel
            await js("for (const l of ['Hide banner', 'Close'])"
                     " document.querySelector(`button[aria-label='${l}']`)?.click()")  # fmt: skip
            await asyncio.sleep(1.5)
            shot = await call("Page.captureScreenshot", format="png")
            return text, base64.b64decode(shot["data"])
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A SQLite store holding a sweep: ROBUST_FT_UI_STORE, else a tiny synthetic sweep."""
    if os.environ.get("ROBUST_FT_UI_STORE"):
        return Path(os.environ["ROBUST_FT_UI_STORE"]).resolve()
    from robust_ft import sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    sweep.main(["--synthetic", "--synthetic-size", "128,64", "--kinds", "defocus", "--levels",
                "0,2", "--first-n", "1", "--budget", "demo", "--name", "ui"])  # fmt: skip
    return tmp_path / "mlflow.db"


@pytest.fixture
def server(store, tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 over the store; its base URL."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{store}", "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", proc, 180)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _sweep_runs(client: MlflowClient):
    """The sweep's parent and its FINISHED cell runs."""
    exps = [e.experiment_id for e in client.search_experiments()]
    parent = client.search_runs(exps, "tags.sweep_role = 'parent'", max_results=1)[0]
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return parent, [r for r in runs if r.info.status == "FINISHED"]


def _keep(png: bytes, tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(png)
    if os.environ.get("ROBUST_FT_UI_SCREENSHOT"):  # docs/: ROBUST_FT_UI_SCREENSHOT=docs
        Path(os.environ["ROBUST_FT_UI_SCREENSHOT"], name).write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000


def test_experiment_view_shows_error_columns_of_every_run(store, server, tmp_path):
    """The page robust-ft prints (the experiment's own view): runs by name, the error columns
    and their values, with no click."""
    from robust_ft.ui import view_fragment

    chromium = _chromium()
    client = MlflowClient(server)
    parent, runs = _sweep_runs(client)
    assert runs
    url = f"{server}/{view_fragment(parent.info.experiment_id)}"
    names = sorted(r.info.run_name for r in runs)[:8]  # the view sorts by name: 1st screen
    text, png = asyncio.run(_browse(chromium, url, [*names, "test/err/clean/L0"], 150))
    _keep(png, tmp_path, "mlflow_ui.png")
    missing = [n for n in names if n not in text]
    assert not missing, f"runs not listed: {missing}\n{text[:2000]}"
    assert "test/err/clean/L0" in text
    shown = [float(x) for x in re.findall(r"\d+\.\d+", text)]
    for r in runs:
        if r.info.run_name in names:
            value = r.data.metrics["test/err/clean/L0"]
            assert any(abs(value - x) < 0.01 for x in shown), (r.info.run_name, value)


def test_chart_view_compares_runs_as_bars(store, server, tmp_path):
    """The chart view of the sweep's page: one bar chart per test set, opened first, with a
    bar per run (the test errors are logged at step 0 in every run)."""
    from robust_ft.ui import view_fragment

    chromium = _chromium()
    client = MlflowClient(server)
    parent, runs = _sweep_runs(client)
    key = parent.data.tags["sweep_key"]
    for r in runs:  # one value per run at one step: what the chart draws as bars
        history = client.get_metric_history(r.info.run_id, "test/err/clean/L0")
        assert [m.step for m in history] == [0], r.info.run_name
    url = f"{server}/{view_fragment(parent.info.experiment_id, key, charts=True)}"
    text, png = asyncio.run(_browse(chromium, url, ["test error (%)", "test/err/clean/L0"], 150))
    _keep(png, tmp_path, "mlflow_ui_charts.png")
    assert "test error (%)" in text and "test/err/clean/L0" in text, text[:2000]
    head = text[: text.index("test/err/clean/L0") + 200]
    assert "gradvar" not in head, "the error charts come first"
