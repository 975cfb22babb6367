"""No secret of a tracking URI or Optuna storage is shown, logged or stored, for every URL form
the drivers accept (parsed by SQLAlchemy's ``make_url`` and ``urllib``, as the drivers do)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from conftest import fit_then_test, free_port

from robust_ft.stores import redact, scrub, secrets_of, ui_command

SECRET = "s3cr:t@/?#%pw"
ENC = quote(SECRET, safe="")
TOKEN = "tok-9f8e7d6c5b4a"

# (URL, what its redaction must still show)
FORMS = [
    (f"postgresql://robust:{ENC}@db.example:5432/mlflow", "postgresql://robust:***@db.example:5432/mlflow"),
    (f"postgresql+psycopg2://robust:{ENC}@db:5432/mlflow?sslmode=require", "sslmode=require"),
    (f"postgresql+psycopg://robust:{ENC}@db/mlflow?sslpassword={TOKEN}", "sslpassword=***"),
    (f"postgresql://robust@db/mlflow?password={TOKEN}&application_name=x", "password=***"),
    (f"postgres://robust:{ENC}@db/optuna", "postgres://robust:***@db/optuna"),
    (f"mysql+pymysql://root:{ENC}@db:3306/mlflow?charset=utf8mb4", "charset=utf8mb4"),
    (f"mariadb+mariadbconnector://root:{ENC}@db/mlflow", "root:***@db"),
    (f"mssql+pyodbc://sa:{ENC}@dsn?driver=ODBC+Driver+18", "sa:***@dsn"),
    (f"oracle+oracledb://scott:{ENC}@db:1521/?service_name=orcl", "service_name=orcl"),
    ("postgresql://robust:pa@ss@db/mlflow", "robust:***@db/mlflow"),  # a raw '@' in the password
    ("postgresql://robust:s3cr#t/pw@db/mlflow", "robust:***@db"),  # raw '#' and '/'
    (f"postgresql://robust:{ENC}@db:port/mlflow", "postgresql://"),  # unparsable: scheme only
    (f"http://alice:{ENC}@mlflow.example:5000", "http://alice:***@mlflow.example:5000"),
    (f"https://{TOKEN}@mlflow.example/", "https://***@mlflow.example/"),
    (f"https://mlflow.example/?token={TOKEN}&experiment=1", "experiment=1"),
    (f"https://mlflow.example/?access_token={TOKEN}", "access_token=***"),
    (f"http://alice:{TOKEN}@127.0.0.1:5000/?api_key={TOKEN}", "alice:***@127.0.0.1:5000"),
]  # fmt: skip
PLAIN = ["sqlite:////tmp/x/mlflow.db", "sqlite:///mlflow.db", "journal:./optuna.log",
         "http://127.0.0.1:5000", "postgresql://robust@db/mlflow?sslmode=require"]  # fmt: skip


def _pieces(url: str) -> list[str]:
    """The secret as written in the URL, decoded, and its longer fragments."""
    if TOKEN in url:
        return [TOKEN]
    if "pa@ss" in url:
        return ["pa@ss", "@ss@"]
    if "s3cr#t" in url:
        return ["s3cr#t/pw", "s3cr"]
    return [SECRET, ENC, "s3cr"]


@pytest.mark.parametrize(
    "url,shown", FORMS, ids=[f[0].split(":")[0] + str(i) for i, f in enumerate(FORMS)]
)
def test_redact_hides_every_secret_and_keeps_the_rest(url, shown):
    out = redact(url)
    assert shown in out, out
    assert not any(p in out for p in _pieces(url)), out
    text = f"cannot connect to {url} (password {_pieces(url)[0]} rejected)"
    scrubbed = scrub(text, [url])
    assert not any(p in scrubbed for p in _pieces(url)), scrubbed
    command = ui_command(url)
    assert not any(p in command for p in _pieces(url)), command
    if not url.startswith("http"):
        assert '"$MLFLOW_TRACKING_URI"' in command


@pytest.mark.parametrize("url", PLAIN)
def test_urls_without_secrets_are_shown_as_they_are(url):
    assert redact(url) == url and not secrets_of(url)
    if url.startswith("sqlite"):
        assert url in ui_command(url)


def test_console_lines_are_scrubbed(monkeypatch, capsys):
    import logging

    from robust_ft.console import console_logging

    url = f"postgresql://robust:{ENC}@db/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    console_logging()
    logging.getLogger("robust_ft").info("store %s, password %s", url, SECRET)
    err = capsys.readouterr().err
    assert "robust:***@db/mlflow" in err and SECRET not in err and ENC not in err


@pytest.mark.slow  # an `mlflow server` and a tiny fit and test through it: ~1 min
def test_no_secret_of_the_tracking_uri_in_a_real_runs_output_params_tags_or_artifacts(tmp_path):
    """Credentials in an http(s) tracking URI (``user:password@``): the fit's and test's console,
    the run's params, tags and artifacts, and every file written hold none of them."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from conftest import CONF, synthetic_args
    from mlflow.tracking import MlflowClient

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--serve-artifacts",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server"
                time.sleep(1)
        uri = f"http://alice:{ENC}@127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
        env.pop("MLFLOW_RUN_ID", None)
        args = ["--config", str(CONF / "lenet5_mnist.yaml"),
                *synthetic_args(n_train=64, n_test=32), "--tracking.log_model", "false"]  # fmt: skip
        out = fit_then_test(args, work, env, timeout=300)
        assert "alice:***@127.0.0.1" in out or "open http://alice:***@" in out, out[-2000:]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.get_experiment_by_name("lenet5-synthetic")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 2
        stored = repr([(r.data.params, r.data.tags) for r in runs])
        for run in runs:
            for f in client.list_artifacts(run.info.run_id):
                if not f.is_dir:
                    local = client.download_artifacts(run.info.run_id, f.path, str(tmp_path))
                    stored += Path(local).read_text(errors="ignore")
        written = "".join(p.read_text(errors="ignore") for p in work.rglob("*") if p.is_file())
        for text in (out, stored, written):
            assert SECRET not in text and ENC not in text and "s3cr" not in text
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
