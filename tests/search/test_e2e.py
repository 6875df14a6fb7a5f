"""A real digits study end to end: Optuna storage, MLflow store, export, resume, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.config import build_config
from search.export import export
from search.study import count_trials, open_study
from spaces import values_from_params
from tests.search.running import LONG_TRIALS, start_training, with_trials

pytestmark = pytest.mark.slow

GOOD = {"l1_on": False, "l2_on": True, "l2": 1e-4, "dropout": 0.1, "augment": 0.0, "patience": 3}
# Heavy penalties, dropout and augmentation: far worse than the others from the first epochs,
# so the median pruner stops it deterministically.
BAD = {"l1_on": True, "l1": 1e-3, "l2_on": True, "l2": 1e-2, "dropout": 0.59, "augment": 1.0,
       "patience": 2}


def _config(tmp_path: Path, n_trials: int, **kw):
    return build_config(
        "digits", n_trials=n_trials, n_folds=3, max_epochs=3, pruner="median", seed=0,
        storage=f"sqlite:///{tmp_path}/mlruns/optuna.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db", **kw,
    )


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    from search.driver import run_study

    tmp_path = tmp_path_factory.mktemp("study")
    config = _config(tmp_path, n_trials=4)
    study = open_study(config)  # creates the study; the defaults are enqueued as trial 0
    study.enqueue_trial({**GOOD, "dropout": 0.2})
    study.enqueue_trial({**GOOD, "dropout": 0.0})
    study.enqueue_trial(BAD)
    outcome = run_study(config, progress=False)
    return tmp_path, config, outcome


def test_study_records_every_trial_in_optuna(finished_study) -> None:
    _, config, outcome = finished_study
    trials = outcome.study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    states = [t.state for t in trials]
    assert states[:3] == [TrialState.COMPLETE] * 3
    assert states[3] == TrialState.PRUNED
    # the pruned trial reported on the fold-aware step axis and stopped inside the first fold
    assert 1 <= trials[3].last_step < config.max_epochs
    assert outcome.counts == {"complete": 3, "pruned": 1, "failed": 0, "interrupted": 0,
                              "running": 0, "budget": 4}
    for t in trials[:3]:
        steps = sorted(t.intermediate_values)
        assert steps[-1] == config.n_folds * config.max_epochs - 1
        assert t.user_attrs["cv_val_loss_std"] >= 0
        assert 0.5 < t.user_attrs["cv_val_accuracy"] <= 1


def test_study_records_one_parent_and_one_child_per_trial_in_mlflow(finished_study) -> None:
    _, config, outcome = finished_study
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name("digits")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == outcome.parent_run_id
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {outcome.parent_run_id}
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for number, run in by_number.items():  # which process and backend trained it
        trial = outcome.study.trials[number]
        assert run.data.tags["worker"] == trial.user_attrs["worker"]
        assert run.data.tags["keras_backend"] == trial.user_attrs["regsearch.keras_backend"] \
            == "tensorflow"
    # a pruned trial is no failure: FINISHED (MLflow draws KILLED with the red cross of
    # FAILED), told apart by its tag and its name
    assert {n: r.info.status for n, r in by_number.items()} == {n: "FINISHED" for n in range(4)}
    assert by_number[3].data.tags["optuna.trial_state"] == "PRUNED"
    assert by_number[3].info.run_name == "trial-3 (pruned)"
    assert by_number[2].info.run_name == "trial-2"
    for number in (0, 1, 2):
        run = by_number[number]
        trial = outcome.study.trials[number]
        assert run.data.metrics["cv_val_loss"] == pytest.approx(trial.value)
        assert {"cv_val_loss_std", "cv_val_accuracy", "generalization_gap"} <= set(run.data.metrics)
        # the trial's overhead: its start to its first training step, and the same per later fold
        first, later = (run.data.metrics[k] for k in ("first_step_seconds",
                                                        "later_folds_first_step_seconds"))
        assert 0 < later and 0 < first < run.data.metrics["fit_seconds"]
        assert float(run.data.params["dropout"]) == trial.user_attrs["recipe"]["dropout"]
        for fold in range(config.n_folds):
            curve = client.get_metric_history(run.info.run_id, f"fold_{fold}/val_loss")
            assert [m.step for m in curve] == list(range(len(curve))) and curve
    parent = parents[0]
    assert parent.data.metrics["n_complete"] == 3 and parent.data.metrics["n_pruned"] == 1
    assert parent.data.tags["best.trial_number"] == str(outcome.study.best_trial.number)
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert "best_recipe.yaml" in artifacts and "plots" in artifacts
    plots = {a.path for a in client.list_artifacts(outcome.parent_run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/slice.png"} <= plots


def test_export_writes_the_best_trials_recipe(finished_study) -> None:
    tmp_path, config, outcome = finished_study
    out = export("digits", output=str(tmp_path / "best.yaml"), storage=config.storage)
    document = yaml.safe_load(out.read_text())
    best = outcome.study.best_trial
    assert document["trial"] == best.number
    assert document["cv_val_loss"]["mean"] == pytest.approx(best.value)
    expected = values_from_params(config.spec.space, best.params)
    assert {k: document["recipe"][k] for k in expected} == pytest.approx(expected)
    assert document["recipe"]["max_epochs"] == config.max_epochs
    assert document["provenance"]["versions"]["optuna"] == optuna.__version__

    as_json = export("digits", output=str(tmp_path / "best.json"), storage=config.storage)
    assert yaml.safe_load(as_json.read_text())["recipe"] == document["recipe"]

    from search.recipe_file import model_from_recipe

    model, recipe = model_from_recipe(out)
    assert recipe.to_dict() == document["recipe"]
    assert model.output_shape == (None, 10)
    assert bool(model.losses) == (recipe.l1 > 0 or recipe.l2 > 0)


def test_rerun_resumes_the_study_and_counts_the_budget_across_runs(finished_study) -> None:
    from search.driver import run_study

    tmp_path, _, first = finished_study
    config = _config(tmp_path, n_trials=5)
    outcome = run_study(config, progress=False)
    assert len(outcome.study.trials) == 5
    assert outcome.parent_run_id == first.parent_run_id

    with pytest.raises(ValueError, match="--fresh"):
        open_study(_config(tmp_path, n_trials=5).replace(max_epochs=4))


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _start_training(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `LONG_TRIALS`; return the process and its storage once a trial has an epoch."""
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    return start_training(LONG_TRIALS, cwd=tmp_path, env=ENV, storage=storage), storage


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_trial_cleanly_and_a_rerun_resumes(
        tmp_path: Path, sig: signal.Signals) -> None:
    proc, storage = _start_training(tmp_path)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output

    study = optuna.load_study(study_name="digits", storage=storage)
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL, output
    assert trial.user_attrs.get("interrupted") is True, (trial.user_attrs, output)
    expected = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "interrupted (stopped by SIGTERM)"
    assert trial.user_attrs["fail_reason"] == expected
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert child.info.status == "KILLED" and child.data.tags["interrupted"] == "true"
    if sig == signal.SIGTERM:
        return  # resuming after an interruption is the same either way: checked once

    rerun = subprocess.run(with_trials(LONG_TRIALS, 1), cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    # the default store's UI command, as the README gives it, in the next steps that end it
    assert "\nnext steps:\n  open MLflow's UI:   mlflow ui --backend-store-uri " \
           "sqlite:///mlruns/mlflow.db\n" in rerun.stderr
    study = optuna.load_study(study_name="digits", storage=storage)
    # the interrupted trial did not use up the budget of 1, and its recipe (the study's
    # default, queued first) was trained again, not lost
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs.get("enqueued") == "defaults"
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0


def test_a_rerun_fails_and_requeues_the_trial_of_a_killed_run_at_once(tmp_path: Path) -> None:
    proc, storage = _start_training(tmp_path)
    proc.kill()  # SIGKILL: nothing is recorded, the trial stays RUNNING
    proc.communicate(timeout=60)
    assert optuna.load_study(study_name="digits", storage=storage).trials[0].state \
        == TrialState.RUNNING

    # well inside the heartbeat's grace period; a budget of 1: the killed trial was the last
    rerun = subprocess.run(with_trials(LONG_TRIALS, 1), cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "trial(s) [0] of a worker process that was killed" in rerun.stderr, rerun.stderr

    study = optuna.load_study(study_name="digits", storage=storage)
    trials = study.trials
    # the kill was not the recipe's fault: it costs no budget, and its queued retry trained
    # (nothing left WAITING), so the one counted trial is a trained one
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert count_trials(study)["budget"] == 1 and count_trials(study)["interrupted"] == 1
    assert trials[0].user_attrs["fail_reason"] == (
        f"its worker process {trials[0].user_attrs['worker']} ended without recording an "
        f"outcome (killed)")
    assert trials[1].user_attrs["retry_of"] == 0
    assert trials[1].params == trials[0].params
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    killed = next(r for r in runs if r.data.tags.get("optuna.trial_number") == "0")
    assert killed.info.status == "FAILED" and "(killed)" in killed.data.tags["fail_reason"]


def test_a_baseline_left_running_by_a_killed_process_is_closed_and_trained_again(
        tmp_path: Path) -> None:
    import socket

    from search.driver import run_study
    from search.liveness import pid_namespace
    from search.names import BASELINES_ATTR, RUNNING_IN_KEY, WORKER_ATTR, WORKER_NS_ATTR

    config = _config(tmp_path, n_trials=1, baselines="reference", report=False,
                     overrides=["model.hidden_layers=1", "model.units=32"])
    first = run_study(config, progress=False)
    client = MlflowClient(config.tracking_uri)
    # what a process killed while training baseline "l2" leaves: a RUNNING run, and the marker
    stored = first.study.user_attrs[BASELINES_ATTR]
    left = client.create_run(client.get_run(first.parent_run_id).info.experiment_id,
                             tags={"mlflow.parentRunId": first.parent_run_id, "baseline": "l2"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = {"recipe": stored["l2"]["recipe"], "mlflow_run_id": left.info.run_id,
              RUNNING_IN_KEY: {WORKER_ATTR: f"{socket.gethostname()}:{dead.pid}",
                            WORKER_NS_ATTR: pid_namespace()}}
    first.study.set_user_attr(BASELINES_ATTR, {**stored, "l2": killed})

    again = run_study(config, progress=False)

    baselines = again.study.user_attrs[BASELINES_ATTR]
    assert all(RUNNING_IN_KEY not in outcome for outcome in baselines.values())
    assert {k: v for k, v in baselines.items() if k != "l2"} == {
        k: v for k, v in stored.items() if k != "l2"}  # the others were not trained again
    assert baselines["l2"]["mlflow_run_id"] not in (left.info.run_id, stored["l2"]["mlflow_run_id"])
    assert client.get_run(baselines["l2"]["mlflow_run_id"]).info.status == "FINISHED"
    closed = client.get_run(left.info.run_id)
    assert closed.info.status == "FAILED" and "(killed)" in closed.data.tags["fail_reason"]
