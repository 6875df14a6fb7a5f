"""Train a recipe as a tracked run: open the run, log each fold, close it with how it ended.

Trials and baselines take this one path, so a run's rules (its tags, its fold curves, the
state and reason it is closed with) are the same for both. The same rules close the runs of
trials that their own process could not close (killed, or its store out of reach).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

from search.names import (
    AT_CHANCE_TAG,
    CV_ACCURACY,
    CV_LOSS,
    CV_LOSS_STD,
    CV_TRAIN_LOSS,
    EPOCHS_TRAINED,
    FAIL_REASON_ATTR,
    FIRST_STEP_SECONDS,
    FIT_SECONDS,
    GAP,
    INTERRUPTED_ATTR,
    LATER_FIRST_STEP_SECONDS,
    N_FOLDS_TRAINED,
    ROLE_TAG,
    RUN_ID_ATTR,
    TRIAL_NUMBER_TAG,
    TRIAL_STATE_TAG,
)
from search.selection import beats_chance
from search.stopping import as_stop
from search.tracking import RunState, StoreLost, Tracker, TrackingLost
from trainers.fit import CVResult, FoldResult, TrainingFailed
from trainers.recipe import Recipe

# the trainer's fold loop: given the ``on_fold`` logger, cross-validate and return the result
Train = Callable[[Callable[[FoldResult], None]], CVResult]


def make_recipe(config: Any, values: Mapping[str, Any]) -> Recipe:
    """Combine a study's fixed training settings (``config``: a `search.config.StudyConfig`)
    with one trial's searched values."""
    fixed = dict(config.spec.training)
    fixed["max_epochs"] = config.max_epochs
    return Recipe.from_dict({**fixed, **values})


def start_run(tracker: Tracker, parent_run_id: str, recipe: Recipe, *, name: str,
              role: str = "trial", trial_number: int = -1,
              tags: Mapping[str, str] | None = None) -> str:
    """Open the child run of a trial (or of a baseline: ``role="baseline"``, number -1)."""
    return tracker.start_run(parent_run_id, name, recipe.to_dict(), {
        ROLE_TAG: role, TRIAL_NUMBER_TAG: str(trial_number), TRIAL_STATE_TAG: "RUNNING",
        **(tags or {})})


def train_recorded(tracker: Tracker, run_id: str, train: Train, *, n_classes: int,
                   lead_seconds: float = 0.0,
                   on_failed: Callable[[RunState, str], None] | None = None,
                   ) -> tuple[CVResult, dict[str, float], bool]:
    """Run ``train`` with each fold's curves logged on ``run_id``, then close the run.

    A finished training logs its summary (`summarize`) and closes COMPLETE, or PRUNED when
    the pruner stopped it; a recipe that did not beat chance level (ln ``n_classes``) in
    every fold is tagged so (`search.selection`). An exception closes the run INTERRUPTED
    (Ctrl-C, SIGTERM) or FAIL, with its reason, after ``on_failed(state, reason)`` (the caller
    records it first, in Optuna), and propagates; a stop propagates as the KeyboardInterrupt it
    is, even where a library turned it into its own error (`search.stopping.as_stop`). A store
    that failed (`search.tracking.StoreLost`: MLflow's, or Optuna's in the trainer's per-epoch
    report) is not the recipe's failure and propagates without ``on_failed``: the caller ends
    the trial in Optuna if it still answers. The run is closed INTERRUPTED at once when MLflow
    is not the store that failed (were the Optuna store never resumed, a damaged file moved
    aside, the run would stay RUNNING), else by the next run that reaches it.

    Returns:
        The cross-validation result, its summary metrics, and whether it stayed at chance.
    """
    folds: list[FoldResult] = []

    def on_fold(fold: FoldResult) -> None:
        folds.append(fold)
        # the score first: MLflow's compare page plots the first metric its runs share
        tracker.log_metrics(run_id, fold_scores(folds), step=fold.fold)
        tracker.log_fold(run_id, fold.fold, fold_curves(fold))

    try:
        result = train(on_fold)
    except StoreLost as exc:
        if not isinstance(exc, TrackingLost):
            with contextlib.suppress(StoreLost):
                tracker.finish_run(run_id, "INTERRUPTED", reason=f"interrupted ({exc})")
        raise
    except BaseException as exc:
        stop = as_stop(exc)
        state: RunState = "INTERRUPTED" if stop is not None else "FAIL"
        reason = failure_reason(stop or exc)
        if on_failed is not None:
            on_failed(state, reason)
        tracker.finish_run(run_id, state, reason=reason)
        if stop is not None and stop is not exc:
            raise stop from exc  # a stop that a library turned into its own error
        raise
    summary = summarize(result, lead_seconds=lead_seconds)
    # cv_val_loss is logged by fold (`fold_scores`); its last value is the summary's
    tracker.log_metrics(run_id, {k: v for k, v in summary.items() if k != CV_LOSS})
    at_chance = not beats_chance(fold_losses(result), n_classes)
    if at_chance:
        tracker.set_tags(run_id, {AT_CHANCE_TAG: "true"})
    tracker.finish_run(run_id, "PRUNED" if result.stopped else "COMPLETE")
    return result, summary, at_chance


