"""The objective, the baselines and the held-out report against an in-memory tracker: what each
records, how each run ends, and what a lost store does. Real Keras training on a few digits."""

from __future__ import annotations

import signal

import optuna
import pytest
from optuna.trial import TrialState

from search.baselines import baseline_recipes, run_baselines
from search.config import build_config
from search.datasets import StudyData, load_data
from search.mlflow_tracker import MlflowTracker
from search.names import (
    BASELINES_ATTR,
    FAIL_REASON_ATTR,
    FOLD_LOSSES_ATTR,
    INTERRUPTED_ATTR,
    RUN_ID_ATTR,
)
from search.recording import close_runs_left_running, close_trial_run
from search.report import heldout_report, report_lines
from search import stopping
from search.study import count_trials, quiet_optuna
from search.tracking import Tracker, TrackingLost
from search.training import prepare_training
from search.worker import Objective, run_step, run_trials
from tests.search.memory_tracker import MemoryTracker


@pytest.fixture(scope="module")
def digits():
    """A 2-fold, 2-epoch digits config, 150 training and 60 held-out images, its training."""
    quiet_optuna()
    config = build_config("digits", n_trials=1, n_folds=2, max_epochs=2, seed=0,
                          overrides=["data.heldout_fraction=0.2"])
    full = load_data(config.spec.data, where="digits", seed=0)
    data = StudyData(full.train.subset(range(150)), full.heldout.subset(range(60)),
                     full.augment_preset)
    return config, data, prepare_training(config, data)


def _objective(digits, tracker, models=None) -> tuple[Objective, str]:
    config, data, training = digits
    parent = tracker.open_parent(config.name, config.settings())
    return Objective(config, data.train, training.folds, models or training.models, tracker,
                     parent), parent


