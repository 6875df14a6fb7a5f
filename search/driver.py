"""Run a study end to end: open it, train trials, then record the outcome on the parent run."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import optuna
from optuna.trial import TrialState
from rich.console import Console

from search.baselines import baseline_recipes, run_baselines
from search.config import StudyConfig, user_input
from search.convergence import stopped_line
from search.datasets import StudyData, load_data
from search.launch import start_workers, supervise
from search.links import budget_spent, fresh_deleted, share_trials_view, study_next_steps
from search.liveness import fail_orphaned_trials, fail_trials_of
from search.mlflow_tracker import MlflowTracker
from search.names import (
    BACKEND_ATTR,
    BEST_EPOCHS_ATTR,
    BEST_TAG_PREFIX,
    BEST_TRIAL_TAG,
    CONVERGED_ATTR,
    CV_ACCURACY,
    CV_LOSS,
    CV_LOSS_STD,
    DATA_ATTR,
    FOLD_LOSSES_ATTR,
    GAP,
    INTERRUPTED_ATTR,
    PARENT_RUN_ATTR,
    PLOTS_SKIPPED_TAG_PREFIX,
    RECIPE_ATTR,
    STORAGE_TAG,
    WORKER_ATTR,
)
from search.plots import save_study_plots
from search.progress import StudyProgress, best_trials_table
from search.recipe_file import recipe_document, write_recipe
from search.recording import close_runs_left_running, close_trial_run
from search.redact import redact_url
from search.report import heldout_report, report_lines, report_table
from search.selection import at_chance, nothing_selected, ranked_trials, selected_trial
from search.stopping import as_stop
from search.stats import design_warnings, search_warnings
from search.stores import EXIT_STORE_LOST
from search.study import STALE_REASON, TPE_DEFAULTS, count_trials, open_study, quiet_optuna
from search.tracking import StorageLost, StoreLost, Tracker
from search.training import Training, prepare_training
from search.worker import Objective, announce, run_trials
from trainers.models import check_model_name


@dataclass(frozen=True)
class StudyOutcome:
    """What one invocation of `run_study` leaves behind."""

    study: optuna.Study
    parent_run_id: str
    counts: dict[str, int]
    interrupted: bool


@dataclass
class _Session:
    """What every process of a study shares: the data, the Optuna study, the MLflow parent."""

    data: StudyData
    study: optuna.Study
    tracker: Tracker
    parent: str
    training: Training  # what every trial trains: models, folds, class weight
    orphans: list[int]  # trials of killed processes, failed and queued again on opening
    unclosed: list[int]  # trials whose MLflow runs were left RUNNING (MLflow was out of reach)
    deleted: list[int] = dataclasses.field(default_factory=list)  # --fresh: trials deleted


def _open_session(config: StudyConfig, *, data_dir: str | None, progress: bool,
                  worker: int = 0) -> _Session:
    quiet_optuna()
    with user_input():  # the data, the stores, the model options: the user's to fix
        # before the stored study is compared with this one: the name is wrong either way
        check_model_name(config.spec.model["name"])
        data = load_data(config.spec.data, where=str(config.spec.path), seed=config.seed,
                         data_dir=data_dir, progress=progress)
        deleted: list[int] = []
        study = open_study(config, create=worker == 0, on_stale=functools.partial(
            _close_stale_run, config.tracking_uri), on_deleted=deleted.append)
        tracker = open_tracker(config.tracking_uri)
    orphans = _fail_stale(study, tracker)
    unclosed = close_runs_left_running(tracker, study)
    with user_input():  # before the parent run: a model that cannot be built leaves none open
        training = prepare_training(config, data)
    parent = _agree_on_parent(study, config, tracker)
    study.set_user_attr(DATA_ATTR, {**data.describe(), "augment_preset": data.augment_preset})
    study.set_user_attr(BACKEND_ATTR, keras.backend.backend())
    return _Session(data, study, tracker, parent, training, orphans, unclosed, deleted)


def open_tracker(tracking_uri: str) -> Tracker:
    """The study's experiment store: the one line a new `search.tracking.Tracker` changes."""
    return MlflowTracker(tracking_uri)


