"""Bad input to `python -m search.run` stops the run before any trial and any store write.

Each case is a real command line that must end with exit code 2 and one `error:` line naming
what is wrong, where, and what is allowed (`assert_usage_error`). The cases found once the
study opens (the data, the stores) import Keras first, so they take some seconds each; only
`test_swapped_stores_are_refused_and_left_unchanged` trains, one tiny trial, to show that the
stores it refused still work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.search.test_cli import assert_usage_error, cli
from tests.trainers.conftest import CLASS_COLORS, write_solid

# Keeps a run short should a case ever get as far as training (it must not).
TINY = ("--trials", "1", "--epochs", "1", "--folds", "2", "--no-progress", "--no-report")
SQLITE_HEADER = b"SQLite format 3\x00"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return cli("search.run", *args, *TINY, cwd=tmp_path)


def tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'table'")}


@pytest.fixture(scope="module")
def made_stores(tmp_path_factory) -> Path:
    """A real Optuna storage (study 'other') and MLflow store, made once for the module."""
    import optuna
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("stores")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{folder / 'optuna.db'}", study_name="other")
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder


@pytest.fixture
def mlruns(tmp_path: Path, made_stores: Path) -> Path:
    """``tmp_path/mlruns`` with copies of both stores, where a run looks by default."""
    folder = tmp_path / "mlruns"
    folder.mkdir()
    for name in ("optuna.db", "mlflow.db"):
        shutil.copy(made_stores / name, folder / name)
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- the study file and the options (found before Keras is imported) -----------------------


def test_binary_study_file_names_the_file(tmp_path):
    (tmp_path / "junk.yaml").write_bytes(b"\xff\xfe\x00binary" * 8)
    assert_usage_error(run(tmp_path, "--study", "junk.yaml"),
                       "junk.yaml: not a text file", "0xff", "YAML text")


def test_study_path_that_is_a_folder_says_so(tmp_path):
    (tmp_path / "studies.yaml").mkdir()
    assert_usage_error(run(tmp_path, "--study", "studies.yaml"),
                       "'studies.yaml' is a folder", "study .yaml file")


@pytest.mark.parametrize("seed", ["99999999999999999999999", "4294967296", "-1"])
def test_seed_outside_what_numpy_takes_names_the_option_and_range(tmp_path, seed):
    assert_usage_error(run(tmp_path, "--study", "digits", "--seed", seed),
                       f"'--seed'={seed}", "an integer in [0, 4294967295]")
    assert not (tmp_path / "mlruns").exists()


def test_study_file_seed_outside_what_numpy_takes_names_the_key(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "mlp"}, "search": {"seed": 2**32},
                                    "space": {"dropout": {"low": 0.0, "high": 0.5}}}))
    assert_usage_error(run(tmp_path, "--study", str(path)),
                       str(path), "'seed'=4294967296", "[0, 4294967295]")


@pytest.mark.parametrize("name", ["a/b", "../up", "..", r"a\b", ".hidden", "two words", "a:b"])
def test_study_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": name, "model": {"name": "mlp"},
                                    "space": {"dropout": {"low": 0.0, "high": 0.5}}}))
    line = assert_usage_error(run(tmp_path, "--study", str(path)),
                              f"'name'={name!r}", "not a plain name", "letters, digits")
    assert "mlruns/logs/" in line
    assert not (tmp_path / "mlruns").exists()


# --- the data (found right after Keras is imported, before the stores open) ----------------


@pytest.mark.parametrize(("fraction", "fragment"),
                         [("1.5", "expected a number in [0, 1)"),
                          ("0.001", "holds out 2 of 1797 images")])
def test_heldout_fraction_out_of_range_names_the_key(tmp_path, fraction, fragment):
    result = run(tmp_path, "--study", "digits", "--set", f"data.heldout_fraction={fraction}")
    assert_usage_error(result, "'data.heldout_fraction'=", fragment)
    assert not (tmp_path / "mlruns").exists()


def test_data_dir_for_data_without_a_folder_is_refused(tmp_path):
    result = run(tmp_path, "--study", "digits", "--data-dir", str(tmp_path))
    assert_usage_error(result, f"--data-dir {str(tmp_path)!r}", "'data.source'='digits'",
                       "tinyimagenet and folder")
    assert not (tmp_path / "mlruns").exists()


def _folder_study(tmp_path: Path, classes: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(classes.items()):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(n):
            write_solid(tmp_path / "images" / name / f"{i}.png", CLASS_COLORS[c], size=(8, 8))
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"source": "folder", "root": "images", "image_size": [8, 8]},
        "model": {"name": "mlp", "hidden_layers": 1, "units": 8},
        "space": {"dropout": {"low": 0.0, "high": 0.5}}}))
    return path


def test_image_folder_with_one_class_is_refused_before_training(tmp_path):
    study = _folder_study(tmp_path, {"cat": 6})
    assert_usage_error(run(tmp_path, "--study", str(study)),
                       "images has 1 class folder (cat)", "at least 2")
    assert not (tmp_path / "mlruns").exists()


def test_image_folder_with_an_empty_class_names_it(tmp_path):
    study = _folder_study(tmp_path, {"cat": 6, "dog": 0})
    assert_usage_error(run(tmp_path, "--study", str(study)),
                       f"{Path('images') / 'dog'} has no images", ".png")
    assert not (tmp_path / "mlruns").exists()


# --- the stores (checked when they open, before either is written to) -----------------------


@pytest.mark.parametrize("url", ["somedir", "sqlite:///somedir"])
def test_storage_that_is_a_folder_says_so(tmp_path, url):
    (tmp_path / "somedir").mkdir()
    assert_usage_error(run(tmp_path, "--study", "digits", "--storage", url),
                       f"--storage {url}: somedir is a folder", "sqlite:///somedir/optuna.db")
    assert list((tmp_path / "somedir").iterdir()) == []


def test_sqlite_database_given_as_a_journal_file_says_how_to_write_it(tmp_path, mlruns):
    before = _snapshot(mlruns)
    assert_usage_error(run(tmp_path, "--study", "digits", "--storage", "mlruns/optuna.db"),
                       "--storage mlruns/optuna.db", "is a SQLite database, not a journal file",
                       "--storage sqlite:///mlruns/optuna.db")
    assert _snapshot(mlruns) == before


@contextlib.contextmanager
def _read_only(folder: Path):
    """Make ``folder`` read-only for this process: chmod, else (as root, whom a mode does not
    stop) a read-only tmpfs mounted over it; skips when neither works."""
    folder.chmod(0o555)
    try:
        if not os.access(folder, os.W_OK):
            yield
            return
    finally:
        folder.chmod(0o755)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot make a folder read-only here: running as root (chmod does not stop "
                    f"writes) and mounting a read-only tmpfs failed ({mounted.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_store_folder_is_one_line(tmp_path):
    folder = tmp_path / "mlruns"
    folder.mkdir()
    with _read_only(folder):
        result = run(tmp_path, "--study", "digits")
        listed = list(folder.iterdir())
    assert_usage_error(result, "--storage sqlite:///mlruns/optuna.db",
                       f"the folder {folder} is not writable", "make it writable")
    assert listed == []


@pytest.mark.parametrize(("store", "option"), [("optuna.db", "--storage"),
                                               ("mlflow.db", "--tracking-uri")])
def test_corrupt_store_file_is_one_line_and_left_as_it_was(tmp_path, mlruns, store, option):
    with (mlruns / store).open("r+b") as file:
        file.write(b"junk" * 64)  # over the header and the start of the first page
    before = _snapshot(mlruns)
    line = assert_usage_error(run(tmp_path, "--study", "digits"),
                              f"{option} sqlite:///mlruns/{store}: mlruns/{store} is not a SQLite "
                              f"database", "move the file aside", f"point {option} at another")
    assert "--fresh cannot help" in line
    assert _snapshot(mlruns) == before  # neither store written, the other one included


def test_damaged_sqlite_file_is_one_line(tmp_path, mlruns):
    with (mlruns / "optuna.db").open("r+b") as file:
        file.seek(len(SQLITE_HEADER))
        file.write(b"\xff" * 84)  # SQLite's header is intact, its fields are not
    before = _snapshot(mlruns)
    assert_usage_error(run(tmp_path, "--study", "digits"),
                       "mlruns/optuna.db is", "move the file aside")
    assert _snapshot(mlruns) == before


def test_swapped_stores_are_refused_and_left_unchanged(tmp_path, mlruns):
    optuna_tables, mlflow_tables = tables(mlruns / "optuna.db"), tables(mlruns / "mlflow.db")
    before = _snapshot(mlruns)
    assert_usage_error(
        run(tmp_path, "--study", "digits", "--storage", "sqlite:///mlruns/mlflow.db"),
        "--storage sqlite:///mlruns/mlflow.db: mlruns/mlflow.db holds an MLflow tracking store "
        "(tables experiments, runs", "not an Optuna storage", "nothing was written")
    assert_usage_error(
        run(tmp_path, "--study", "digits", "--tracking-uri", "sqlite:///mlruns/optuna.db"),
        "--tracking-uri sqlite:///mlruns/optuna.db: mlruns/optuna.db holds an Optuna storage "
        "(tables studies, trials", "not an MLflow tracking store")
    assert_usage_error(
        run(tmp_path, "--study", "digits", "--storage", "sqlite:///mlruns/mlflow.db",
            "--tracking-uri", "sqlite:///mlruns/optuna.db"),
        "holds an MLflow tracking store")
    assert_usage_error(
        run(tmp_path, "--study", "digits", "--storage", "sqlite:///mlruns/new.db",
            "--tracking-uri", "sqlite:///./mlruns/new.db"),
        "--storage sqlite:///mlruns/new.db and --tracking-uri sqlite:///./mlruns/new.db are "
        "the same store")
    assert tables(mlruns / "optuna.db") == optuna_tables
    assert tables(mlruns / "mlflow.db") == mlflow_tables
    assert _snapshot(mlruns) == before  # not new.db either: nothing was created

    # the stores it refused still work: a valid run on the same folder trains one trial
    result = run(tmp_path, "--study", "digits")
    assert result.returncode == 0, result.stderr
    assert tables(mlruns / "optuna.db") == optuna_tables


def test_a_model_too_big_for_memory_is_one_line_and_opens_no_run(tmp_path):
    # a trillion units a layer: the build itself runs out of memory, on any backend
    line = assert_usage_error(run(tmp_path, "--study", "digits", "--trials", "1",
                                  "--set", "model.units=1000000000000"),
                              "does not fit in memory here", "make it smaller")
    assert "units" in line
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("digits")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