def fold_losses(result: CVResult) -> list[float]:
    """Each fold's best validation loss: the terms of the CV loss, paired across recipes."""
    return [f.val_loss for f in result.folds]


def failure_reason(exc: BaseException) -> str:
    """The reason recorded for a training that raised ``exc``.

    ``interrupted (Ctrl-C)`` or ``interrupted (stopped by SIGTERM)`` for a stop
    (`search.stopping.stop_cleanly_on`); the trainer's own words for a recipe that failed
    (NaN loss, stuck at chance); else the exception's type and message.
    """
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted ({str(exc) or 'Ctrl-C'})"
    return str(exc) if isinstance(exc, TrainingFailed) else f"{type(exc).__name__}: {exc}"


def fold_scores(folds: list[FoldResult]) -> dict[str, float]:
    """What the score is made of, logged as each fold ends (``step`` = the fold's number).

    ``fold_<k>/best_val_loss`` is the fold's validation loss at its best epoch, the one early
    stopping restores, and ``fold_<k>/best_epoch`` that epoch (0-based: the step of the
    fold's curves); the last epoch's value, which the curves end with, is not what the score
    uses. ``cv_val_loss`` is the mean best loss of the folds so far, so after the last fold it
    is the trial's objective, the mean of the ``fold_<k>/best_val_loss`` values.
    """
    last = folds[-1]
    return {CV_LOSS: CVResult(tuple(folds)).val_loss,
            f"fold_{last.fold}/best_val_loss": last.val_loss,
            f"fold_{last.fold}/best_epoch": float(last.best_epoch)}


def fold_curves(fold: FoldResult) -> dict[str, list[float]]:
    """One fold's per-epoch curves under the names MLflow records them with."""
    h = fold.history
    return {"train_loss": h["cross_entropy"], "val_loss": h["val_cross_entropy"],
            "val_accuracy": h["val_accuracy"]}


def summarize(result: CVResult, lead_seconds: float = 0.0) -> dict[str, float]:
    """The summary metrics of a cross-validated recipe (trial or baseline).

    ``first_step_seconds`` is the time from the trial's start to its first training step:
    ``lead_seconds`` (what the trial did before its first fold began: sampling, the MLflow run)
    plus the first fold's time to its first step. ``later_folds_first_step_seconds`` is the same
    per-fold overhead for the folds after the first (absent with one fold).
    """
    overhead = {FIRST_STEP_SECONDS: lead_seconds + result.folds[0].first_step_seconds}
    if len(result.folds) > 1:
        overhead[LATER_FIRST_STEP_SECONDS] = result.later_folds_first_step_seconds
    return {
        CV_LOSS: result.val_loss,
        CV_LOSS_STD: result.val_loss_std,
        CV_ACCURACY: result.val_accuracy,
        CV_TRAIN_LOSS: result.train_loss,
        GAP: result.generalization_gap,
        N_FOLDS_TRAINED: float(len(result.folds)),
        EPOCHS_TRAINED: float(sum(f.n_epochs for f in result.folds)),
        FIT_SECONDS: result.fit_seconds,
        **overhead,
    }


def close_trial_run(tracker: Tracker, trial: Any, reason: str | None = None) -> None:
    """Close the run of an Optuna trial that was ended on its process's behalf (a dead or
    killed worker, a stale heartbeat), with the trial's state and ``reason`` (default: the
    trial's ``fail_reason``)."""
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        tracker.finish_run(run_id, _run_state(trial),
                           reason=reason or trial.user_attrs.get(FAIL_REASON_ATTR))


def close_runs_left_running(tracker: Tracker, study: Any) -> list[int]:
    """Close the runs the tracker still has open for trials Optuna has finished; return the
    trials' numbers.

    That happens when the tracking store failed during a trial (`TrackingLost`):
    Optuna recorded the trial's end, the tracker could not. Each run gets the trial's state
    and reason.
    """
    running = set(tracker.running_runs(study.study_name))
    closed = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and trial.user_attrs.get(RUN_ID_ATTR) in running:
            close_trial_run(tracker, trial)
            closed.append(trial.number)
    return sorted(closed)


def _run_state(trial: Any) -> RunState:
    if trial.state.name == "FAIL" and trial.user_attrs.get(INTERRUPTED_ATTR):
        return "INTERRUPTED"
    return trial.state.name