def test_both_trackers_implement_the_protocol(tmp_path) -> None:
    assert isinstance(MemoryTracker(), Tracker)
    assert isinstance(MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db"), Tracker)


def test_a_complete_trial_is_one_child_run_with_its_recipe_folds_and_summary(digits) -> None:
    tracker = MemoryTracker()
    objective, parent = _objective(digits, tracker)
    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    (run,) = tracker.children(parent)
    assert trial.state == TrialState.COMPLETE and run.status == "COMPLETE"
    assert trial.user_attrs[RUN_ID_ATTR] in tracker.runs
    assert run.tags["optuna.trial_number"] == "0" and run.tags["regsearch.role"] == "trial"
    assert run.params["dropout"] == str(trial.user_attrs["recipe"]["dropout"])
    assert sorted(run.folds) == [0, 1]
    assert all(len(curves["val_loss"]) >= 1 for curves in run.folds.values())
    assert run.metrics["cv_val_loss"] == pytest.approx(trial.value)


def test_a_recipe_that_raises_fails_its_trial_and_its_run_with_one_reason(digits) -> None:
    def build(recipe, **_):  # noqa: ANN001, ANN003
        raise ValueError("the model refuses this recipe")

    tracker = MemoryTracker()
    objective, parent = _objective(digits, tracker, models=build)
    study = optuna.create_study()
    study.optimize(objective, n_trials=1, catch=(Exception,))
    trial = study.trials[0]
    (run,) = tracker.children(parent)
    reason = "ValueError: the model refuses this recipe"
    assert trial.state == TrialState.FAIL and trial.user_attrs[FAIL_REASON_ATTR] == reason
    assert (run.status, run.reason) == ("FAIL", reason)
    assert count_trials(study)["budget"] == 1


def test_a_stop_interrupts_the_trial_in_both_and_costs_no_budget(digits) -> None:
    def build(recipe, **_):  # noqa: ANN001, ANN003
        raise KeyboardInterrupt("stopped by SIGTERM")

    tracker = MemoryTracker()
    objective, parent = _objective(digits, tracker, models=build)
    study = optuna.create_study()
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    (run,) = tracker.children(parent)
    assert trial.state == TrialState.FAIL and trial.user_attrs[INTERRUPTED_ATTR] is True
    assert (run.status, run.reason) == ("INTERRUPTED", "interrupted (stopped by SIGTERM)")
    assert count_trials(study)["budget"] == 0
    # its recipe waits, queued, for the run that resumes
    assert study.trials[1].state == TrialState.WAITING
    assert study.trials[1].system_attrs["fixed_params"] == trial.params


def test_an_error_raised_after_a_stop_was_asked_for_is_the_stop(digits, monkeypatch) -> None:
    # A signal's KeyboardInterrupt can come out of library code as the library's own error;
    # the trial was still stopped, not failed by its recipe.
    def build(recipe, **_):  # noqa: ANN001, ANN003
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt as exc:
            raise RuntimeError("a library's own error") from exc

    monkeypatch.setattr(stopping, "_stop_reason", None)  # and back to None afterwards
    before = signal.getsignal(signal.SIGTERM)
    stopping.stop_cleanly_on(signal.SIGTERM)
    tracker = MemoryTracker()
    objective, parent = _objective(digits, tracker, models=build)
    study = optuna.create_study()
    try:
        with pytest.raises(KeyboardInterrupt):
            study.optimize(objective, n_trials=1, catch=(Exception,))
    finally:
        signal.signal(signal.SIGTERM, before)
    trial = study.trials[0]
    (run,) = tracker.children(parent)
    assert trial.state == TrialState.FAIL and trial.user_attrs[INTERRUPTED_ATTR] is True
    assert trial.user_attrs[FAIL_REASON_ATTR] == "interrupted (stopped by SIGTERM)"
    assert (run.status, run.reason) == ("INTERRUPTED", "interrupted (stopped by SIGTERM)")
    assert count_trials(study)["budget"] == 0


def test_a_baseline_stopped_inside_a_library_is_interrupted_not_failed(digits,
                                                                     monkeypatch) -> None:
    # The same stop in a baseline (and in anything else trained through `train_recorded`):
    # it comes out as the stop, so the driver's clean stop catches it (it came out as the
    # library's error, a traceback, with the study's run left RUNNING)
    config, data, training = digits

    def build(recipe, **_):  # noqa: ANN001, ANN003
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt as exc:
            raise TypeError("Exception encountered when calling VariableDropout.call()") from exc

    monkeypatch.setattr(stopping, "_stop_reason", None)
    before = signal.getsignal(signal.SIGTERM)
    stopping.stop_cleanly_on(signal.SIGTERM)
    tracker = MemoryTracker()
    parent = tracker.open_parent(config.name, config.settings())
    study = optuna.create_study()
    recipes = {k: v for k, v in baseline_recipes(config, "reference").items() if k == "l2"}
    try:
        with pytest.raises(KeyboardInterrupt, match="stopped by SIGTERM"):
            run_baselines(study, config, recipes, data=data.train, folds=training.folds,
                          models=build, tracker=tracker, parent_run_id=parent)
    finally:
        signal.signal(signal.SIGTERM, before)
    (run,) = tracker.children(parent)
    assert (run.status, run.reason) == ("INTERRUPTED", "interrupted (stopped by SIGTERM)")
    assert study.user_attrs[BASELINES_ATTR] == {}  # trained again by the run that resumes


def test_a_tracker_lost_mid_trial_stops_the_loop_and_the_next_run_closes_its_run(digits) -> None:
    tracker = MemoryTracker(lose_at="log_fold")
    objective, parent = _objective(digits, tracker)
    study = optuna.create_study(study_name="digits")
    with pytest.raises(TrackingLost):
        run_trials(study, objective, n_trials=3)
    trial, queued = study.trials  # the loop stopped; the lost trial's recipe waits, queued
    assert trial.state == TrialState.FAIL and trial.user_attrs[INTERRUPTED_ATTR] is True
    assert queued.state == TrialState.WAITING and queued.user_attrs["retry_of"] == 0
    assert count_trials(study)["budget"] == 0
    (run,) = tracker.children(parent)
    assert run.status == "RUNNING"  # nothing could be written
    tracker.lose_at = None  # the store is back: the next run closes what was left open
    assert close_runs_left_running(tracker, study) == [0]
    assert run.status == "INTERRUPTED" and run.reason.startswith("interrupted (")


def test_a_trial_failed_on_its_process_behalf_closes_its_run_with_the_reason(digits) -> None:
    tracker = MemoryTracker()
    parent = tracker.open_parent("s", {})
    run_id = tracker.start_run(parent, "trial-0", {}, {})
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr(RUN_ID_ATTR, run_id)
    trial.set_user_attr(FAIL_REASON_ATTR, "its worker process h:1 ended (killed)")
    study.tell(trial, state=TrialState.FAIL)
    close_trial_run(tracker, study.trials[0])
    assert (tracker.runs[run_id].status, tracker.runs[run_id].reason) == \
        ("FAIL", "its worker process h:1 ended (killed)")


def test_baselines_are_recorded_like_trials_and_kept_in_the_study(digits) -> None:
    config, data, training = digits
    tracker = MemoryTracker()
    parent = tracker.open_parent(config.name, config.settings())
    study = optuna.create_study()
    recipes = {k: v for k, v in baseline_recipes(config, "reference").items() if k == "l2"}
    outcomes = run_baselines(study, config, recipes, data=data.train, folds=training.folds,
                             models=training.models, tracker=tracker, parent_run_id=parent)
    (run,) = tracker.children(parent)
    assert run.status == "COMPLETE" and run.tags["baseline"] == "l2"
    assert run.tags["regsearch.role"] == "baseline" and run.params["l2"] == "0.0001"
    assert sorted(run.folds) == [0, 1]
    stored = study.user_attrs[BASELINES_ATTR]["l2"]
    assert stored[RUN_ID_ATTR] in tracker.runs and "running_in" not in stored
    assert outcomes["l2"]["cv_val_loss"] == pytest.approx(run.metrics["cv_val_loss"])


def test_modern_baselines_train_beside_the_reference_five(digits) -> None:
    config, data, training = digits
    reference, modern = (baseline_recipes(config, name) for name in ("reference", "modern"))
    assert {name: modern[name] for name in reference} == reference
    combined = modern["adamw_0.05_label_smoothing_0.1_mixup_0.2_augmentation"]
    assert (combined.weight_decay, combined.label_smoothing, combined.mixup, combined.augment,
            combined.l2, combined.dropout) == (0.05, 0.1, 0.2, 1.0, 0.0, 0.0)
    assert combined.replace(weight_decay=0.0, label_smoothing=0.0, mixup=0.0, augment=0.0) \
        == reference["none"]  # otherwise the study's settings, as every baseline
    tracker = MemoryTracker()
    parent = tracker.open_parent(config.name, config.settings())
    study = optuna.create_study()
    recipes = {name: modern[name] for name in ("label_smoothing_0.1", "cutmix_1.0")}
    outcomes = run_baselines(study, config, recipes, data=data.train, folds=training.folds,
                             models=training.models, tracker=tracker, parent_run_id=parent)
    runs = {run.tags["baseline"]: run for run in tracker.children(parent)}
    assert runs["label_smoothing_0.1"].params["label_smoothing"] == "0.1"
    assert runs["cutmix_1.0"].params["cutmix"] == "1.0"
    assert all(run.status == "COMPLETE" for run in runs.values())
    assert all(0 < outcomes[name]["cv_val_loss"] < 10 for name in recipes)

    # a study stored before these fields existed holds recipes without them: the same recipes
    stored = study.user_attrs[BASELINES_ATTR]
    older = {name: {**outcome, "recipe": {k: v for k, v in outcome["recipe"].items()
                                          if k not in ("weight_decay", "mixup")}}
             for name, outcome in stored.items()}
    study.set_user_attr(BASELINES_ATTR, older)
    run_baselines(study, config, {"cutmix_1.0": recipes["cutmix_1.0"]}, data=data.train,
                  folds=training.folds, models=training.models, tracker=tracker,
                  parent_run_id=parent)
    assert len(tracker.children(parent)) == 2  # nothing trained again


def test_the_heldout_report_logs_its_table_and_curves_on_the_parent(digits) -> None:
    config, data, training = digits
    tracker = MemoryTracker()
    parent = tracker.open_parent(config.name, config.settings())
    study = optuna.create_study()
    recipe = baseline_recipes(config, "reference")["none"].to_dict()
    rows = heldout_report(study, {"none": {"recipe": recipe, "best_epochs": [1, 1],
                                           "cv_val_loss": 1.0}},
                          train=data.train, heldout=data.heldout, models=training.models,
                          seed=0, tracker=tracker, parent_run_id=parent)["rows"]
    assert [r["label"] for r in rows] == ["none"] and rows[0]["epochs"] == 2
    assert sorted(tracker.runs[parent].artifacts) == [
        "heldout_report.json", "heldout_report.md", "learning_curves.png"]
    assert tracker.runs[parent].metrics["heldout_loss/none"] == pytest.approx(
        rows[0]["heldout_loss"])


def test_the_report_says_which_baselines_the_selected_recipe_beats_beyond_noise(digits) -> None:
    config, data, training = digits
    tracker = MemoryTracker()
    parent = tracker.open_parent(config.name, config.settings())
    good = baseline_recipes(config, "reference")["none"].replace(max_epochs=6).to_dict()
    weak = {**good, "learning_rate": 1e-6}  # one epoch at a crawl: no better than its start
    candidates = {
        "selected (trial 0)": {"recipe": good, "best_epochs": [5, 5], "cv_val_loss": 0.30,
                               FOLD_LOSSES_ATTR: [0.30, 0.32, 0.29]},
        "baseline weak": {"recipe": weak, "best_epochs": [0, 0], "cv_val_loss": 2.0,
                          FOLD_LOSSES_ATTR: [2.0, 2.1, 1.9]},
        "baseline same": {"recipe": good, "best_epochs": [5, 5], "cv_val_loss": 0.31,
                          FOLD_LOSSES_ATTR: [0.31, 0.30, 0.30]},
    }
    report = heldout_report(optuna.create_study(), candidates, train=data.train,
                            heldout=data.heldout, models=training.models, seed=0,
                            tracker=tracker, parent_run_id=parent,
                            warnings=["the selected value of dropout lies at the edge"])
    weak_words, same_words = (c["words"] for c in report["comparisons"])
    assert len(weak_words) == 3 and all(w.startswith("beats baseline weak by") for w in weak_words[:2])
    assert weak_words[0].endswith("beyond fold noise")
    assert weak_words[1].endswith("beyond image-to-image noise")
    assert all(w.startswith("not distinguishable from baseline same") for w in same_words[1:])
    # the same recipe, seed and epochs: the held-out images pair up exactly
    assert report["comparisons"][1]["heldout_loss"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert "too few recipes" in report["agreement"]["verdict"]
    lines = report_lines(report)
    assert lines[0].startswith("selected (trial 0) beats baseline weak")
    assert lines[-1] == "warning: the selected value of dropout lies at the edge"
    assert len(report["rows"][0]["heldout_losses"]) == len(data.heldout)


def test_a_step_asks_no_trial_past_the_budget_that_other_workers_fill(digits) -> None:
    tracker = MemoryTracker()
    objective, parent = _objective(digits, tracker)
    objective.config = objective.config.replace(fold_mode="batched", recipes_per_step=3)
    study = optuna.create_study()
    elsewhere = study.ask()  # another worker's trial, running: it counts against the budget
    run_step(study, objective, 3, budget=3)
    trials = study.trials
    # two more fit under the budget of three, and only two were asked
    assert [t.number for t in trials] == [elsewhere.number, 1, 2]
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 2
    assert len(tracker.children(parent)) == 2
    # without a budget it asks all three: the check is what held the third back
    run_step(study, objective, 3)
    assert len(study.trials) == 6
