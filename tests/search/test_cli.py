"""Tests for the command lines `python -m search.run` and `python -m search.export`.

Each case is a user mistake that must end with exit code 2 and a one-line message, before
Keras is imported, so these run as real subprocesses and stay fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

EXIT_USAGE = 2
REPO = Path(__file__).resolve().parents[2]
RUN_OPTIONS = ("--trials", "--timeout", "--folds", "--epochs", "--sampler", "--pruner", "--seed",
               "--storage", "--tracking-uri", "--fresh")


def cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # this checkout's code, whichever one the environment's editable install points at
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one `error:` line on stderr naming each fragment, no traceback, no stdout."""
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    return lines[0]


def test_run_help_lists_options(tmp_path):
    result = cli("search.run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in RUN_OPTIONS + ("--study",):
        assert option in result.stdout
    assert "digits" in result.stdout  # the built-in studies are listed
    assert result.stderr == ""


def test_export_help_lists_options(tmp_path):
    result = cli("search.export", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--study", "--format", "--output", "--trial", "--storage"):
        assert option in result.stdout


def test_run_unknown_study_lists_known(tmp_path):
    line = assert_usage_error(cli("search.run", "--study", "nope", cwd=tmp_path),
                              "unknown study 'nope'")
    assert re.search(r"known studies: .*\bdigits\b", line)
    assert not (tmp_path / "mlruns").exists()  # nothing created before the settings were valid


@pytest.mark.parametrize(
    ("option", "value"),
    [("--trials", "0"), ("--trials", "-3"), ("--folds", "1"), ("--folds", "0"), ("--folds", "21"),
     ("--epochs", "0"), ("--timeout", "-1"), ("--timeout", "0"), ("--seed", "-1")],
)
def test_run_bad_option_value_names_option(tmp_path, option, value):
    result = cli("search.run", "--study", "digits", option, value, cwd=tmp_path)
    line = assert_usage_error(result, f"'{option}'={value}", "out of range")
    assert "expected" in line
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--trials", "abc"], "--trials"), (["--timeout", "soon"], "--timeout"),
     (["--sampler", "grid"], "--sampler"), (["--pruner", "patient"], "--pruner"),
     (["--folds", "2.5"], "--folds")],
)
def test_run_unparsable_option_names_option(tmp_path, args, option):
    # argparse's own errors: usage then one error line, exit 2.
    result = cli("search.run", "--study", "digits", *args, cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert "Traceback" not in result.stderr
    assert f"argument {option}" in result.stderr.strip().splitlines()[-1]


def test_run_missing_study_argument(tmp_path):
    result = cli("search.run", "--trials", "3", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert "--study" in result.stderr
    assert "Traceback" not in result.stderr


def _bad_study(tmp_path: Path) -> Path:
    study = {
        "name": "bad",
        "model": {"name": "mlp"},
        "space": {"dropout": {"low": 0.0, "high": 1.5}},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_run_bad_study_file_names_file_and_key(tmp_path):
    path = _bad_study(tmp_path)
    assert_usage_error(cli("search.run", "--study", str(path), cwd=tmp_path),
                       str(path), "'space.dropout.high'=1.5", "[0, 1)")


def test_run_bad_study_file_relative_path(tmp_path):
    _bad_study(tmp_path)
    line = assert_usage_error(cli("search.run", "--study", "bad.yaml", cwd=tmp_path),
                              "'space.dropout.high'")
    assert line.startswith("error: bad.yaml: ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("space: {dropout: {low: 0, high: [}\n", "not valid YAML"),
     ("model: {name: mlp}\nsearch: {n_folds: 1}\nspace: {dropout: {low: 0, high: 0.5}}\n",
      "'n_folds'=1"),
     ("model: {name: mlp}\nsearch: {sampler: grid}\nspace: {dropout: {low: 0, high: 0.5}}\n",
      "'sampler'='grid'"),
     ("model: {name: mlp}\nspace: {l2: {low: 0, high: 0.1, log: true}}\n",
      "'space.l2' uses log=True"),
     ("model: {name: mlp}\nspace: {l3: {low: 0, high: 0.1}}\n", "unknown parameter 'l3'")],
)
def test_run_study_file_errors_are_one_line(tmp_path, text, fragment):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    result = cli("search.run", "--study", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert "Traceback" not in result.stderr
    # A YAML error carries PyYAML's multi-line position; the first line names file and cause.
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {path}: ")
    assert fragment in first


def test_run_missing_study_file(tmp_path):
    assert_usage_error(cli("search.run", "--study", "missing.yaml", cwd=tmp_path),
                       "'missing.yaml' does not exist")


def test_export_without_storage(tmp_path):
    line = assert_usage_error(cli("search.export", "--study", "digits", cwd=tmp_path),
                              "no study storage at sqlite:///mlruns/optuna.db")
    assert "python -m search.run --study digits" in line
    assert not (tmp_path / "mlruns").exists()


def test_export_nonexistent_storage_file(tmp_path):
    assert_usage_error(
        cli("search.export", "--study", "digits", "--storage", "sqlite:///nowhere.db",
            cwd=tmp_path),
        "no study storage at sqlite:///nowhere.db", "--storage",
    )
    assert not (tmp_path / "nowhere.db").exists()


@pytest.fixture
def storage(tmp_path) -> str:
    """A SQLite storage with study 'other' and study 'pruned' (one pruned trial)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=url, study_name="other")
    pruned = optuna.create_study(storage=url, study_name="pruned")
    pruned.tell(pruned.ask(), state=optuna.trial.TrialState.PRUNED)
    return url


def test_export_unknown_study_lists_stored(tmp_path, storage):
    assert_usage_error(cli("search.export", "--study", "digits", "--storage", storage,
                           cwd=tmp_path),
                       "no study 'digits'", "stored studies: other, pruned")


def test_export_study_path_finds_the_study_by_its_name(tmp_path, storage):
    # the README's own example: my_study.yaml holds `name: flowers`
    (tmp_path / "my_study.yaml").write_text(
        "name: flowers\n"
        "data: {source: folder, root: data/flowers, image_size: [64, 64]}\n"
        "model: {name: small_resnet}\n"
        "space:\n  dropout: {low: 0.0, high: 0.6, default: 0.2}\n")
    assert_usage_error(cli("search.export", "--study", "my_study.yaml", "--storage", storage,
                           cwd=tmp_path),
                       "no study 'flowers'")
    study = optuna.create_study(storage=storage, study_name="flowers")
    trial = study.ask()
    trial.set_user_attr("recipe", {"dropout": 0.2})
    study.tell(trial, 0.5)
    done = cli("search.export", "--study", "my_study.yaml", "--storage", storage, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load((tmp_path / "flowers_recipe.yaml").read_text())
    assert written["study"] == "flowers" and written["recipe"] == {"dropout": 0.2}


def test_export_no_complete_trial(tmp_path, storage):
    assert_usage_error(cli("search.export", "--study", "pruned", "--storage", storage,
                           cwd=tmp_path),
                       "'pruned' has no complete trial yet")


@pytest.mark.parametrize(("trial", "fragment"),
                         [("0", "trial 0 of 'pruned' is PRUNED"), ("5", "has no trial 5")])
def test_export_bad_trial_number(tmp_path, storage, trial, fragment):
    assert_usage_error(cli("search.export", "--study", "pruned", "--storage", storage,
                           "--trial", trial, cwd=tmp_path),
                       fragment)
    assert not list(tmp_path.glob("pruned_recipe.*"))


@pytest.mark.parametrize(
    ("option", "url", "fragments"),
    [("--storage", "foo://bar", ["--storage foo://bar", "not a store URL", "postgresql+psycopg2://"]),
     # port 1: nothing listens, so the connection is refused at once
     ("--storage", "postgresql+psycopg2://u:s3cret@127.0.0.1:1/db",
      ["--storage postgresql+psycopg2://u:***@127.0.0.1:1/db", "cannot open the database",
       "refused"]),
     ("--tracking-uri", "foo://bar", ["--tracking-uri foo://bar", "not a store URL",
                                      "http://MLFLOW-SERVER"]),
     ("--tracking-uri", "http://u:s3cret@127.0.0.1:1", ["--tracking-uri http://u:***@127.0.0.1:1",
                                                        "no MLflow server answers", "refused"])],
    ids=["storage-scheme", "storage-refused", "tracking-scheme", "tracking-server-down"],
)
def test_run_store_that_cannot_be_opened_is_one_line(tmp_path, option, url, fragments):
    result = cli("search.run", "--study", "digits", option, url, cwd=tmp_path)
    line = assert_usage_error(result, *fragments)
    assert "s3cret" not in result.stderr + result.stdout, line


def test_run_postgres_url_without_its_driver_says_which_to_install(tmp_path):
    # A bare postgresql:// means psycopg 3 to SQLAlchemy 2.1; the postgres extra installs psycopg2.
    result = cli("search.run", "--study", "digits", "--storage",
                 "postgresql://u:s3cret@127.0.0.1:1/db", cwd=tmp_path)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        assert_usage_error(result, "driver for postgresql:// is not installed",
                           "postgresql+psycopg2://")
    else:  # the driver is there: then the refused connection is the message
        assert_usage_error(result, "cannot open the database")
    assert "s3cret" not in result.stderr + result.stdout


def test_run_unknown_model_lists_known_before_any_store_is_opened(tmp_path):
    result = cli("search.run", "--study", "digits", "--set", "model.name=vgg", cwd=tmp_path)
    assert_usage_error(result, "unknown model 'vgg'", "known models:", "seed_cnn")
    # checked before the stores: a stored study made with another model cannot hide it
    assert not (tmp_path / "mlruns" / "optuna.db").exists()


def test_run_unknown_model_option_names_model_and_option(tmp_path):
    result = cli("search.run", "--study", "digits", "--set", "model.depth=3", cwd=tmp_path)
    assert_usage_error(result, "model 'mlp'", "depth")


def test_run_gpus_on_a_host_without_gpus_is_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "search.run", "--study", "digits", "--gpus",
                             "0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert_usage_error(result, "'--gpus'='0'", "no GPU is visible here")
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("where", ["--backend", "$KERAS_BACKEND", "keras.json"])
def test_run_on_a_backend_that_is_not_installed_is_one_line(tmp_path, where):
    # `sys.modules["torch"] = None` is how Python marks a module as absent: its import fails
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text('import sys\nsys.modules["torch"] = None\n')
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hide"), "KERAS_HOME": str(tmp_path)}
    env.pop("KERAS_BACKEND", None)
    args = ["--study", "digits"]
    if where == "--backend":
        args += ["--backend", "torch"]
    elif where == "$KERAS_BACKEND":
        env["KERAS_BACKEND"] = "torch"
    result = subprocess.run([sys.executable, "-m", "search.run", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    source = str(tmp_path / "keras.json") if where == "keras.json" else where
    assert_usage_error(result, f"Keras backend 'torch' (from {source}) is not installed",
                       'pip install -e ".[torch]"', "--backend (jax, tensorflow)")
    assert not (tmp_path / "mlruns").exists()


def test_run_on_a_backend_regsearch_does_not_train_on_is_one_line(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    result = subprocess.run([sys.executable, "-m", "search.run", "--study", "digits"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert_usage_error(result, "Keras backend 'numpy' (from $KERAS_BACKEND) is not one",
                       "jax, tensorflow, torch")


def test_every_study_setting_is_an_option_of_the_same_name_and_reaches_the_config(monkeypatch):
    import search.config
    from search import run

    assert search.config.OPTIONS <= {a.dest for a in run.parser()._actions}
    real, seen = search.config.build_config, []

    def capture(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(real(*args, **kwargs))
        raise LookupError("stop here: the config is what this test reads")

    monkeypatch.setattr(run, "build_config", capture)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere/mlflow.db")
    code = run.main(["--study", "digits", "--trials", "7", "--no-report", "--report-top", "2",
                     "--stop-within-noise", "--seed", "5", "--precision", "bfloat16"])
    assert code == EXIT_USAGE
    (config,) = seen
    assert (config.n_trials, config.report, config.report_top, config.stop_within_noise,
            config.seed, config.precision) == (7, False, 2, True, 5, "bfloat16")
    assert config.tracking_uri == "sqlite:///elsewhere/mlflow.db"
    assert config.n_folds == 3 and config.fresh is False  # the study file's; the default
