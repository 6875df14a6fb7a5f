"""Open the stores safely and tell their failures apart: one line for a store URL that cannot be
opened (Optuna's or MLflow's), one process at a time creating a SQLite store's tables, and
`StoreLost` for a store that fails mid-study for a reason of its own."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import sqlite3
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import requests
from filelock import FileLock
from sqlalchemy import event
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from search.config import default_storage, default_tracking_uri
from search.redact import hide_password, redact_url
from search.tracking import ANSWERING, DAMAGED, GONE, LOCKED, StorageLost, StoreLost

EXAMPLES = {
    "--storage": "sqlite:///mlruns/optuna.db, postgresql+psycopg2://USER:PASSWORD@HOST/DB or a "
                 "journal file path",
    "--tracking-uri": "sqlite:///mlruns/mlflow.db, postgresql+psycopg2://USER:PASSWORD@HOST/DB "
                      "or http://MLFLOW-SERVER:5000",
}

DEFAULTS = {"--storage": default_storage(), "--tracking-uri": default_tracking_uri()}
# What each option's SQLite file holds, and tables only that tool creates (both keep an
# alembic_version), to tell its file from the other's, or from another program's database.
STORE_KINDS = {
    "--storage": ("an Optuna storage", ("studies", "trials", "version_info", "study_directions",
                                        "trial_params", "trial_values")),
    "--tracking-uri": ("an MLflow tracking store", ("experiments", "runs", "metrics", "params",
                                                    "tags", "latest_metrics")),
}
SQLITE_HEADER = b"SQLite format 3\x00"

# How long a process waits for another one on this host to create a SQLite store's tables
# (MLflow's ~60 migrations take seconds); the lock is released if its holder dies.
SCHEMA_LOCK_SECONDS = 600

# sysexits.h's EX_TEMPFAIL: a store the run needs stopped answering; the same command later
# resumes (a scheduler can requeue on it)
EXIT_STORE_LOST = 75


def store_lost_in(exc: BaseException, storage: str) -> StoreLost | None:
    """The `StoreLost` that ``exc`` is or was raised while handling, if any.

    Optuna's trial loop raises its own errors when a store failure stops it from recording a
    trial (an ``AssertionError`` from ``_run_trial``); the failure is in their chain. A failure
    Optuna met outside a trial (opening the study, say) may come as the database driver's error:
    it is told by `lost_cause` and named a loss of the Optuna ``storage``.
    """
    lost = next((e for e in _chain(exc) if isinstance(e, StoreLost)), None)
    if lost is None and (words := lost_cause(exc, storage, wait=SQLITE_WAIT_SECONDS)) is not None:
        lost = StorageLost(f"the Optuna storage {redact_url(storage)}", words)
    return lost


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then what it was raised from or while handling (a driver error's ``orig``)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return seen


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
    db = Path(url.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(db.parent / f".{db.name}.lock", timeout=SCHEMA_LOCK_SECONDS)


def check_stores(storage: str, tracking_uri: str | None) -> None:
    """Refuse, before either is opened, stores that cannot be this study's (see `check_store`).

    Both are checked here, before Optuna writes anything: MLflow's store is opened later, and a
    swapped file found only then would already hold the study. The two must not be one store
    either (a new file given twice, say): each tool would add its tables to the other's.

    Raises:
        ValueError: one line naming the option, the file and what to do.
    """
    check_store("--storage", storage)
    if tracking_uri is None:
        return
    check_store("--tracking-uri", tracking_uri)
    key = _store_key(storage)
    if key is not None and key == _store_key(tracking_uri):
        raise ValueError(
            f"--storage {redact_url(storage)} and --tracking-uri {redact_url(tracking_uri)} "
            f"are the same store; Optuna and MLflow each need their own (by default "
            f"{DEFAULTS['--storage']} and {DEFAULTS['--tracking-uri']}).")


def check_store(option: str, url: str) -> None:
    """Refuse a local store file that cannot be opened, or is not what ``option`` stores.

    Looks without writing: a ``sqlite:///`` path (and, for ``--storage``, a journal file path)
    must not be a folder, must sit in a writable folder (SQLite and Optuna's journal write
    their lock and journal files beside it), and an existing file must be a readable SQLite
    database holding ``option``'s tables, or none yet (a journal: JSON lines, not SQLite). Other
    URLs (servers) are left to the store's own open, `store_error`.

    Raises:
        ValueError: one line naming the option, the file and what to do.
    """
    shown = f"{option} {redact_url(url)}"
    journal = option == "--storage" and "://" not in url
    path = Path(url) if journal else sqlite_path(url)
    if path is None:
        return
    if path.is_dir():
        database = f"sqlite:///{(path / sqlite_path(DEFAULTS[option]).name).as_posix()}"
        expected = (f"a journal storage is a file, e.g. {path / 'optuna.journal'}, or give a "
                    f"database URL, e.g. {database}" if journal
                    else f"expected a SQLite database file, e.g. {database}")
        raise ValueError(f"{shown}: {path} is a folder; {expected}.")
    _check_writable(shown, option, path)
    if not path.is_file():
        return  # a new store: its tables are made when it opens
    try:
        with path.open("rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise ValueError(f"{shown}: {path} cannot be read ({exc.strerror or exc}).") from None
    if journal:
        if head == SQLITE_HEADER:
            raise ValueError(f"{shown}: {path} is a SQLite database, not a journal file; give "
                             f"it as a URL: --storage sqlite:///{path.as_posix()}.")
        if head and not head.lstrip().startswith(b"{"):
            raise ValueError(f"{shown}: {path} is not an Optuna journal file (those are JSON "
                             f"lines); {_move_aside(option)}")
        return
    if head and head != SQLITE_HEADER:
        raise ValueError(f"{shown}: {path} is not a SQLite database (it does not start with "
                         f"SQLite's header: damaged, or a file of another kind); "
                         f"{_move_aside(option)}")
    tables = _sqlite_tables(shown, option, path) if head else set()
    kind, own = STORE_KINDS[option]
    holds, other = next(v for o, v in STORE_KINDS.items() if o != option)
    # a new store has no tables yet (one being made by another process, some of its own)
    if tables & set(other) or (tables and not tables & set(own)):
        if not tables & set(other):
            holds = "another program's database"
        named = [t for t in other if t in tables] + sorted(tables - set(other))
        listed = ", ".join(named[:4]) + (" ..." if len(named) > 4 else "")
        raise ValueError(f"{shown}: {path} holds {holds} (tables {listed}), not {kind}; "
                         f"nothing was written to it. Give {option} a file of its own, e.g. "
                         f"the default {DEFAULTS[option]}.")


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (relative to the working folder), else None."""
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    return Path(url.removeprefix("sqlite:///").partition("?")[0])