def _close_stale_run(tracking_uri: str, trial: optuna.trial.FrozenTrial) -> None:
    """Close the MLflow run of a trial the heartbeat found stale (`search.study.open_storage`)."""
    close_trial_run(open_tracker(tracking_uri), trial, reason=STALE_REASON)


def _fail_stale(study: optuna.Study, tracker: Tracker) -> list[int]:
    """Fail trials whose worker is gone; return the numbers of those failed by this host.

    Optuna's heartbeat check (before each trial, too) fails trials of workers silent for its
    grace period, on any host; this covers a study resumed after every worker died. A trial
    whose process on this host no longer runs is failed at once, heartbeat or not, and like
    the heartbeat path its MLflow run is closed and its recipe queued once more.
    """
    optuna.storages.fail_stale_trials(study)
    return fail_orphaned_trials(study, on_failed=functools.partial(close_trial_run, tracker))


def _agree_on_parent(study: optuna.Study, config: StudyConfig, tracker: Tracker) -> str:
    """Return the study's MLflow parent run, creating it once even when workers start together.

    Two workers on different hosts may both find no parent and create one. Each records its
    own, waits, and reads back which was recorded last; the loser deletes its run and joins.
    """
    tags = {STORAGE_TAG: redact_url(config.storage), "sampler": config.sampler,
            "pruner": config.pruner, "precision": config.precision}
    known = study.user_attrs.get(PARENT_RUN_ATTR)
    parent = tracker.open_parent(config.name, config.settings(), run_id=known, tags=tags)
    if parent != known:
        study.set_user_attr(PARENT_RUN_ATTR, parent)
        time.sleep(_AGREE_SECONDS)
        winner = study.user_attrs.get(PARENT_RUN_ATTR)
        if winner != parent:
            tracker.discard_parent(parent)
            return tracker.open_parent(config.name, config.settings(), run_id=winner, tags=tags)
        tracker.log_dict(parent, config.spec.space.to_dict(), "space.json")
    return parent


_AGREE_SECONDS = 1.0


def _fold_mode(config: StudyConfig) -> str:
    """How trials train their folds, for the header: nothing for the default."""
    if config.fold_mode != "batched":
        return ""
    if config.recipes_per_step > 1:
        return f" (batched folds, {config.recipes_per_step} trials per step)"
    return " (batched folds)"


def _header(config: StudyConfig, session: _Session, console: Console, n_workers: int) -> None:
    data = session.data
    console.print(
        f"study [bold]{config.name}[/]: {len(data.train)} images, {data.train.n_classes} classes, "
        f"{config.n_folds} folds x {config.max_epochs} epochs{_fold_mode(config)}, "
        f"{n_workers} worker(s); storage "
        f"{redact_url(config.storage)}; MLflow {redact_url(config.tracking_uri)}",
        highlight=False, soft_wrap=True,  # one line in a log too, where the width is 80
    )
    for n_deleted in session.deleted:
        console.print(fresh_deleted(config.name, n_deleted), highlight=False)
    trials = {t.number: t for t in session.study.get_trials(deepcopy=False)}
    # a process that stopped because a store failed left word of it (`record_exit`)
    lost = [n for n in session.orphans if trials[n].user_attrs.get(INTERRUPTED_ATTR)]
    killed = [n for n in session.orphans if n not in lost]
    if killed:
        console.print(f"trial(s) {killed} of a worker process that was killed on this "
                      f"host: marked failed and queued again", highlight=False, soft_wrap=True)
    if lost:
        console.print(f"trial(s) {lost} of a worker process that stopped when a store failed: "
                      f"marked failed (not counted) and queued again", highlight=False,
                      soft_wrap=True)
    if session.unclosed:
        console.print(f"trial(s) {session.unclosed} ended while MLflow was out of reach: their "
                      f"MLflow runs are closed now", highlight=False, soft_wrap=True)


