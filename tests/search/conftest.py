"""Fixtures of the search tests: a real PostgreSQL server for multi-worker studies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.search.pg import PostgresServer, Unavailable


@dataclass(frozen=True)
class PostgresURLs:
    """SQLAlchemy URLs of a throwaway PostgreSQL server (password URL-encoded)."""

    optuna: str
    mlflow: str
    password: str
    server: PostgresServer


@pytest.fixture(scope="session")
def postgres() -> PostgresURLs:
    """A PostgreSQL server on 127.0.0.1 with databases ``optuna`` and ``mlflow``.

    Skips the test when no PostgreSQL binaries or no psycopg2 are installed, or when the server
    cannot run as a non-root user; the skip reason says which.
    """
    server = PostgresServer(databases=("optuna", "mlflow"))
    try:
        server.start()
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield PostgresURLs(server.url("optuna"), server.url("mlflow"), server.password, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite runs, artifacts served); its URL."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.search.pg import free_port

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start: "
                                       + (root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
