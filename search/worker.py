"""Run trials of one study in this process: the objective and the trial loop."""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

from search.config import StudyConfig
from search.convergence import convergence
from search.liveness import fail_orphaned_trials, this_process
from search.names import (
    AT_CHANCE_ATTR,
    BACKEND_ATTR,
    BACKEND_TAG,
    BEST_EPOCHS_ATTR,
    CONVERGED_ATTR,
    FAIL_REASON_ATTR,
    FOLD_LOSSES_ATTR,
    INTERRUPTED_ATTR,
    RECIPE_ATTR,
    RETRY_OF_ATTR,
    RUN_ID_ATTR,
    WORKER_ATTR,
    WORKER_TAG,
)
from search.progress import StudyProgress
from search.recording import (
    close_trial_run,
    failure_reason,
    fold_losses,
    make_recipe,
    start_run,
    train_recorded,
)
from search.stopping import as_stop, check_stop, trainer_hooks
from search.study import count_trials
from search.tracking import RunState, StorageLost, StoreLost, Tracker
from spaces import sample_params
from trainers.batched import cross_validate_recipes, fold_trainer
from trainers.data import Dataset
from trainers.fit import ClassWeight, CVResult, EpochMetrics, FoldResult
from trainers.kfold import Fold
from trainers.recipe import Recipe


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
    # set when a store failed during a trial: `run_trials` raises it once Optuna is done with
    # the trial (Optuna's `catch` would otherwise swallow it and go on)
    lost: StoreLost | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        return self._guarded(trial, lambda: self._run(trial))

    def _guarded(self, trial: optuna.Trial, work: Callable[[], Any]) -> Any:
        """``work()`` for ``trial``, ending the trial as its failure requires: a store's
        failure or a stop is not the recipe's (the trial is interrupted, its recipe queued
        again), anything else is (it propagates, and Optuna marks the trial FAIL)."""
        try:
            return work()
        except StoreLost as exc:
            # not the recipe's fault: end the trial like an interrupted one, in Optuna if it
            # still answers, so it does not use up the budget. Where it does not (its storage
            # failed, or shares MLflow's full disk) the trial stays RUNNING and the next run
            # fails and queues it (`search.liveness.fail_orphaned_trials`, told why by
            # `record_exit`); its MLflow run is closed by the next run that reaches the store
            # (`search.recording.close_runs_left_running`)
            self.lost = exc
            if not isinstance(exc, StorageLost):
                with contextlib.suppress(StorageLost):
                    self._interrupted(trial, f"interrupted ({exc})")
            raise
        except KeyboardInterrupt as exc:
            self._interrupted(trial, failure_reason(exc))
            raise
        except Exception as exc:
            if (stop := as_stop(exc)) is None:
                raise  # the recipe's failure: Optuna records it FAIL and the study goes on
            self._interrupted(trial, failure_reason(stop))
            raise stop from exc

    @staticmethod
    def _interrupted(trial: optuna.Trial, reason: str) -> None:
        """Mark a trial stopped for a reason not its recipe's, and queue its recipe again.

        It does not count against the budget (`search.study.count_trials`), and the queued
        copy (first in line: Optuna runs queued trials before sampling) trains it later, in
        this run or the next: the study's first, default recipe included.
        """
        trial.set_user_attr(INTERRUPTED_ATTR, True)
        trial.set_user_attr(FAIL_REASON_ATTR, reason)
        trial.study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})

    def _run(self, trial: optuna.Trial) -> float:
        started = self._begin(trial)
        return self._finish(trial, started, lambda on_fold: fold_trainer(self.config.fold_mode)(
            self.data, self.folds, started.recipe, self.models, seed=self.config.seed,
            on_epoch=started.on_epoch, on_fold=on_fold, class_weight=self.class_weight,
            on_batch=started.on_batch, fail_at_chance=False))

    def run_together(self, trials: list[optuna.Trial]) -> list[float | BaseException]:
        """Train the recipes of ``trials`` in one compiled step (`cross_validate_recipes`)
        and record each as `__call__` does; return each trial's value, or what ended it (what
        `__call__` would have raised: `optuna.TrialPruned`, the recipe's failure, a stop, a
        lost store).

        A failure that is not one recipe's (a stop, a lost store, while the trials start or
        train) ends every trial of the step that way.
        """
        started: list[Started] = []
        error = None
        for trial in trials:
            try:  # each trial's end, whatever it is, is recorded once, below
                started.append(self._begin(trial, shown=not started, labelled=False))
            except BaseException as exc:  # noqa: BLE001 - handed to each trial below
                error = exc
                break
        if error is not None:
            outcomes: list[Any] = [error] * len(trials)
        else:
            if self.progress:
                self.progress.trials_started([t.number for t in trials])
            try:
                outcomes = cross_validate_recipes(
                    self.data, self.folds, [s.recipe for s in started], self.models,
                    seed=self.config.seed, on_epoch=[s.on_epoch for s in started],
                    on_batch=started[0].on_batch, class_weight=self.class_weight,
                    fail_at_chance=False)
            except BaseException as exc:  # noqa: BLE001 - every trial's end, below
                outcomes = [exc] * len(trials)
        ended: list[float | BaseException] = []
        for i, (trial, outcome) in enumerate(zip(trials, outcomes)):
            def replay(on_fold, outcome=outcome):  # the folds as the trainer ended them
                if isinstance(outcome, BaseException):
                    raise outcome
                for fold in outcome.folds:
                    on_fold(fold)
                return outcome

            def end(trial=trial, i=i, replay=replay) -> float:
                if i >= len(started):  # not started: the failure that stopped the others
                    return replay(None)
                return self._finish(trial, started[i], replay)

            try:
                ended.append(self._guarded(trial, end))
            except BaseException as exc:  # noqa: BLE001 - returned, told to Optuna
                ended.append(exc)
        return ended

    def _begin(self, trial: optuna.Trial, *, shown: bool = True,
               labelled: bool = True) -> "Started":
        """Sample the trial's recipe, start its MLflow run, record where it runs; its hooks
        feed the progress display when ``shown``, under the trial's name when ``labelled``."""
        entered = time.perf_counter()
        recipe = make_recipe(self.config, sample_params(self.config.spec.space, trial))
        process = this_process()  # worker (host:pid) and PID namespace
        # hosts joining one study may train on different backends: each trial says which
        backend = keras.backend.backend()
        run_id = start_run(self.tracker, self.parent_run_id, recipe, name=f"trial-{trial.number}",
                           trial_number=trial.number,
                           tags={WORKER_TAG: process[WORKER_ATTR], BACKEND_TAG: backend})
        trial.set_user_attr(RECIPE_ATTR, recipe.to_dict())
        trial.set_user_attr(BACKEND_ATTR, backend)
        for key, value in process.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        if self.progress and shown and labelled:
            self.progress.trial_started(trial.number)

        hooks = trainer_hooks(self.progress if shown else None)
        to_pruner = pruner_reports(self.config)

        def on_epoch(m: EpochMetrics) -> bool:
            hooks["on_epoch"](m)
            reports = to_pruner(m)
            for step, value in reports:
                trial.report(value, step)
            return bool(reports) and not to_pruner.finished and trial.should_prune()

        def on_failed(state: RunState, reason: str) -> None:
            if state == "FAIL":  # an interruption is recorded by `__call__`, whatever it cut
                trial.set_user_attr(FAIL_REASON_ATTR, reason)

        # sampling, MLflow run, storage writes
        return Started(recipe, run_id, on_epoch, hooks["on_batch"], on_failed,
                       lead=time.perf_counter() - entered)

    def _finish(self, trial: optuna.Trial, started: "Started",
                train: Callable[[Callable[[FoldResult], None]], CVResult]) -> float:
        """Run ``train(on_fold)``, record its result on the trial's MLflow run and in Optuna,
        and return the trial's CV loss (raise `optuna.TrialPruned` if the pruner stopped it)."""
        result, summary, at_chance = train_recorded(
            # a recipe stuck at chance level completes with its (bad) CV loss: see
            # `search.selection` for why that, not a failure, and why it is never selected
            self.tracker, started.run_id, train, n_classes=self.data.n_classes,
            lead_seconds=started.lead, on_failed=started.on_failed)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(BEST_EPOCHS_ATTR, [f.best_epoch for f in result.folds])
        trial.set_user_attr(FOLD_LOSSES_ATTR, fold_losses(result))
        trial.set_user_attr(AT_CHANCE_ATTR, at_chance)
        if result.stopped:
            raise optuna.TrialPruned(
                f"pruned after {max(f.n_epochs for f in result.folds)} epoch(s) of every fold"
                if self.config.fold_mode == "batched" else
                f"pruned after {len(result.folds)} fold(s)")
        return result.val_loss


