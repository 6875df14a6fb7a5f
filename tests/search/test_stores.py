"""One-line errors for store URLs: the probe of an MLflow server and the password kept out."""

from __future__ import annotations

import http.server
import re
import socket
import threading
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from search.stores import check_store, check_stores, check_tracking_server, store_error


def _serve(answer):  # noqa: ANN001
    """A real HTTP server on loopback whose GET and POST requests ``answer(handler)`` handles;
    yields its port, then shuts it down."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            answer(self)

        do_POST = do_GET

        def log_message(self, *args) -> None:  # quiet
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def http_server():
    """A real HTTP server on loopback that answers 200 on /health and 404 elsewhere."""
    def answer(request) -> None:  # noqa: ANN001
        request.send_response(200 if request.path == "/health" else 404)
        request.end_headers()
        request.wfile.write(b"OK")

    for port in _serve(answer):
        yield f"http://127.0.0.1:{port}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_answers_passes_the_probe(http_server: str) -> None:
    check_tracking_server(http_server)
    check_tracking_server(http_server.replace("http://", "http://user:pw@") + "/prefix/")  # 404


def test_no_server_is_one_line_without_the_password() -> None:
    uri = f"http://user:s3cret@127.0.0.1:{_closed_port()}"
    with pytest.raises(ValueError, match="no MLflow server answers there") as info:
        check_tracking_server(uri, timeout=5)
    assert "s3cret" not in str(info.value) and "user:***@" in str(info.value)


def test_a_driver_quoting_the_password_is_scrubbed() -> None:
    url = "postgresql+psycopg2://u:s3cret@db/optuna"
    exc = OperationalError("connect", {}, Exception('password "s3cret" rejected for u'))
    error = store_error("--storage", url, exc)
    assert error is not None and "s3cret" not in str(error)
    assert str(error) == ('--storage postgresql+psycopg2://u:***@db/optuna: cannot open the '
                          'database: password "***" rejected for u')


def test_an_error_not_about_the_url_is_left_alone() -> None:
    assert store_error("--storage", "sqlite:///x.db", RuntimeError("boom")) is None


def test_a_tls_server_the_probe_does_not_trust_still_counts_as_there(http_server: str) -> None:
    # https:// to a plain-HTTP server fails the TLS handshake: something answers, so it passes
    # and MLflow's own TLS settings decide
    check_tracking_server(http_server.replace("http://", "https://"), timeout=5)


def _sqlite_with(path: Path, *tables: str) -> Path:
    """A SQLite file holding empty ``tables`` (what a store is told apart by)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        for table in tables:
            db.execute(f"CREATE TABLE {table} (id INTEGER)")
    db.close()
    return path


def test_stores_that_can_be_opened_pass_without_anything_written(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _sqlite_with(tmp_path / "optuna.db", "alembic_version", "studies", "trials", "version_info")
    _sqlite_with(tmp_path / "mlflow.db", "alembic_version", "experiments", "runs")
    (tmp_path / "empty.db").write_bytes(b"")  # SQLite makes an empty file a database
    (tmp_path / "s.journal").write_text('{"op_code": 0}\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    check_stores("sqlite:///optuna.db", "sqlite:///mlflow.db")
    check_stores("sqlite:///new/optuna.db", "sqlite:///new/mlflow.db")  # folders made later
    check_stores("sqlite:///empty.db", "sqlite:///:memory:")
    check_stores("s.journal", "http://127.0.0.1:1")
    check_stores("postgresql+psycopg2://u:pw@db/optuna", "postgresql+psycopg2://u:pw@db/mlflow")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("option", "tables", "words"),
    [("--storage", ("alembic_version", "experiments", "runs", "metrics", "params", "tags"),
      ("holds an MLflow tracking store (tables experiments, runs, metrics, params ...), not an "
       "Optuna storage")),
     ("--tracking-uri", ("alembic_version", "studies", "trials"),
      "holds an Optuna storage (tables studies, trials), not an MLflow tracking store"),
     ("--storage", ("users",), "holds another program's database (tables users), not an Optuna"),
     # a file both tools wrote to (before this check existed) is neither's
     ("--tracking-uri", ("experiments", "runs", "studies"), "holds an Optuna storage")],
)
def test_a_sqlite_file_of_another_kind_is_refused(tmp_path, option, tables, words) -> None:
    db = _sqlite_with(tmp_path / "x.db", *tables)
    with pytest.raises(ValueError, match=re.escape(f"{option} sqlite:///{db}: {db} {words}")):
        check_store(option, f"sqlite:///{db}")


def test_one_file_for_both_stores_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--storage sqlite:///a\.db and --tracking-uri "
                                         r"sqlite:///\./a\.db are the same store"):
        check_stores("sqlite:///a.db", "sqlite:///./a.db")
    with pytest.raises(ValueError, match="same store"):
        check_stores("postgresql+psycopg2://u:pw@db/x", "postgresql+psycopg2://u:pw@db/x")
    assert not (tmp_path / "a.db").exists()


