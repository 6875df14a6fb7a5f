"""Pruners judge a trial where a fold ends, never on how fast it learns in a fold's first epochs."""

from __future__ import annotations

import functools

import optuna
import pytest
from optuna.trial import TrialState

from search.config import build_config
from search.study import count_trials, make_pruner
from search.worker import RunningCV

EPOCHS, FOLDS = 10, 3


def _study(pruner: str) -> optuna.Study:
    config = build_config("digits", max_epochs=EPOCHS, n_folds=FOLDS, pruner=pruner,
                          storage="sqlite:///:memory:", tracking_uri="sqlite:///:memory:")
    return optuna.create_study(pruner=make_pruner(config), direction="minimize")


def _complete(study: optuna.Study, curve: list[float]) -> None:
    trial = study.ask()
    for step, value in enumerate(curve):
        trial.report(value, step)
        trial.should_prune()  # as the objective does: successive halving records rungs here
    study.tell(trial, min(curve))


def _fold_curve(start: float, end: float) -> list[float]:
    """What a trial reports over its folds when each fold's best loss falls from start to end."""
    estimate = RunningCV(EPOCHS)
    return [estimate.update(fold, e, start + (end - start) * e / (EPOCHS - 1))
            for fold in range(FOLDS) for e in range(EPOCHS)]


def test_running_cv_is_the_fold_best_then_the_mean_of_finished_folds() -> None:
    estimate = RunningCV(max_epochs=3)
    reported = [estimate.update(0, 0, 2.0), estimate.update(0, 1, 1.0), estimate.update(0, 2, 0.9),
                estimate.update(1, 0, 3.0), estimate.update(1, 1, 2.0), estimate.update(1, 2, 0.5)]
    assert reported == [2.0, 1.0, 0.9, 0.9, 0.9, pytest.approx(0.7)]


def _steps_until_pruned(study: optuna.Study, curve: list[float]) -> int | None:
    trial = study.ask()
    for step, value in enumerate(curve):
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, min(curve))
    return None


@pytest.mark.parametrize("pruner", ["median", "hyperband", "sha"])
def test_pruner_spares_a_slow_starter_that_ends_the_fold_best(pruner: str) -> None:
    study = _study(pruner)
    for _ in range(4):
        _complete(study, _fold_curve(1.0, 0.5))
    # a strongly regularized recipe: far behind early in the fold, ahead at its end
    slow = _fold_curve(2.5, 0.4)
    assert _steps_until_pruned(study, slow) is None


@pytest.mark.parametrize("pruner", ["median", "sha"])
def test_pruner_stops_a_trial_that_ends_its_first_fold_worse(pruner: str) -> None:
    study = _study(pruner)
    for _ in range(4):
        _complete(study, _fold_curve(1.0, 0.5))
    worse = _fold_curve(1.0, 0.9)
    assert _steps_until_pruned(study, worse) == EPOCHS - 1  # the end of fold 0, not before


def test_sampler_takes_the_study_file_tpe_options_over_regsearch_defaults() -> None:
    from search.study import TPE_DEFAULTS, make_sampler

    shipped = make_sampler(build_config("digits")).current
    assert isinstance(shipped, optuna.samplers.TPESampler)
    # wiring, so read from the sampler's private attributes
    assert (shipped._multivariate, shipped._group, shipped._n_startup_trials,
            shipped._constant_liar) == (True, True, 5, True)
    assert TPE_DEFAULTS == {"multivariate": True, "group": True, "n_startup_trials": 5,
                            "constant_liar": True}
    config = build_config("digits", overrides=[
        "search.tpe={multivariate: false, n_startup_trials: 4, constant_liar: false}"])
    sampler = make_sampler(config).current
    assert (sampler._multivariate, sampler._group, sampler._n_startup_trials,
            sampler._constant_liar) == (False, False, 4, False)  # group follows multivariate
    # the options are TPE's: a random sampler ignores them
    assert isinstance(make_sampler(config.replace(sampler="random")).current,
                      optuna.samplers.RandomSampler)