class _Stop:
    """Whether a stop (Ctrl-C, SIGTERM, the launcher gone) ended a step of the run: the step
    it ends is left, and the run goes on to record what the study holds."""

    asked = False

    @contextlib.contextmanager
    def ends_step(self):
        try:
            yield
        except BaseException as exc:
            if as_stop(exc) is None:  # a stop that a library turned into its own error too
                raise
            self.asked = True


def run_study(config: StudyConfig, *, console: Console | None = None, data_dir: str | None = None,
              progress: bool = True, plan: Any = None, worker_argv: list[str] | None = None,
              ) -> StudyOutcome:
    """Run (or resume) the study of ``config`` until its trial budget or timeout is reached.

    Creates the MLflow experiment and parent run before any trial, runs the baselines if asked,
    trains trials (in this process, or in one worker process per slot of ``plan``), then logs
    counts, the best recipe and plots on the parent run, prints the best trials, and writes the
    held-out report when the data has a held-out split. Ctrl-C ends the current trial cleanly
    (FAIL in Optuna, KILLED in MLflow) and still records the outcome; running the same command
    again resumes.

    Args:
        plan: a `search.gpus.WorkerPlan`; with more than one worker, ``worker_argv`` (the
            command line's arguments) starts each worker.

    Raises:
        ValueError, TypeError, FileNotFoundError: bad settings or missing data, before any trial.
    """
    console = console or Console(stderr=True)
    session = _open_session(config, data_dir=data_dir, progress=progress)
    study, tracker, parent = session.study, session.tracker, session.parent
    n_workers = plan.n_workers if plan is not None else 1
    _header(config, session, console, n_workers)
    if spent := budget_spent(config.n_trials, count_trials(study)):
        console.print(spent, highlight=False)
    stop = _Stop()
    baselines: dict[str, dict[str, Any]] = {}
    bars = StudyProgress(config.name, config.n_trials, count_trials(study), _best_value(study),
                         console=console, n_folds=config.n_folds, max_epochs=config.max_epochs,
                         batched=config.fold_mode == "batched",
                         bars=progress)
    try:
        with bars:
            if config.baselines:
                with stop.ends_step():
                    baselines = run_baselines(
                        study, config, baseline_recipes(config, config.baselines),
                        data=session.data.train, folds=session.training.folds,
                        models=session.training.models, tracker=tracker, parent_run_id=parent,
                        console=console, class_weight=session.training.class_weight,
                        progress=bars,
                    )
            if stop.asked:
                pass
            elif n_workers > 1:
                stop.asked = _run_workers(study, tracker, plan, worker_argv or [], bars, console)
            else:
                objective = Objective(config, session.data.train, session.training.folds,
                                      session.training.models, tracker, parent, progress=bars,
                                      class_weight=session.training.class_weight)
                with stop.ends_step():
                    run_trials(study, objective, n_trials=config.n_trials, timeout=config.timeout)
            counts = count_trials(study)
            if config.stop_within_noise and CONVERGED_ATTR in study.user_attrs:
                console.print(stopped_line(study.user_attrs[CONVERGED_ATTR], counts,
                                           config.n_trials), highlight=False, soft_wrap=True)
            print_best(study, config, console)
            if not stop.asked and config.report and session.data.heldout is not None:
                with stop.ends_step():
                    _report(study, config, session.data, session.training, tracker, parent,
                            baselines, console, bars)
        finish_parent(study, config, tracker, parent, interrupted=stop.asked)
    except StorageLost:
        # MLflow still answers: close the study's run now. The next run reopens it; were the
        # Optuna store never resumed (a damaged file moved aside), it would stay RUNNING.
        with contextlib.suppress(StoreLost):
            tracker.finish_parent(parent, "KILLED")
        raise
    share_trials_view(tracker, parent, config)
    console.print("\n".join(study_next_steps(study, config, tracker, parent)), highlight=False,
                  soft_wrap=True)
    if stop.asked:
        console.print("interrupted: what was training is marked failed (a trial's recipe is "
                      "queued again); rerun the same command to resume.", soft_wrap=True)
    return StudyOutcome(study, parent, counts, stop.asked)