def test_a_journal_path_that_is_not_a_journal_is_refused(tmp_path) -> None:
    db = _sqlite_with(tmp_path / "optuna.db", "studies")
    with pytest.raises(ValueError, match=re.escape(f"is a SQLite database, not a journal file; "
                                                   f"give it as a URL: --storage sqlite:///{db}")):
        check_store("--storage", str(db))
    (tmp_path / "junk.log").write_bytes(b"\x00\x01binary")
    with pytest.raises(ValueError, match="is not an Optuna journal file"):
        check_store("--storage", str(tmp_path / "junk.log"))


def test_a_folder_where_a_store_file_goes_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path} is a folder; expected a SQLite "
                                                   f"database file, e.g. sqlite:///{tmp_path}/"
                                                   f"mlflow.db")):
        check_store("--tracking-uri", f"sqlite:///{tmp_path}")


_OPEN_TOGETHER = """
import sys, time
from search.study import open_storage
from search.mlflow_tracker import MlflowTracker
folder, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process opens the fresh stores at once
MlflowTracker(f"sqlite:///{folder}/mlflow.db")
open_storage(f"sqlite:///{folder}/optuna.db")
print("opened")
"""


def test_processes_opening_fresh_sqlite_stores_together_all_succeed(tmp_path) -> None:
    # Unlocked, three MLflow clients opening one fresh file together failed 10 times in 15
    # (their table migrations collide); with `schema_lock` they take turns.
    import subprocess
    import sys
    import time

    for round_ in range(2):
        folder = tmp_path / f"round-{round_}"
        start = time.time() + 8  # after every process has imported MLflow and Optuna
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_TOGETHER, str(folder), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0 and out.strip() == "opened", err[-2000:]


@pytest.fixture
def guarded_server():
    """A real HTTP server that answers /health and turns every API call away: 401 with a
    proxy's HTML page on /a/..., 403 with MLflow's JSON error on /b/..."""
    def answer(request) -> None:  # noqa: ANN001
        if request.path.endswith("/health"):
            request.send_response(200)
            request.end_headers()
        elif request.path.startswith("/a/"):
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            request.end_headers()
            request.wfile.write(b"<html>401 Authorization Required</html>")
        else:
            request.send_response(403)
            request.send_header("Content-Type", "application/json")
            request.end_headers()
            request.wfile.write(b'{"error_code": "PERMISSION_DENIED", "message": "no"}')

    for port in _serve(answer):
        yield f"http://bob:s3cret@127.0.0.1:{port}"


@pytest.mark.parametrize("prefix,status,words", [("/a", 401, "did not accept the credentials"),
                                                 ("/b", 403, "refused this user access")])
def test_a_server_that_turns_the_client_away_is_one_line(guarded_server: str, prefix: str,
                                                          status: int, words: str) -> None:
    from search.mlflow_tracker import MlflowTracker

    with pytest.raises(ValueError) as info:
        MlflowTracker(guarded_server + prefix)
    message = str(info.value)
    assert f"the server {words} (HTTP {status})" in message and "MLFLOW_TRACKING_USERNAME" in message
    assert "s3cret" not in message and "bob:***@" in message