@dataclass
class Started:
    """A trial whose recipe is sampled and whose MLflow run is open: what its training needs."""

    recipe: Recipe
    run_id: str
    on_epoch: Callable[[EpochMetrics], bool]
    on_batch: Callable[[int, int, float], None]
    on_failed: Callable[[RunState, str], None]
    lead: float  # seconds from the trial's start to its training


def pruner_reports(config: StudyConfig) -> "FoldEnds | AcrossFolds":
    """What a trial of ``config`` reports to the pruner, as (step, value) pairs, for each
    epoch its trainer reports: `FoldEnds`, or with batched folds and
    ``batched_pruning="epoch"``, `AcrossFolds`."""
    if config.fold_mode == "batched" and config.batched_pruning == "epoch":
        return AcrossFolds(config.n_folds, config.max_epochs)
    return FoldEnds(config.max_epochs, config.n_folds, batched=config.fold_mode == "batched")


class FoldEnds:
    """`RunningCV` over the folds in their order; batched folds report epoch by epoch across
    folds, so the pruner sees what sequential folds report, in their order (`InFoldOrder`).
    Once the last fold's end is reported the trial is ``finished``: it has nothing left to
    train, so the pruner is not asked (it would mark a fully trained trial pruned; with
    batched folds, whose folds all end at the last epoch, that was every decision it made)."""

    def __init__(self, max_epochs: int, n_folds: int, *, batched: bool) -> None:
        self.max_epochs, self.n_folds = max_epochs, n_folds
        self.estimate = RunningCV(max_epochs)
        self.in_order = InFoldOrder(max_epochs) if batched else None
        self.finished = False

    def __call__(self, m: EpochMetrics) -> list[tuple[int, float]]:
        reports = self.in_order(m) if self.in_order is not None else [m]
        self.finished = self.finished or any(
            r.fold == self.n_folds - 1 and r.epoch == self.max_epochs - 1 for r in reports)
        return [(r.step, self.estimate.update(r.fold, r.epoch, r.best_val_loss))
                for r in reports]


