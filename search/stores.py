"""Open the stores safely: one line for a store URL that cannot be opened (Optuna's or
MLflow's), and one process at a time creating a SQLite store's tables."""

from __future__ import annotations

import contextlib
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from search.redact import hide_password, redact_url

EXAMPLES = {
    "--storage": "sqlite:///mlruns/optuna.db, postgresql+psycopg2://USER:PASSWORD@HOST/DB or a "
                 "journal file path",
    "--tracking-uri": "sqlite:///mlruns/mlflow.db, postgresql+psycopg2://USER:PASSWORD@HOST/DB "
                      "or http://MLFLOW-SERVER:5000",
}


# How long a process waits for another one on this host to create a SQLite store's tables
# (MLflow's ~60 migrations take seconds); the lock is released if its holder dies.
SCHEMA_LOCK_SECONDS = 600

# sysexits.h's EX_TEMPFAIL: a store the run needs stopped answering; the same command later
# resumes (a scheduler can requeue on it)
EXIT_STORE_LOST = 75


def schema_lock(url: str) -> contextlib.AbstractContextManager:
    """Hold a lock file beside a ``sqlite:///`` database while a process opens it.

    Opening a new store creates its tables (MLflow runs its Alembic migrations, Optuna its
    own). Two processes doing that at once on one SQLite file collide: measured with three
    MLflow clients opening a fresh file together, 10 of 15 failed ("duplicate column name",
    "table ... already exists", "Online migration expected to match one row"). That is what
    two `search.run` started together on one host do. The lock makes them take turns; the
    second finds the tables made. Other URLs get no lock (no file to put it beside; a server
    database's schema race is retried instead, `search.study.retry_schema_race`).
    """
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return contextlib.nullcontext()
    from filelock import FileLock

    db = Path(url.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(db.parent / f".{db.name}.lock", timeout=SCHEMA_LOCK_SECONDS)


def store_error(option: str, url: str, exc: BaseException) -> ValueError | None:
    """A one-line `ValueError` for a store ``url`` (given as ``option``) that failed to open.

    Returns None when ``exc`` is not about the URL (then it is regsearch's own error). The URL
    is shown with its password hidden, and the password is cut from the driver's message too.
    """
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    shown = f"{option} {redact_url(url)}"
    scheme = url.split("://", 1)[0]
    if isinstance(exc, ImportError):
        hint = ("install the postgres extra (pip install 'regsearch[postgres]') and write "
                "postgresql+psycopg2://...; a bare postgresql:// asks for the psycopg 3 driver "
                "(pip install 'psycopg[binary]')" if scheme.startswith("postgresql")
                else "install the Python driver for that database")
        missing = f" ({exc.name})" if exc.name else ""
        return ValueError(f"{shown}: the database driver for {scheme}:// is not installed"
                          f"{missing}; {hint}.")
    if isinstance(exc, (NoSuchModuleError, ArgumentError)) or (
            isinstance(exc, MlflowException) and "unsupported URI" in str(exc)):
        return ValueError(f"{shown}: not a store URL that can be opened; expected "
                          f"{EXAMPLES.get(option, 'a database URL')}.")
    if isinstance(exc, OperationalError):
        return ValueError(f"{shown}: cannot open the database: {_driver_line(exc, url)}")
    refused = _refused_status(exc)
    if refused is not None:
        what = ("did not accept the credentials" if refused == 401 else
                "refused this user access")
        return ValueError(
            f"{shown}: the server {what} (HTTP {refused}); give a user allowed to write runs "
            f"as http://user:password@host or in MLFLOW_TRACKING_USERNAME and "
            f"MLFLOW_TRACKING_PASSWORD (or a token in MLFLOW_TRACKING_TOKEN).")
    return None


def _driver_line(exc: BaseException, url: str) -> str:
    """The first line of a database driver's message (SQLAlchemy's ``orig``), password hidden."""
    return hide_password(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0], url)


def _refused_status(exc: BaseException) -> int | None:
    """401 or 403 when an MLflow server (or the proxy in front of it) turned the client away."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return None
    code = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(str(exc.error_code))
    if code is not None:
        return code
    # a proxy's own page instead of MLflow's JSON: "failed with error code 401 != 200"
    match = re.search(r"error code (401|403)\b", str(exc))
    return int(match[1]) if match else None


def check_tracking_server(uri: str, timeout: float = 10.0) -> None:
    """Raise a one-line `ValueError` unless an HTTP server answers at ``uri``.

    MLflow's client retries an unreachable server with back-off for minutes before it gives
    up; one request with a timeout says at once what is wrong. Any HTTP answer (even 401 or
    404) counts, and so does a TLS handshake this probe does not trust: the server is there,
    and MLflow's own calls report what else is wrong.
    """
    parts = urllib.parse.urlsplit(uri)
    # any answer will do, so no credentials: cut them from the address (urllib would not parse them)
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path.rstrip("/") + "/health"
    probe = urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))
    try:
        urllib.request.urlopen(probe, timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return  # a TLS server is there; MLflow's own settings (MLFLOW_TRACKING_INSECURE_TLS,
            # MLFLOW_TRACKING_SERVER_CERT_PATH) decide whether it trusts it
        raise ValueError(
            f"--tracking-uri {redact_url(uri)}: no MLflow server answers there ({reason}); start "
            f"one (mlflow server ...) or leave --tracking-uri out for the local store "
            f"sqlite:///mlruns/mlflow.db.") from exc


def lost_cause(exc: BaseException, uri: str) -> str | None:
    """Why ``exc`` says the store at ``uri`` cannot be reached, or None if it is another error.

    MLflow's REST client retries a refused connection, a timeout and 5xx answers with back-off
    (about four minutes by default) before it raises: a store that raises so is gone, not busy.
    A SQL store (``sqlite:///``, ``postgresql://``) raises SQLAlchemy's OperationalError, which
    counts when it is about the connection or the file, not a lock or a query.
    """
    import requests
    from sqlalchemy.exc import OperationalError

    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for error in seen:
        if isinstance(error, requests.exceptions.RetryError):
            return f"it kept answering with errors: {str(error).rpartition('Caused by ')[2]}"[:300]
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            os_error = next((e for e in seen if type(e) is not OSError and isinstance(e, OSError)
                             and e.strerror), None)
            return (os_error.strerror if os_error is not None else type(error).__name__).lower()
        if isinstance(error, OperationalError):
            first = _driver_line(error, uri)
            # the server or the file is gone; "database is locked" and the like are not that
            if any(word in first.lower() for word in _GONE):
                return first
    return None


# What a database driver says when its server or file cannot be reached at all.
_GONE = ("connect", "unable to open database file", "disk i/o error")


def retry_schema_race(make, attempts: int = 6):
    """Call ``make()``, retrying while another process creates the same database schema.

    Workers started together on an empty database all try to create the tables; all but one
    fail with a duplicate-key error (PostgreSQL: ``pg_type_typname_nsp_index``). The schema
    exists once the winner commits, so a retry finds it.
    """
    import random
    import time

    for attempt in range(attempts):
        try:
            return make()
        except Exception as exc:  # noqa: BLE001 (filtered below)
            if attempt == attempts - 1 or not _is_schema_race(exc):
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))


def _is_schema_race(exc: BaseException) -> bool:
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    if isinstance(exc, (IntegrityError, ProgrammingError)):
        return True
    text = str(exc)
    # SQLite says "table ... already exists" (OperationalError); MLflow wraps its migrations
    return "already exists" in text or "out-of-date database schema" in text
