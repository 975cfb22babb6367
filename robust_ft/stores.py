"""Tracking stores and Optuna storages by URL: their secrets kept out of sight, and opened fast
or refused with one sentence that says the fix.

URLs are parsed by the drivers' own parsers: ``sqlalchemy.engine.make_url`` for database URLs
(MLflow's SQL store and Optuna's RDB storage both hand them to SQLAlchemy), ``urllib`` for
http(s) tracking servers.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

SECRET_QUERY = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature", re.I)
"""query-string keys whose values are secrets (password, sslpassword, access_token, api_key...)"""
NOT_SECRET_QUERY = {"sslkey", "sslcert", "sslrootcert", "sslcrl", "ssl_key", "ssl_cert"}
"""file paths, not secrets, though their names match"""
HIDDEN = "***"
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle")
CONNECT_TIMEOUT_ENV = "ROBUST_FT_CONNECT_TIMEOUT"


def connect_timeout() -> float:
    """Seconds to wait for a tracking server or database to answer (``ROBUST_FT_CONNECT_TIMEOUT``,
    default 5)."""
    try:
        return max(0.5, float(os.environ.get(CONNECT_TIMEOUT_ENV, "5")))
    except ValueError:
        return 5.0


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _secret_query(key: str) -> bool:
    return bool(SECRET_QUERY.search(key)) and key.lower() not in NOT_SECRET_QUERY


def _redact_http(url: str) -> str:
    """An http(s) URL without ``user:password@`` (the user stays) and secret query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.partition('://')[0]}://{HIDDEN}"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{HIDDEN}@{host}" if colon else f"{HIDDEN}@{host}"
    query = [(k, HIDDEN if _secret_query(k) else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))


def redact(url: str) -> str:
    """A URL (tracking URI, Optuna storage) without its secrets, for messages, logs and MLflow.

    The password of ``user:password@`` is hidden (a bare ``token@`` of an http(s) URL whole),
    and so are query-string secrets such as ``?password=``, ``?sslpassword=`` or ``?token=``.
    A URL the parser cannot read is shown by its scheme only.
    """
    if _is_http(url):
        return _redact_http(url)
    if url.startswith("journal:") or "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - any unparsable URL: show no part that may be secret
        return f"{url.partition('://')[0]}://{HIDDEN}"
    query = {k: (HIDDEN if _secret_query(k) else v) for k, v in parsed.query.items()}
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return _hide_raw_at(shown.replace(quote(HIDDEN, safe=""), HIDDEN))


def _hide_raw_at(shown: str) -> str:
    """``u:***@ss@h/db`` (a raw '@' in the password, which the parser split) -> ``u:***@h/db``."""
    scheme, _, rest = shown.partition("://")
    head, q, query = rest.partition("?")
    if head.count("@") <= 1:
        return shown
    user = head.partition(":")[0]
    return f"{scheme}://{user}:{HIDDEN}@{head.rsplit('@', 1)[1]}{q}{query}"


def secrets_of(url: str | None) -> list[str]:
    """The secret strings of a URL (as written and percent-decoded), to scrub from any text."""
    if not url:
        return []
    found: list[str] = []
    with contextlib.suppress(Exception):
        if _is_http(url):
            parts = urlsplit(url)
            userinfo = parts.netloc.rpartition("@")[0]
            found.append(userinfo.partition(":")[2] if ":" in userinfo else userinfo)
            found += [v for k, v in parse_qsl(parts.query, True) if _secret_query(k)]
        elif "://" in url:
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            found.append(parsed.password or "")
            for k, v in parsed.query.items():
                if _secret_query(k):
                    found += [v] if isinstance(v, str) else list(v)
    if "://" in url and "@" in url.partition("://")[2]:  # whatever a parser may have missed
        userinfo = url.partition("://")[2].rpartition("@")[0]
        found.append(userinfo.partition(":")[2] or (userinfo if _is_http(url) else ""))
    out = {s for f in found if f for s in (f, unquote(f), quote(f, safe=""))}
    return sorted((s for s in out if len(s) >= 3), key=len, reverse=True)