class AcrossFolds:
    """The pruner's view of batched folds, epoch by epoch: every fold's best loss so far,
    averaged, once every fold still training has reported the epoch (a copy that early
    stopping froze counts with its best). Reported at the epoch's step in the first fold's
    range (``step = epoch``), where sequential folds report the first fold alone, an estimate
    of the same quantity from one fold; once every fold has ended, the final mean is reported
    at each later fold's last step, as sequential folds report there. Then the trial is
    ``finished``: nothing is left for the pruner to save, and it is not asked.
    """

    def __init__(self, n_folds: int, max_epochs: int) -> None:
        self.n_folds, self.max_epochs = n_folds, max_epochs
        self.best: dict[int, float] = {}
        self.ended: set[int] = set()
        self.seen: dict[int, set[int]] = {}
        self.finished = False

    def __call__(self, m: EpochMetrics) -> list[tuple[int, float]]:
        self.best[m.fold] = m.best_val_loss
        out = []
        if m.filled or m.epoch == self.max_epochs - 1:
            self.ended.add(m.fold)
        if not m.filled:
            seen = self.seen.setdefault(m.epoch, set())
            seen.add(m.fold)
            if len(seen | self.ended) == self.n_folds:
                out.append((m.epoch, self._mean()))
        if len(self.ended) == self.n_folds and not self.finished:
            self.finished = True
            last = self.max_epochs - 1
            out += [(fold * self.max_epochs + last, self._mean())
                    for fold in range(1, self.n_folds)]
        return out

    def _mean(self) -> float:
        return sum(self.best.values()) / len(self.best)


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


