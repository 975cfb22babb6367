"""MySQL/MariaDB as the tracking store: a fresh database's tables are created by one process at a
time under the server's named lock (``GET_LOCK``), and a lock that stays held is reported.

MariaDB (Debian ``mariadb-server``) is installed with apt-get when missing (root) and a throwaway
server runs on 127.0.0.1:<free port> with a password user, as the PostgreSQL tests do.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import apt_install, free_port, open_fresh_store_at_once

pytestmark = pytest.mark.slow  # server install/start-up and MLflow's migrations: ~1-2 min

USER = "robust"


def _ensure_mariadb() -> str:
    """The server binary: installed with apt-get when missing (as root)."""
    found = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        apt_install("mariadb-server")
        found = shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.skip("no MariaDB server (apt-get install mariadb-server, as root)")
    return found


@pytest.fixture(scope="module")
def mariadb():
    """A throwaway MariaDB server on 127.0.0.1:<free port>; yields a function that makes a new
    database and returns its ``mysql+pymysql://`` URI (user ``robust`` with a password)."""
    if importlib.util.find_spec("pymysql") is None:
        pytest.fail("pymysql is not installed: SQLAlchemy opens mysql+pymysql:// URLs with it "
                    "(pip install 'pymysql>=1.1,<2')")  # fmt: skip
    server = _ensure_mariadb()
    root = Path(tempfile.mkdtemp(prefix="robust-ft-mariadb-"))
    data, sock, port = root / "data", root / "sock", free_port()
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    run = dict(check=True, capture_output=True, text=True)
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", *as_root,
                    "--auth-root-authentication-method=socket", "--skip-test-db"], **run)  # fmt: skip
    proc = subprocess.Popen(
        [server, "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
         "--bind-address=127.0.0.1", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0",
         f"--pid-file={root / 'pid'}", f"--log-error={root / 'err.log'}", *as_root],
    )  # fmt: skip
    password = secrets.token_hex(12)
    client = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root"]
    try:
        deadline = time.time() + 120
        while subprocess.run([*client, "-e", "select 1"], capture_output=True).returncode != 0:
            assert proc.poll() is None, (root / "err.log").read_text()[-2000:]
            assert time.time() < deadline, "MariaDB did not start in 120 s"
            time.sleep(0.5)
        sql = (f"create user '{USER}'@'127.0.0.1' identified by '{password}'; "
               f"grant all on *.* to '{USER}'@'127.0.0.1';")  # fmt: skip
        subprocess.run([*client, "-e", sql], **run)

        def database(name: str) -> str:
            subprocess.run([*client, "-e", f"create database {name}"], **run)
            return f"mysql+pymysql://{USER}:{password}@127.0.0.1:{port}/{name}"

        yield database
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_processes_starting_at_once_on_a_fresh_mysql_store(mariadb, tmp_path):
    """Three processes open one fresh MariaDB store at the same moment: MLflow's table creation
    runs in one of them at a time (the named lock), and each one's run finishes."""
    open_fresh_store_at_once(mariadb("fresh"), tmp_path)


def test_an_initialisation_lock_held_too_long_is_named(mariadb, monkeypatch):
    """A process that holds the store's initialisation lock (e.g. hung mid-migration) makes the
    next one stop after the wait with an error that names the lock and the fix, no password."""
    import pymysql
    from sqlalchemy.engine import make_url

    import robust_ft.stores as stores

    uri = mariadb("held")
    url = make_url(uri)
    holder = pymysql.connect(host=url.host, port=url.port, user=url.username,
                             password=url.password, database=url.database)  # fmt: skip
    try:
        with holder.cursor() as cur:
            cur.execute("select get_lock(%s, 0)", (stores.MYSQL_INIT_LOCK,))
            assert cur.fetchone() == (1,)
        monkeypatch.setattr(stores, "INIT_LOCK_WAIT_S", 2)
        start = time.monotonic()
        with pytest.raises(stores.TrackingError) as err:
            stores.open_store(uri)
        took = time.monotonic() - start
    finally:
        holder.close()
    text = str(err.value)
    assert f"named lock {stores.MYSQL_INIT_LOCK}" in text and "stayed held" in text, text
    assert "***" in text and url.password not in text, text
    assert 2 <= took < 30, took
    stores.open_store(uri)  # the holder is gone: the lock is free and the store opens
