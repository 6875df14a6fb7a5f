"""Fixtures of the search tests: a real PostgreSQL server for multi-worker studies."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.search.mlflow_server import MlflowServer
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
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