def run_worker(config: StudyConfig, *, worker_index: int, data_dir: str | None = None) -> int:
    """Run trials of an already prepared study in this process (one worker of `run_study`).

    Returns:
        The exit code: 0, or 130 when interrupted.
    """
    console = Console(stderr=True, width=140)
    session = _open_session(config, data_dir=data_dir, progress=False, worker=worker_index)
    reporter = StudyProgress(config.name, config.n_trials, count_trials(session.study),
                             _best_value(session.study), console=console,
                             n_folds=config.n_folds, max_epochs=config.max_epochs,
                             batched=config.fold_mode == "batched", bars=False)
    objective = Objective(config, session.data.train, session.training.folds,
                          session.training.models, session.tracker, session.parent,
                          progress=reporter, class_weight=session.training.class_weight)
    try:
        run_trials(session.study, objective, n_trials=config.n_trials, timeout=config.timeout)
    except KeyboardInterrupt:
        return 130
    return 0


def _run_workers(study: optuna.Study, tracker: Tracker, plan: Any, argv: list[str],
                 bars: StudyProgress, console: Console) -> bool:
    """Start the plan's workers, show their progress from the storage, clean up dead ones."""
    log_dir = Path("mlruns") / "logs" / study.study_name
    procs = start_workers(argv, plan, log_dir)
    console.print(f"started {len(procs)} workers; their logs: {log_dir}/worker-<i>.log",
                  highlight=False)
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def tick() -> None:
        running = {}
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in seen:
                seen.add(trial.number)
                announce(bars, trial)
            elif trial.state == TrialState.RUNNING:
                running[trial.number] = (_worker_label(trial), trial.last_step)
        bars.workers(running)

    def died(proc: Any) -> None:
        worker = f"{socket.gethostname()}:{proc.pid}"
        reason = f"worker {worker} exited with code {proc.returncode}"
        if proc.returncode == EXIT_STORE_LOST:
            reason += " (a store failed: its log says which)"
        failed = fail_trials_of(study, worker, reason,
                                on_failed=functools.partial(close_trial_run, tracker))
        requeued = f"its trial(s) {failed} marked failed and queued again; " if failed else ""
        console.print(f"{reason}; {requeued}the other workers go on", highlight=False,
                      soft_wrap=True)

    return supervise(procs, on_tick=tick, on_death=died)


def _worker_label(trial: optuna.trial.FrozenTrial) -> str:
    """``pid 1234`` for a worker on this host, ``host:pid`` for one elsewhere."""
    worker = trial.user_attrs.get(WORKER_ATTR, "")
    host, _, pid = worker.rpartition(":")
    return f"pid {pid}" if host == socket.gethostname() else worker