def _recipes(study: optuna.Study, n: int, space) -> list[dict]:
    from spaces import sample_params

    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample_params(space, trial))
        study.tell(trial, 1.0 + trial.number / 10)  # the same history however it was run
    return out


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_two_processes_on_one_study_draw_different_recipes_and_one_alone_repeats_its_own(
        tmp_path, sampler: str) -> None:
    from search.study import make_sampler

    config = build_config("digits", sampler=sampler, seed=3)
    space = config.spec.space

    def open_(name: str) -> optuna.Study:  # what each process of a study builds for itself
        return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/o.db",
                                 sampler=make_sampler(config))

    for name in ("shared", "alone", "again"):
        optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path}/o.db")
    first, second = open_("shared"), open_("shared")
    drawn = []
    for _ in range(3):  # the two take turns, as two workers do
        drawn += _recipes(first, 1, space) + _recipes(second, 1, space)
    assert len({repr(sorted(r.items())) for r in drawn}) == len(drawn)
    # reproducible: the same seed and trial numbers give the same recipes
    assert _recipes(open_("alone"), 6, space) == _recipes(open_("again"), 6, space) == drawn


def test_a_trial_whose_worker_stopped_beating_is_failed_closed_in_mlflow_and_retried(
        tmp_path) -> None:
    import time
    import warnings

    from search.driver import _close_stale_run
    from search.mlflow_tracker import MlflowTracker
    from search.recording import start_run
    from search.study import STALE_REASON, StaleTrialCallback
    from trainers.recipe import Recipe

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1, grace_period=1,
            heartbeat_stale_trial_callback=StaleTrialCallback(
                functools.partial(_close_stale_run, tracking)))
    study = optuna.create_study(study_name="s", storage=storage)
    tracker = MlflowTracker(tracking)
    parent = tracker.open_parent("s", {})
    # a worker starts a trial, beats once and dies
    with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": it is,
        warnings.simplefilter("ignore", UserWarning)  # below; this worker only plays dead
        dead = study.ask()
    x = dead.suggest_float("x", 0.0, 1.0)
    run_id = start_run(tracker, parent, Recipe(dropout=x), name="trial-0",
                       trial_number=dead.number)
    dead.set_user_attr("mlflow_run_id", run_id)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    # another worker's next trial: Optuna's stale check runs the callback first
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=1)

    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert trials[1].state == TrialState.COMPLETE and trials[1].params == {"x": x}  # the retry
    # the worker's death was not the recipe's fault: only the retry counts against the budget
    assert count_trials(study)["budget"] == 1 and count_trials(study)["interrupted"] == 1
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"] == STALE_REASON
    assert run.data.tags["optuna.trial_state"] == "FAIL"


def _ask_together(url: str, barrier, queue, rounds: int) -> None:  # noqa: ANN001
    from search.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    for _ in range(rounds):
        barrier.wait()
        trial = study.ask()
        queue.put((trial.number,
                   "fixed_params" in study._storage.get_trial_system_attrs(trial._trial_id)))
        barrier.wait()


def test_workers_asking_together_on_sqlite_never_get_the_same_queued_trial(tmp_path) -> None:
    """Workers started together all ask for the enqueued defaults trial: only one may run it.

    Without `serialize_sqlite_transactions`, 4 processes got the same queued trial in 13 of 20
    rounds (the losers then crash on "Cannot tell a COMPLETE trial").
    """
    import multiprocessing

    from search.study import open_storage

    url, workers, rounds = f"sqlite:///{tmp_path}/optuna.db", 4, 12
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(workers + 1), context.Queue()
    procs = [context.Process(target=_ask_together, args=(url, barrier, queue, rounds))
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    try:
        for r in range(rounds):
            study.enqueue_trial({"x": float(r)})
            barrier.wait(timeout=120)
            barrier.wait(timeout=120)
            asked = [queue.get(timeout=60) for _ in range(workers)]
            numbers = [number for number, _ in asked]
            assert len(set(numbers)) == workers, f"round {r}: trials {numbers}"
            assert sum(queued for _, queued in asked) == 1, f"round {r}: {asked}"
    finally:
        barrier.abort()  # a failed round leaves the workers waiting: release them
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()


def test_user_input_marks_user_mistakes_and_lets_internal_errors_through() -> None:
    from search.config import UsageError, user_input

    with pytest.raises(UsageError, match="^no such class 'x'$"):
        with user_input():
            raise KeyError("no such class 'x'")
    with pytest.raises(UsageError, match="bad model option"):
        with user_input():
            raise ValueError("bad model option")
    with pytest.raises(RuntimeError):  # not the user's to fix: keeps its traceback
        with user_input():
            raise RuntimeError("internal")