def _store_key(url: str) -> str | None:
    """What identifies a store: its file's real path when local, else the URL itself."""
    path = sqlite_path(url)
    if path is None and "://" not in url and url:
        path = Path(url)
    if path is None and url.startswith("file:"):
        path = Path(urllib.parse.urlsplit(url).path)
    if path is not None:
        return os.path.realpath(path)
    return None if url.startswith("sqlite:") else url.rstrip("/")


def _check_writable(shown: str, option: str, path: Path) -> None:
    """Refuse a store whose folder (the nearest one that exists), or the file, is read-only."""
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{shown}: {folder} is a file, so the folder {path.parent} cannot be "
                         f"made; point {option} elsewhere.")
    for target, what in ((folder, "the folder"), (path, "the file")):
        if target.exists() and not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            flags = os.statvfs(folder).f_flag
            reason = ("a read-only file system" if flags & os.ST_RDONLY
                      else "no write permission")
            raise ValueError(
                f"{shown}: {what} {target} is not writable ({reason}); the store writes its "
                f"database, lock and journal files there: make it writable, or point {option} "
                f"at a writable folder.")


def _sqlite_tables(shown: str, option: str, path: Path) -> set[str]:
    """The table names of an existing SQLite file, read without writing anything to it."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                                timeout=SQLITE_WAIT_SECONDS)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                              "AND name NOT LIKE 'sqlite_%'").fetchall()
    except sqlite3.OperationalError:
        return set()  # locked, say: not about what it holds; the store's own open reports it
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{shown}: {path} is a damaged SQLite database ({exc}); "
                         f"{_move_aside(option)}") from None
    return {name for (name,) in rows} - {"alembic_version"}


def _move_aside(option: str) -> str:
    return (f"nothing was written to it. --fresh cannot help (it must read the store first): "
            f"move the file aside (or restore it from a backup) to start a new store there, "
            f"or point {option} at another file.")


def store_error(option: str, url: str, exc: BaseException) -> ValueError | None:
    """A one-line `ValueError` for a store ``url`` (given as ``option``) that failed to open.

    Returns None when ``exc`` is not about the URL (then it is regsearch's own error). The URL
    is shown with its password hidden, and the password is cut from the driver's message too.
    """
    # MLflow (about 3 s to import): off `search.export`, which opens only the Optuna storage
    from mlflow.exceptions import MlflowException

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
    from mlflow.exceptions import MlflowException  # as in `store_error`

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


def lost_cause(exc: BaseException, uri: str, *, files: bool = False,
               wait: float | None = None) -> str | None:
    """What ``exc`` says happened to the store at ``uri``, in words, or None if it is another error.

    A store that cannot be reached "stopped answering (...)": MLflow's REST client retries a
    refused connection, a timeout and 5xx answers with back-off (about four minutes by
    default) before it raises, so a store that raises so is gone, not busy; a database driver
    that cannot connect. A store that answers but cannot do its job "failed (...)": SQLite's
    file is full, read-only, unreadable or damaged; PostgreSQL reports insufficient
    resources (its disk full), an I/O or internal error (SQLSTATE classes 53, 58, XX; a
    shutdown, class 57, is "stopped answering"). With ``files``, an `OSError` of a file system
    that takes no writes (no space, a quota, read-only, I/O error) counts too: the caller knows
    the file is the store's (MLflow's artifacts, an Optuna journal). A SQLite file that
    "is damaged (...)" (not a database, malformed) cannot be resumed, unlike the rest.

    A SQLite file that another process kept locked longer than the store's client waits for it
    (``wait`` seconds, SQLite's busy timeout) "was locked by another process": someone's
    ``sqlite3`` shell inside a transaction, a long migration. Not the recipe's fault, and not
    a moment's contention between workers either (that is waited for); the store cannot do its
    job. A constraint or a query the store refused is not the store's failure.
    """
    seen = _chain(exc)
    for error in seen:
        if isinstance(error, requests.exceptions.RetryError):
            return (f"{ANSWERING} (it kept answering with errors: "
                    f"{str(error).rpartition('Caused by ')[2]})")[:300]
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            os_error = next((e for e in seen if type(e) is not OSError and isinstance(e, OSError)
                             and e.strerror), None)
            why = os_error.strerror if os_error is not None else type(error).__name__
            return f"{ANSWERING} ({why.lower()})"
        code = str(getattr(error, "sqlite_errorname", "") or "")
        if code.startswith("SQLITE_BUSY"):
            held = f" for over {wait:g} s" if wait else ""
            return f"{LOCKED}{held} ({_driver_line(error, uri)})"
        if code.startswith(_SQLITE_DAMAGED):
            return f"{DAMAGED} ({_driver_line(error, uri)})"
        if code.startswith(_SQLITE_FILE_FAULTS):
            return f"failed ({_driver_line(error, uri)}{_file_state(sqlite_path(uri))})"
        # PostgreSQL's SQLSTATE, as its drivers give it (psycopg2: pgcode, psycopg 3: sqlstate;
        # MLflow's own errors carry a sqlstate of their own)
        state = (str(getattr(error, "pgcode", None) or getattr(error, "sqlstate", None) or "")
                 if type(error).__module__.startswith("psycopg") else "")
        if state[:2] in ("08", "57"):  # the connection; a shutdown (operator intervention)
            return f"{ANSWERING} ({_driver_line(error, uri)})"
        if state[:2] in _PG_SERVER_FAULTS:
            return f"failed ({_driver_line(error, uri)})"
        if files and isinstance(error, OSError) and error.errno in _FILE_SYSTEM_FAULTS:
            where = f": {error.filename}" if error.filename else ""
            return f"failed ({error.strerror or error}{where})"
    # drivers that give no error code: their words
    for error in seen:
        if isinstance(error, OperationalError):
            first = _driver_line(error, uri)
            # the server or the file is gone; "database is locked" and the like are not that
            if any(word in first.lower() for word in _GONE):
                return f"{ANSWERING} ({first})"
    return None


# How long regsearch's SQLite connections to an Optuna storage wait for another process's
# write lock (SQLite's busy timeout) before the store counts as locked (`lost_cause`). MLflow's
# own connections wait MLFLOW_SQLITE_WAIT_SECONDS (it sets ``PRAGMA busy_timeout = 20000`` on
# each session, mlflow.store.db.utils). REGSEARCH_SQLITE_WAIT_SECONDS shortens it for tests
# that hold a lock during a real run; a user has no reason to set it.
SQLITE_WAIT_SECONDS = float(os.environ.get("REGSEARCH_SQLITE_WAIT_SECONDS", 60))
MLFLOW_SQLITE_WAIT_SECONDS = 20.0
# What a database driver says when its server or file cannot be reached at all (drivers
# that give no error code).
_GONE = ("connect", "unable to open database file", "disk i/o error")
# SQLite result codes (Python names them from 3.11) of a database file that cannot be
# written or read: full, I/O error, read-only, cannot be opened or no permission; and of one
# that is damaged (malformed, or not a database)
_SQLITE_FILE_FAULTS = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN",
                       "SQLITE_PERM")
_SQLITE_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
# PostgreSQL SQLSTATE classes of the server's own trouble: insufficient resources (its disk
# full), system (I/O) and internal errors (data corrupted)
_PG_SERVER_FAULTS = ("53", "58", "XX")
_FILE_SYSTEM_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG,
                       errno.EACCES}


def _file_state(path: Path | None) -> str:
    """What the file system says of a store file when SQLite cannot use it, if it explains it.

    SQLite's own words can mislead: a folder made read-only says "unable to open database
    file" (the journal cannot be made), a file deleted or moved away under an open database
    "attempt to write a readonly database".
    """
    if path is None:
        return ""
    folder = path.absolute().parent
    if not folder.is_dir():
        return f"; its folder {folder} {GONE[1]}"
    if not path.exists():
        return f"; {path.absolute()} {GONE[0]}"
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return f"; {folder} is on a read-only file system"
    return ""


def raise_store_lost(engine, store: str, url: str) -> None:
    """Make a failure of the database behind ``engine`` that is the store's own (`lost_cause`)
    raise `StorageLost` instead of the driver's error.

    SQLAlchemy's ``handle_error`` hook sees every error the database raises, wherever the
    library using the engine (Optuna) issued the statement: the trial loop, a trial's
    ``report``, the heartbeat. Optuna rolls its session back and lets the error through.
    """
    @event.listens_for(engine, "handle_error")
    def _lost(context) -> None:
        words = lost_cause(context.sqlalchemy_exception or context.original_exception, url,
                           wait=SQLITE_WAIT_SECONDS)
        if words is not None:
            raise StorageLost(store, words) from context.original_exception


def retry_schema_race(make, attempts: int = 6):
    """Call ``make()``, retrying while another process creates the same database schema.

    Workers started together on an empty database all try to create the tables; all but one
    fail with a duplicate-key error (PostgreSQL: ``pg_type_typname_nsp_index``). The schema
    exists once the winner commits, so a retry finds it.
    """
    for attempt in range(attempts):
        try:
            return make()
        except Exception as exc:  # noqa: BLE001 (filtered below)
            if attempt == attempts - 1 or not _is_schema_race(exc):
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))


def _is_schema_race(exc: BaseException) -> bool:
    if isinstance(exc, (IntegrityError, ProgrammingError)):
        return True
    text = str(exc)
    # SQLite says "table ... already exists" (OperationalError); MLflow wraps its migrations
    return "already exists" in text or "out-of-date database schema" in text