def scrub(text: str, urls: Iterable[str | None] = ()) -> str:
    """``text`` without the secrets of ``urls`` (default: the tracking URI and Optuna storage
    of the environment)."""
    urls = list(urls) or [os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("OPTUNA_STORAGE")]
    for url in urls:
        if url and url in text:
            text = text.replace(url, redact(url))
        for secret in secrets_of(url):
            text = text.replace(secret, HIDDEN)
    return text


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite file ``mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def ui_command(uri: str | None = None) -> str:
    """The one command that opens the MLflow UI on a store, runnable from any directory.

    A store URI with a secret is referred to as ``"$MLFLOW_TRACKING_URI"``, never printed.
    """
    import shutil
    import sys

    uri = uri or default_tracking_uri()
    if _is_http(uri):
        return f"open {redact(uri)} in a browser"
    beside = Path(sys.executable).parent / "mlflow"  # this environment's, wherever the user is
    mlflow = str(beside) if beside.exists() else (shutil.which("mlflow") or "mlflow")
    store = '"$MLFLOW_TRACKING_URI"' if redact(uri) != uri or secrets_of(uri) else uri
    return f"{mlflow} ui --backend-store-uri {store} --port 5000"


# ----------------------------------------------------------------- opening a store fast
class TrackingError(RuntimeError):
    """The tracking store cannot be reached or a run reference is wrong."""


URI_FORMS = (
    "sqlite:///path/mlflow.db, postgresql://user@host:5432/db, mysql+pymysql://user@host/db "
    "or http(s)://host:port of an `mlflow server`"
)
_opened: set[str] = set()


def open_store(uri: str) -> None:
    """Check once per process that the tracking store ``uri`` opens, and create a fresh store's
    tables in one process at a time (MLflow's migration is not safe against a second process
    doing the same): a file lock beside an SQLite file, the server's lock for PostgreSQL/MySQL."""
    if uri in _opened:
        return
    check_store(uri)
    from mlflow.tracking import MlflowClient

    with initialising(uri):
        MlflowClient(uri)  # creates or upgrades the tables
    _opened.add(uri)


@contextlib.contextmanager
def initialising(uri: str):
    """Hold the store's initialisation lock for the block (nothing to hold for other stores):
    one process at a time creates the tables of a fresh database (MLflow's or Optuna's)."""
    backend = uri.partition("://")[0].partition("+")[0].lower() if "://" in uri else ""
    if backend == "sqlite":
        from filelock import FileLock
        from sqlalchemy.engine import make_url

        db = make_url(uri).database
        if db and db != ":memory:":
            with FileLock(f"{db}.lock", timeout=120):
                yield
            return
    elif backend in ("postgresql", "postgres", "mysql", "mariadb"):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(uri, poolclass=NullPool, connect_args=connect_args(uri, 5))
        with engine.connect() as conn:
            unlock = _server_lock(conn, backend.startswith("postgres"), uri)
            try:
                yield
            finally:
                conn.execute(unlock)
                conn.commit()
        engine.dispose()
        return
    yield


INIT_LOCK_WAIT_S = 120
"""how long a process waits for another one's creation of a fresh database's tables"""
PG_INIT_LOCK = 81432107  # the key of PostgreSQL's advisory lock
MYSQL_INIT_LOCK = "robust_ft_init"  # the name of MySQL's/MariaDB's named lock


