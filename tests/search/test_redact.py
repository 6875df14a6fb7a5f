"""Tests for search/redact.py: passwords never reach the console, logs or recorded files."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from search.redact import redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        ("postgresql://optuna:s3cret@db:5432/studies", "postgresql://optuna:***@db:5432/studies"),
        ("postgresql+psycopg2://u:p@10.0.0.1:5432/x?sslmode=require",
         "postgresql+psycopg2://u:***@10.0.0.1:5432/x?sslmode=require"),
        ("mysql+pymysql://root:hunter2@localhost:3306/optuna",
         "mysql+pymysql://root:***@localhost:3306/optuna"),
        ("mysql+pymysql://root:hunter2@localhost/optuna?charset=utf8mb4",
         "mysql+pymysql://root:***@localhost/optuna?charset=utf8mb4"),
        ("https://alice:token123@mlflow.example.com:5000",
         "https://alice:***@mlflow.example.com:5000"),
        ("redis://:onlypw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://user:@host/db", "postgresql://user:***@host/db"),
    ],
)
def test_redact_url_hides_password(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "password",
    ["p%40ss", "a/b+c=", "x#y?z", "semi;colon:and,comma", "sp ace", "Ünï€ode",
     "p%2Fw", "!$&'()*~"],
)
@pytest.mark.parametrize("scheme", ["postgresql", "mysql+pymysql"])
def test_redact_url_hides_password_with_special_characters(scheme, password):
    url = f"{scheme}://user:{password}@db.example.com:5432/studies"
    redacted = redact_url(url)
    assert redacted == f"{scheme}://user:***@db.example.com:5432/studies"
    assert password not in redacted


@pytest.mark.parametrize("password", ["a/b", "s3cr/et/", "xY9/+Qz="])
def test_redact_url_matches_sqlalchemy_parse(password):
    # SQLAlchemy (the engine Optuna's RDBStorage uses) accepts '/' in an unencoded password,
    # as base64-generated passwords often contain.
    url = f"postgresql://user:{password}@host/db"
    assert make_url(url).password == password
    assert redact_url(url) == "postgresql://user:***@host/db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user@host/db",
        "postgresql://host:5432/db",
        "mysql+pymysql://root@localhost/optuna",
        "http://localhost:5000",
        "https://mlflow.example.com/api",
        "file:///tmp/mlruns",
    ],
)
def test_redact_url_without_password_unchanged(url):
    assert redact_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///mlruns/optuna.db",
        "sqlite:////abs/path/optuna.db",
        "sqlite:///C:/Users/me/optuna.db",
        "sqlite:///dir:with:colons/o@db.db",
        "sqlite://",
        "mlruns/optuna.journal",
        "/tmp/study.log",
        "",
    ],
)
def test_redact_url_paths_unchanged(url):
    assert redact_url(url) == url


def test_redact_url_only_userinfo_is_touched():
    url = "postgresql://u:pw@host/db?application_name=x:y"
    assert redact_url(url) == "postgresql://u:***@host/db?application_name=x:y"


def test_redact_url_is_idempotent():
    once = redact_url("postgresql://user:pw@host/db")
    assert redact_url(once) == once