def _report(study, config, data, training, tracker, parent, baselines,  # noqa: ANN001
            console, progress) -> None:
    """Retrain the selected trial and the baselines; print and log the held-out table."""
    ranked = ranked_trials(study)[:config.report_top]
    if not ranked:
        console.print(f"held-out report: nothing to report; {nothing_selected(study)}",
                      highlight=False, soft_wrap=True)
        return
    best = ranked[0]

    def candidate(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return {RECIPE_ATTR: trial.user_attrs[RECIPE_ATTR], CV_LOSS: trial.value,
                BEST_EPOCHS_ATTR: trial.user_attrs[BEST_EPOCHS_ATTR],
                FOLD_LOSSES_ATTR: trial.user_attrs.get(FOLD_LOSSES_ATTR)}

    # the selected recipe stays the CV best: the held-out split never chooses, it only checks
    candidates = {f"selected (trial {best.number})": candidate(best)}
    candidates.update({f"trial {t.number}": candidate(t) for t in ranked[1:]})
    candidates.update({f"baseline {name}": outcome for name, outcome in baselines.items()
                       if CV_LOSS in outcome})
    recipe = best.user_attrs[RECIPE_ATTR]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    random = ({**TPE_DEFAULTS, **config.tpe_options}["n_startup_trials"]
              if config.sampler == "tpe" else 0)
    warnings = design_warnings(best.user_attrs[BEST_EPOCHS_ATTR], recipe["patience"],
                               config.max_epochs, recipe, config.spec.space.to_dict())
    warnings += search_warnings(len(complete), sum(
        at_chance(t, data.train.n_classes) for t in complete), random)
    report = heldout_report(study, candidates, train=data.train, heldout=data.heldout,
                            models=training.models, seed=config.seed, tracker=tracker,
                            parent_run_id=parent, console=console,
                            class_weight=training.class_weight, progress=progress,
                            warnings=warnings)
    console.print(report_table(report["rows"], f"held-out report of {config.name} "
                                               f"({len(data.heldout)} held-out images)"))
    for line in report_lines(report):
        console.print(line, highlight=False, soft_wrap=True)


def _best_value(study: optuna.Study) -> float | None:
    best = selected_trial(study)
    return None if best is None else best.value


def best_rows(study: optuna.Study, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` selectable trials (`search.selection`) with the lowest CV loss, as rows."""
    return [
        {"number": t.number, "value": t.value, "std": t.user_attrs.get(CV_LOSS_STD, math.nan),
         "accuracy": t.user_attrs.get(CV_ACCURACY, math.nan),
         "gap": t.user_attrs.get(GAP, math.nan),
         "params": t.user_attrs.get(RECIPE_ATTR, {})}
        for t in ranked_trials(study)[:k]
    ]


def print_best(study: optuna.Study, config: StudyConfig, console: Console) -> None:
    rows = best_rows(study)
    if not rows:
        console.print(nothing_selected(study), highlight=False, soft_wrap=True)
        return
    console.print(best_trials_table(rows, list(config.spec.space.names),
                                    title=f"best trials of {config.name}"))


def finish_parent(study: optuna.Study, config: StudyConfig, tracker: Tracker, parent: str, *,
                  interrupted: bool) -> None:
    """Log counts, the best recipe (tags and file) and Optuna's plots on the parent run."""
    counts = count_trials(study)
    tracker.log_metrics(parent, {f"n_{k}": v for k, v in counts.items() if k != "budget"},
                        step=len(study.trials))
    with tempfile.TemporaryDirectory() as tmp:
        rows = best_rows(study, k=1)
        best = selected_trial(study)
        if best is not None:
            tracker.log_metrics(parent, {"best_cv_val_loss": best.value}, step=len(study.trials))
            tags = {f"{BEST_TAG_PREFIX}{k}": str(v) for k, v in rows[0]["params"].items()}
            tags[BEST_TRIAL_TAG] = str(best.number)
            tracker.set_tags(parent, tags)
            document = recipe_document(study, best, storage=redact_url(config.storage))
            tracker.log_artifacts(parent, [write_recipe(document, Path(tmp) / "best_recipe.yaml")])
        plots, skipped = save_study_plots(study, Path(tmp) / "plots")
        tracker.log_artifacts(parent, plots, "plots")
        if skipped:
            tracker.set_tags(parent, {f"{PLOTS_SKIPPED_TAG_PREFIX}{k}": v[:500] for k, v in skipped.items()})
    tracker.finish_parent(parent, status="KILLED" if interrupted else "FINISHED")