class InFoldOrder:
    """Turn the reports of batched folds into those sequential folds make, in their order.

    Batched folds (`trainers.batched`) report epoch 0 of every fold, then epoch 1 of every fold,
    and so on. This passes on fold 0's epochs as they come and each later fold's end (its
    report at the fold's last step, early-stopped or not) once every fold before it has
    ended, so `RunningCV` and the pruner see the same steps and values as with sequential folds
    (later folds' first epochs, which `RunningCV` ignores anyway, are left out). Folds are
    numbered 0, 1, ... as the study's are.
    """

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.ended: dict[int, EpochMetrics] = {}
        self.next = 0  # the first fold not yet passed on as ended

    def __call__(self, m: EpochMetrics) -> list[EpochMetrics]:
        out = [m] if m.fold == 0 and self.next == 0 else []
        if m.epoch == self.max_epochs - 1:
            self.ended[m.fold] = m
        while self.next in self.ended:
            if self.next > 0:
                out.append(self.ended[self.next])
            self.next += 1
        return out


def run_trials(study: optuna.Study, objective: Objective, *, n_trials: int,
               timeout: float | None = None, poll_seconds: float = 2.0) -> None:
    """Run trials until the study holds ``n_trials`` (all invocations together), time is up,
    or, with ``config.stop_within_noise``, the search is within noise (`converged`).

    The budget counts the trials other workers are running. One of those may still end
    without costing budget (its worker killed, or its store lost) and its recipe be queued
    again; a worker that had left would leave that retry WAITING until the next run. So a
    worker whose budget is reached stays, checking every ``poll_seconds``, while other trials
    run that it can see end (`_others_may_requeue`), and trains what is queued again.

    Each trial goes through ``study.optimize(n_trials=1)`` so Optuna keeps its heartbeat and
    stale-trial handling; with ``config.recipes_per_step`` > 1, that many trials at a time go
    through `run_step` (fewer when less budget is left). A failed trial does not stop the loop; Ctrl-C ends the current trial
    (marked FAIL, ``interrupted``; it does not use up the budget) and propagates, and so does
    `search.tracking.StoreLost` (a store failed), after ending the trial the same way where the
    Optuna storage still answers.
    """
    started = time.monotonic()
    callbacks = []
    if objective.progress is not None:
        progress = objective.progress
        callbacks.append(lambda _study, trial: announce(progress, trial))
    while True:
        check_stop()
        if timeout is not None and time.monotonic() - started >= timeout:
            break
        if count_trials(study)["budget"] >= n_trials:
            watching = _others_may_requeue(study, objective.tracker)
            if count_trials(study)["budget"] >= n_trials:  # nothing was queued again
                if not watching:
                    break
                time.sleep(poll_seconds)
            continue
        if objective.config.stop_within_noise and converged(study, objective.config):
            break
        together = min(objective.config.recipes_per_step,
                       n_trials - count_trials(study)["budget"])
        try:
            if together > 1:
                run_step(study, objective, together, budget=n_trials)
            else:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks,
                               gc_after_trial=True)
        except Exception:
            # Optuna could not record the trial's end either: its own error comes out of
            # ``optimize`` (an AssertionError), the store's failure is what it means
            if objective.lost is None:
                raise
        if objective.lost is not None:
            raise objective.lost