def _server_lock(conn, postgres: bool, uri: str):
    """Take the database server's session lock on ``conn`` (waiting at most
    ``INIT_LOCK_WAIT_S``); the statement that releases it."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    wait = INIT_LOCK_WAIT_S
    if postgres:  # lock_timeout bounds the wait of pg_advisory_lock
        conn.execute(text(f"set lock_timeout = '{int(wait * 1000)}ms'"))
        try:
            conn.execute(text("select pg_advisory_lock(:k)"), {"k": PG_INIT_LOCK})
            got = True
        except OperationalError:  # "canceling statement due to lock timeout"
            got = False
        lock, unlock = f"advisory lock {PG_INIT_LOCK}", "select pg_advisory_unlock(:k)"
        params = {"k": PG_INIT_LOCK}
    else:  # GET_LOCK: 1 taken, 0 timed out
        row = conn.execute(text("select get_lock(:n, :w)"), {"n": MYSQL_INIT_LOCK, "w": wait})
        got = row.scalar() == 1
        lock, unlock = f"named lock {MYSQL_INIT_LOCK}", "select release_lock(:k)"
        params = {"k": MYSQL_INIT_LOCK}
    if not got:
        raise TrackingError(
            f"the initialisation lock of {redact(uri)} ({lock}) stayed held by another session "
            f"for {wait:g} s: a process creating or upgrading the store's tables may be hung; "
            "stop that process (or wait for it), then run the command again"
        )
    return text(unlock).bindparams(**params)


def check_store(uri: str) -> None:
    """Fail within the connect timeout, with the fix, when the store ``uri`` cannot be used."""
    scheme = uri.partition("://")[0].partition("+")[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        return check_reachable(uri)
    if scheme not in SQL_SCHEMES:
        if scheme in ("", "file"):
            return check_file_store(uri)
        if scheme in ("databricks", "databricks-uc", "uc"):
            return None  # a hosted service: MLflow says what is wrong
        raise TrackingError(
            f"MLFLOW_TRACKING_URI {redact(uri)} has an unknown scheme {scheme!r}; use {URI_FORMS}"
        )
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception as e:  # noqa: BLE001 - ArgumentError, ValueError (a bad port)
        raise TrackingError(
            f"MLFLOW_TRACKING_URI {redact(uri)} is not a database URL ({scrub(str(e), [uri])}); "
            f"use {URI_FORMS}, with special characters of the password percent-encoded"
        ) from None
    if url.get_backend_name() == "sqlite":
        return check_sqlite_file(url.database, redact(uri))
    return check_database(uri, "MLFLOW_TRACKING_URI")


def check_sqlite_file(db: str | None, shown: str) -> None:
    """The file of an SQLite store can be created or opened for writing, and is SQLite."""
    if not db or db == ":memory:":
        return
    path = Path(db)
    fix = "point MLFLOW_TRACKING_URI at a writable file (sqlite:////abs/path/mlflow.db)"
    if not path.exists() and Path.cwd() == path.parent and not os.access(path.parent, os.W_OK):
        fix = "run from a writable directory or " + fix
    problem = None
    if path.is_dir():
        problem = f"{path} is a directory, not an SQLite file"
    elif not path.parent.is_dir():
        problem = f"its directory {path.parent} does not exist"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f"its directory {path.parent} is not writable (SQLite writes its journal there)"
    elif path.exists() and not os.access(path, os.R_OK | os.W_OK):
        problem = f"{path} is not readable and writable by this user"
    elif path.exists() and path.stat().st_size and _head(path) != b"SQLite format 3\x00":
        problem = f"{path} is not an SQLite database"
    if problem:
        raise TrackingError(f"cannot open the MLflow store {shown}: {problem}; {fix}")


def check_file_store(uri: str) -> None:
    """The directory of a file store (``file:///path`` or a plain path) exists or can be made."""
    from urllib.parse import urlsplit

    path = Path(unquote(urlsplit(uri).path) if uri.startswith("file:") else uri)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise TrackingError(
            f"cannot open the MLflow file store {uri}: {problem}; point MLFLOW_TRACKING_URI at a "
            "writable directory or an SQLite file (sqlite:////abs/path/mlflow.db)"
        )


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(16)


def check_database(url: str, option: str) -> None:
    """Connect once to a database server, waiting at most ``connect_timeout()`` seconds."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    timeout = connect_timeout()
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args(url, timeout))
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as e:
        raise TrackingError(
            f"{option} {redact(url)} needs a database driver that is not installed ({e}); e.g. "
            "pip install 'psycopg[binary]' for PostgreSQL or pymysql for MySQL"
        ) from None
    except (SQLAlchemyError, OSError, ValueError) as e:
        first = scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, [url])
        raise TrackingError(
            f"cannot open the database {redact(url)} ({option}): {first}. Check that the server "
            f"runs and is reachable, and the user, password and database name; waited up to "
            f"{timeout:g} s ({CONNECT_TIMEOUT_ENV} sets it)"
        ) from None


def connect_args(url: str, timeout: float) -> dict:
    """The driver's connect timeout for a database URL (PostgreSQL, MySQL/MariaDB)."""
    backend = url.partition("://")[0].partition("+")[0].lower()
    if backend in ("postgresql", "postgres", "mysql", "mariadb"):
        return {"connect_timeout": max(1, round(timeout))}
    return {}


def check_reachable(uri: str, timeout: float | None = None) -> None:
    """Fail fast with a clear message when an HTTP tracking server does not answer."""
    if not _is_http(uri):
        return
    import urllib.error
    import urllib.request

    timeout = timeout or connect_timeout()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(10, round(4 * timeout))))
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        base = urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
        urllib.request.urlopen(base.rstrip("/") + "/health", timeout=timeout).read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is unreachable ({scrub(str(e), [uri])}); start "
            "it (`mlflow server`), fix MLFLOW_TRACKING_URI, or unset it to use the local SQLite "
            f"store (waited up to {timeout:g} s; {CONNECT_TIMEOUT_ENV} sets it)"
        ) from None
