"""Run trials of one study in this process: the objective and the trial loop."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import keras
import optuna

from search.config import StudyConfig
from search.launch import WORKER_ATTR, check_stop, this_process
from search.progress import StudyProgress, trainer_hooks
from search.recipe_file import BACKEND_ATTR, RECIPE_ATTR
from search.study import INTERRUPTED_ATTR, count_trials
from search.tracking import Tracker, TrackingLost
from spaces import sample_params
from trainers.data import Dataset
from trainers.fit import (
    ClassWeight,
    CVResult,
    EpochMetrics,
    FoldResult,
    TrainingFailed,
    cross_validate,
)
from trainers.kfold import Fold
from trainers.recipe import Recipe


def make_recipe(config: StudyConfig, values: dict[str, Any]) -> Recipe:
    """Combine a study's fixed training settings with one trial's searched values."""
    fixed = dict(config.spec.training)
    fixed["max_epochs"] = config.max_epochs
    return Recipe.from_dict({**fixed, **values})


@dataclass
class Objective:
    """Optuna objective: one k-fold cross-validated training run per trial, tracked in MLflow.

    Returns the mean over folds of the best-epoch validation cross-entropy. Raises
    `optuna.TrialPruned` when the pruner stops the trial; a trial that fails (exception,
    NaN loss, stuck at chance level) has its reason recorded in Optuna (user attr
    ``fail_reason``) and in MLflow (tag ``fail_reason``, status FAILED) before the error
    propagates to Optuna, which marks it FAIL.
    """

    config: StudyConfig
    data: Dataset
    folds: list[Fold]
    models: Any  # trainers.reuse.Models, or a plain build(recipe) callable
    tracker: Tracker
    parent_run_id: str
    progress: StudyProgress | None = None
    class_weight: ClassWeight = None
    # set when MLflow stopped answering during a trial: `run_trials` raises it after Optuna
    # has recorded the trial (Optuna's `catch` would otherwise swallow it and go on)
    lost: TrackingLost | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except TrackingLost as exc:
            # nothing more can be written to MLflow: end the trial like an interrupted one,
            # in Optuna only, so it does not use up the budget; its MLflow run is closed by the
            # next run that reaches the store (`Tracker.close_runs_of_finished_trials`)
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            trial.set_user_attr("fail_reason", f"interrupted ({exc})")
            self.lost = exc
            raise

    def _run(self, trial: optuna.Trial) -> float:
        entered = time.perf_counter()
        recipe = make_recipe(self.config, sample_params(self.config.spec.space, trial))
        process = this_process()  # worker (host:pid) and PID namespace
        # hosts joining one study may train on different backends: each trial says which
        backend = keras.backend.backend()
        run_id = self.tracker.start_trial(self.parent_run_id, trial.number, recipe.to_dict(),
                                          tags={"worker": process[WORKER_ATTR],
                                                "keras_backend": backend})
        trial.set_user_attr(RECIPE_ATTR, recipe.to_dict())
        trial.set_user_attr(BACKEND_ATTR, backend)
        for key, value in process.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("mlflow_run_id", run_id)
        if self.progress:
            self.progress.trial_started(trial.number)

        estimate = RunningCV(self.config.max_epochs)
        hooks = trainer_hooks(self.progress)

        def on_epoch(m: EpochMetrics) -> bool:
            hooks["on_epoch"](m)
            trial.report(estimate.update(m.fold, m.epoch, m.best_val_loss), m.step)
            return trial.should_prune()

        def on_fold(fold: FoldResult) -> None:
            self.tracker.log_fold(run_id, fold.fold, fold_curves(fold))

        lead = time.perf_counter() - entered  # sampling, MLflow run, storage writes
        try:
            result = cross_validate(
                self.data, self.folds, recipe, self.models, seed=self.config.seed,
                on_epoch=on_epoch, on_fold=on_fold, class_weight=self.class_weight,
                on_batch=hooks["on_batch"],
            )
        except KeyboardInterrupt as exc:
            reason = interrupted_reason(exc)
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            trial.set_user_attr("fail_reason", reason)
            self.tracker.finish_trial(run_id, "INTERRUPTED", reason=reason)
            raise
        except TrackingLost:
            raise
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, TrainingFailed) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            self.tracker.finish_trial(run_id, "FAIL", reason=reason)
            raise
        summary = summarize(result, lead_seconds=lead)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("best_epochs", [f.best_epoch for f in result.folds])
        self.tracker.log_metrics(run_id, summary)
        if result.stopped:
            self.tracker.finish_trial(run_id, "PRUNED")
            raise optuna.TrialPruned(f"pruned after {len(result.folds)} fold(s)")
        self.tracker.finish_trial(run_id, "COMPLETE")
        return result.val_loss


def interrupted_reason(exc: KeyboardInterrupt) -> str:
    """``interrupted (Ctrl-C)``, or ``interrupted (stopped by SIGTERM)`` (`stop_cleanly_on`)."""
    return f"interrupted ({str(exc) or 'Ctrl-C'})"


class RunningCV:
    """The value a trial reports to the pruner: its cross-validation estimate so far.

    In the first fold that is the fold's best validation loss so far. From the second fold on
    it is the mean best loss of the folds already finished, updated when a fold ends (the
    trainer always reports a fold's last step, early-stopped or not). A fold's first epochs
    never enter it: they measure how fast a recipe learns, and regularization slows early
    learning, so a pruner judging them would remove the recipes a search is looking for.
    """

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.finished: dict[int, float] = {}

    def update(self, fold: int, epoch: int, best_val_loss: float) -> float:
        if epoch == self.max_epochs - 1:
            self.finished[fold] = best_val_loss
        if not self.finished:
            return best_val_loss
        return sum(self.finished.values()) / len(self.finished)


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
    overhead = {"first_step_seconds": lead_seconds + result.folds[0].first_step_seconds}
    if len(result.folds) > 1:
        overhead["later_folds_first_step_seconds"] = result.later_folds_first_step_seconds
    return {
        "cv_val_loss": result.val_loss,
        "cv_val_loss_std": result.val_loss_std,
        "cv_val_accuracy": result.val_accuracy,
        "cv_train_loss": result.train_loss,
        "generalization_gap": result.generalization_gap,
        "n_folds_trained": float(len(result.folds)),
        "epochs_trained": float(sum(f.n_epochs for f in result.folds)),
        "fit_seconds": result.fit_seconds,
        **overhead,
    }


def run_trials(study: optuna.Study, objective: Objective, *, n_trials: int,
               timeout: float | None = None) -> None:
    """Run trials until the study holds ``n_trials`` (all invocations together) or time is up.

    Each trial goes through ``study.optimize(n_trials=1)`` so Optuna keeps its heartbeat and
    stale-trial handling. A failed trial does not stop the loop; Ctrl-C ends the current trial
    (marked FAIL, ``interrupted``; it does not use up the budget) and propagates, and so does
    `TrackingLost` (MLflow stopped answering), after ending the trial the same way.
    """
    started = time.monotonic()
    callbacks = []
    if objective.progress is not None:
        progress = objective.progress
        callbacks.append(lambda _study, trial: announce(progress, trial))
    while count_trials(study)["budget"] < n_trials:
        check_stop()
        if timeout is not None and time.monotonic() - started >= timeout:
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks,
                       gc_after_trial=True)
        if objective.lost is not None:
            raise objective.lost


def announce(progress: StudyProgress, trial: optuna.trial.FrozenTrial) -> None:
    state = trial.state.name
    value = trial.value if state == "COMPLETE" else None
    detail = ""
    if state == "FAIL":
        detail = f" ({trial.user_attrs.get('fail_reason', 'no reason recorded')})"
    elif state == "PRUNED" and trial.last_step is not None:
        detail = f" at step {trial.last_step}"
    if value is not None and not math.isfinite(value):
        value = None
    progress.trial_finished(trial.number, state, value, detail)