def run_step(study: optuna.Study, objective: Objective, n: int, *,
             budget: int | None = None) -> None:
    """Ask up to ``n`` trials, train their recipes in one compiled step (`Objective.run_together`)
    and tell Optuna how each ended, as ``study.optimize`` does for one trial: stale trials
    failed first where the storage has heartbeats, a heartbeat kept for each trial while it
    trains, a failed recipe marked FAIL and the study going on, a stop propagated once every
    trial is told. Queued recipes are asked first (Optuna's ``ask``), and the sampler sees
    the others of the step as running (TPE's constant liar: `search.study.TPE_DEFAULTS`). With
    ``budget``, each trial after the first is asked only while the study's trials (those other
    workers run included) stay under it, so workers sharing a study overrun it no more than
    with one trial at a time.
    """
    if is_heartbeat_enabled(study._storage):
        optuna.storages.fail_stale_trials(study)
    with warnings.catch_warnings():
        # Optuna warns that heartbeats need `Study.optimize`: this keeps them itself, below
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trials = [study.ask()]
        while len(trials) < n and (budget is None or count_trials(study)["budget"] < budget):
            trials.append(study.ask())
    with contextlib.ExitStack() as beating:
        for trial in trials:
            beating.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
        ended = objective.run_together(trials)
    stop = None
    for trial, outcome in zip(trials, ended):
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            stop = stop or outcome  # a stop (Ctrl-C, SIGTERM): told FAIL, then raised
        state = (TrialState.PRUNED if isinstance(outcome, optuna.TrialPruned) else
                 TrialState.FAIL if isinstance(outcome, BaseException) else TrialState.COMPLETE)
        try:
            frozen = study.tell(trial, None if state != TrialState.COMPLETE else outcome,
                                state=state)
        except Exception:
            # the storage could not record it: its failure is what `run_trials` raises
            if objective.lost is None:
                raise
            continue
        if objective.progress is not None:
            announce(objective.progress, frozen)
    gc.collect()
    if stop is not None:
        raise stop


def converged(study: optuna.Study, config: StudyConfig) -> bool:
    """Whether the search is within noise (`search.convergence`); recorded on the study once it is."""
    if CONVERGED_ATTR in study.user_attrs:
        return True
    state = convergence(study, config.spec.space, seed=config.seed)
    if state is None or not state.within_noise:
        return False
    study.set_user_attr(CONVERGED_ATTR, {"n_trials": state.n_trials,
                                         "regret_bound": state.regret_bound,
                                         "cv_error": state.cv_error})
    return True


def _others_may_requeue(study: optuna.Study, tracker: Tracker) -> bool:
    """Whether a trial another worker runs may yet be failed and its recipe queued again.

    First fails (and queues) what can be failed now: trials of processes of this host that
    ended (`search.liveness.fail_orphaned_trials`) and, on a storage with heartbeats, trials
    gone silent. What still runs counts when its end will be seen: every trial on a storage
    with heartbeats, else only those of this host (a journal file has no heartbeat, and a
    process on another host that died would be waited for for ever).
    """
    fail_orphaned_trials(study, on_failed=functools.partial(close_trial_run, tracker))
    heartbeat = is_heartbeat_enabled(study._storage)
    if heartbeat:
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    return any(heartbeat or str(t.user_attrs.get(WORKER_ATTR, "")).rpartition(":")[0] == host
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def announce(progress: StudyProgress, trial: optuna.trial.FrozenTrial) -> None:
    state = trial.state.name
    value = trial.value if state == "COMPLETE" else None
    detail = ""
    if state == "FAIL":
        detail = f" ({trial.user_attrs.get(FAIL_REASON_ATTR, 'no reason recorded')})"
    elif state == "PRUNED" and trial.last_step is not None:
        detail = " " + where_stopped(trial.last_step, progress.n_folds, progress.max_epochs,
                                     batched=progress.batched)
    if value is not None and trial.user_attrs.get(AT_CHANCE_ATTR):
        # complete, but never the answer (`search.selection`): not the study's best either
        detail = (f" with cv val_loss {value:.4g}, no better than chance level "
                  f"(never selected)")
        value = None
    if value is not None and not math.isfinite(value):
        value = None
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    progress.trial_finished(trial.number, state, value, detail, seconds=seconds,
                            interrupted=bool(trial.user_attrs.get(INTERRUPTED_ATTR)))


def where_stopped(step: int, n_folds: int, max_epochs: int, *, batched: bool = False) -> str:
    """``in fold 2/3 at epoch 30/30`` for the step a trial last reported; with batched
    folds, which train together, ``at epoch 12/30 of every fold``.

    Trials report ``step = fold * max_epochs + epoch`` (`search.study.make_pruner`): an
    internal count that a user should not have to decode.
    """
    fold, epoch = divmod(step, max_epochs)
    if batched:
        return f"at epoch {epoch + 1}/{max_epochs} of every fold"
    return f"in fold {fold + 1}/{n_folds} at epoch {epoch + 1}/{max_epochs}"
