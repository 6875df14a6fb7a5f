"""Open the Optuna study of a config: storage, seeded sampler, fold-aware pruner, resume checks."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event

from search.config import StudyConfig
from search.names import (
    CV_LOSS,
    ENQUEUED_ATTR,
    INTERRUPTED_ATTR,
    RETRY_OF_ATTR,
    RUN_ID_ATTR,
    SETTINGS_ATTR,
)
from search.redact import redact_url
from search.stores import (
    SQLITE_WAIT_SECONDS,
    StorageLost,
    check_stores,
    lost_cause,
    raise_store_lost,
    retry_schema_race,
    schema_lock,
    store_error,
)
from spaces import default_params

STALE_REASON = "worker stopped sending heartbeats"
# what the objective is called in Optuna (its plots, optuna-dashboard) and in MLflow
OBJECTIVE_NAME = CV_LOSS


class StaleTrialCallback:
    """What happens to a trial whose worker stopped sending heartbeats.

    Whichever worker notices first (Optuna checks before every trial) marks it FAIL, calls
    ``on_stale`` with it (the driver closes its MLflow run as FAILED with the reason; without
    that the dead worker's run would stay RUNNING in the UI forever), and queues the same
    parameters once more (Optuna's `RetryHeartbeatStaleTrialCallback`, one retry).
    """

    def __init__(self, on_stale: Callable[[FrozenTrial], None] | None = None,
                 max_retry: int = 1) -> None:
        self.on_stale = on_stale
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.on_stale is not None and trial.user_attrs.get(RUN_ID_ATTR):
            try:
                self.on_stale(trial)
            except Exception as exc:  # noqa: BLE001 (the retry must still be queued)
                warnings.warn(f"could not close the MLflow run {trial.user_attrs[RUN_ID_ATTR]} "
                              f"of stale trial {trial.number}: {exc}", stacklevel=1)
        self.retry(study, trial)


def open_storage(url: str, on_stale: Callable[[FrozenTrial], None] | None = None,
                 tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """Return the Optuna storage for a URL (``sqlite:///``, ``postgresql://``...) or a journal path.

    A plain path (``*.journal`` / ``*.log``) becomes a `JournalStorage` on a file. SQLite and
    other databases get heartbeats, so a trial whose worker died is marked failed, retried
    once, and handed to ``on_stale`` (`StaleTrialCallback`). Once open, a failure of the
    store's own (out of reach, disk full, read-only, damaged) raises `StorageLost`, wherever
    Optuna meets it.

    Raises:
        ValueError: one line, for a URL that cannot be opened, or a local file that cannot be
            this store or ``tracking_uri``'s (`check_stores`, before either is written to).
    """
    check_stores(url, tracking_uri)
    store = f"the Optuna storage {redact_url(url)}"
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(_journal_file(url, store))
    sqlite = url.startswith("sqlite:///")  # its folder is made by `schema_lock`
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            with schema_lock(url):
                storage = retry_schema_race(lambda: optuna.storages.RDBStorage(
                    url,
                    # SQLite: wait for the write lock rather than fail while other workers hold
                    # it; held longer, the store was locked (`search.stores.lost_cause`)
                    engine_kwargs=({"connect_args": {"timeout": SQLITE_WAIT_SECONDS}} if sqlite
                                   else None),
                    heartbeat_interval=60,
                    grace_period=180,
                    heartbeat_stale_trial_callback=StaleTrialCallback(on_stale),
                ))
        except Exception as exc:  # noqa: BLE001 (a bad URL becomes one line; the rest re-raised)
            raise (store_error("--storage", url, exc) or exc) from exc
    if sqlite and ":memory:" not in url:  # one process only; closing it would empty it
        serialize_sqlite_transactions(storage.engine)
    raise_store_lost(storage.engine, store, url)
    return storage


def _journal_file(path: str, store: str):
    """Optuna's journal file backend, raising `StorageLost` when the file system fails it."""
    def lost(exc: OSError) -> StorageLost | None:
        words = lost_cause(exc, path, files=True)
        return None if words is None else StorageLost(store, words)

    class LosableJournalFile(JournalFileBackend):
        def read_logs(self, log_number_from: int):
            try:
                yield from super().read_logs(log_number_from)
            except OSError as exc:
                raise (lost(exc) or exc) from exc

        def append_logs(self, logs: list) -> None:
            try:
                super().append_logs(logs)
            except OSError as exc:
                raise (lost(exc) or exc) from exc

    return LosableJournalFile(path)


def serialize_sqlite_transactions(engine) -> None:  # noqa: ANN001 (a sqlalchemy Engine)
    """Make every transaction on a SQLite ``engine`` take the write lock when it begins.

    Python's sqlite3 driver sends no BEGIN before a SELECT, so a read-then-write in one
    SQLAlchemy transaction is not atomic. Optuna hands a queued (WAITING) trial to a worker that
    way: it reads the trial's state, then sets it RUNNING. Workers that ask at the same moment
    all read WAITING and all run the same trial, and all but the first then fail to record it
    ("Cannot tell a COMPLETE trial"). Measured: 4 processes asking together got the same
    queued trial in 13 of 20 rounds; with ``BEGIN IMMEDIATE`` in none
    (tests/search/test_study.py). This is the SQLAlchemy documentation's recipe for pysqlite.
    """
    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:  # noqa: ANN001
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks close; new ones get them


# TPESampler options regsearch sets unless a study file's ``search.tpe`` says otherwise.
# - multivariate + group, 5 random startup trials instead of Optuna's 10: measured on digits
#   (benchmarks/results/efficiency-digits.md, 30 trials, 5 seeds), this reached random search's
#   best in a median 0.16 of random search's fit seconds against 0.26 with Optuna's defaults,
#   and ended lower in 4 of 5 seeds. multivariate + group alone, with 10 startup trials: 0.25.
#   group=True because the allow_off switches (`l2_on`) make the space conditional.
# - constant_liar: a trial still running counts as a bad result, so workers started together
#   do not all sample the same region (Optuna recommends it for parallel workers; with one
#   worker nothing else is running and it changes nothing).
TPE_DEFAULTS: dict[str, object] = {
    "multivariate": True, "group": True, "n_startup_trials": 5, "constant_liar": True,
}


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """Return the config's sampler, seeded afresh for every trial (`PerTrialSeed`)."""
    if config.sampler == "random":
        return PerTrialSeed(lambda seed: optuna.samplers.RandomSampler(seed=seed), config.seed)
    options = {**TPE_DEFAULTS, **config.tpe_options}
    if not options["multivariate"] and "group" not in config.tpe_options:
        options["group"] = False  # TPE groups only a multivariate model

    def tpe(seed: int) -> optuna.samplers.TPESampler:
        with warnings.catch_warnings():  # multivariate, group, constant_liar are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, **options)

    return PerTrialSeed(tpe, config.seed)


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler seeded for each trial from the study seed and the trial's number.

    A sampler seeded once per process draws the same random numbers in every process: two
    `search.run` on one study (two terminals, or the same command on several hosts) proposed
    the same recipes, trial for trial, through TPE's random startup trials (measured: trials 1
    and 2 of two such runs had identical parameters). Trial numbers are unique across all
    processes of a study, so seeding each trial from its number gives every process its own
    draws, while one process alone stays reproducible from the study seed. TPE and random
    sampling keep no other state between trials (they read the history from the storage), so
    a sampler made for each trial loses nothing.

    Args:
        make: builds the underlying sampler from a seed.
        seed: the study seed.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self.current = make(seed)  # until the first trial; it shows the sampler's settings

    @staticmethod
    def trial_seed(seed: int, number: int) -> int:
        return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.current = self._make(self.trial_seed(self._seed, trial.number))
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial):  # noqa: ANN201
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space):  # noqa: ANN001, ANN201
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution):  # noqa: ANN001, ANN201
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values) -> None:  # noqa: ANN001
        self.current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Return the config's pruner; the first decision waits for the end of the first fold.

    A trial reports ``step = fold * max_epochs + epoch``, so its whole budget is
    ``n_folds * max_epochs`` steps and step ``max_epochs - 1`` ends the first fold (a fold that
    early stopping ended sooner reports its best value there too). The value reported is the
    running CV estimate (`search.worker.RunningCV`), which no epoch inside a later fold moves.
    Pruning on the first epochs of a fold would compare how fast recipes learn, and
    regularization slows early learning: with a warm-up of 5 epochs of 30 the median pruner
    stopped 27 of 30 digits trials at epoch 6, nearly every regularized one.

    Batched folds judged epoch by epoch (``batched_pruning="epoch"``,
    `search.worker.AcrossFolds`) report the mean over all folds at ``step = epoch``: the first
    decision waits for half the epochs, and then the median pruner decides at every epoch.
    """
    epochs = config.max_epochs
    if config.fold_mode == "batched" and config.batched_pruning == "epoch":
        first, every, max_resource = max(1, epochs // 2), 1, epochs
    else:  # at the end of every fold: steps fold_end, fold_end + epochs, ...
        first, every, max_resource = max(1, epochs - 1), epochs, config.n_folds * epochs
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=max_resource, reduction_factor=3
        )
    if config.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=3, n_warmup_steps=first, interval_steps=every
        )
    return optuna.pruners.NopPruner()


def open_study(config: StudyConfig, *, create: bool = True,
               on_stale: Callable[[FrozenTrial], None] | None = None,
               on_deleted: Callable[[int], None] | None = None) -> optuna.Study:
    """Create the study of ``config`` or load it to resume.

    A resumed study must have been created with the same folds, epochs, seed, data, model and
    space, or its trials would not be comparable. With ``config.fresh`` a stored study is
    deleted first, and ``on_deleted`` is told how many trials it held.

    Raises:
        ValueError: the stored study was created with other settings (the message says
            which, and that ``--fresh`` starts over).
    """
    storage = open_storage(config.storage, on_stale, config.tracking_uri)
    if config.fresh and create:
        try:
            n_deleted = len(storage.get_all_trials(storage.get_study_id_from_name(config.name),
                                                   deepcopy=False))
            optuna.delete_study(study_name=config.name, storage=storage)
        except KeyError:  # no such study (or another process deleted it first)
            pass
        else:
            if on_deleted is not None:
                on_deleted(n_deleted)
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        sampler=make_sampler(config),
        pruner=make_pruner(config),
        direction="minimize",
        load_if_exists=True,
    )
    if create and study.metric_names is None:
        # optuna-dashboard and Optuna's plots call the value "Objective 0" otherwise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_NAME])
    settings = json.loads(json.dumps(config.settings()))
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None and create:
        study.set_user_attr(SETTINGS_ATTR, settings)
        if config.enqueue_defaults and not study.trials:
            # The study file's defaults go first: a known-reasonable point for the sampler.
            # skip_if_exists: workers starting together enqueue it once
            study.enqueue_trial(default_params(config.spec.space),
                                user_attrs={ENQUEUED_ATTR: "defaults"}, skip_if_exists=True)
    elif stored is not None and stored != settings:
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise ValueError(
            f"study {config.name!r} in {redact_url(config.storage)} was created with other "
            f"{', '.join(changed)} ({', '.join(f'{k}={stored.get(k)!r}' for k in changed[:2])}); "
            f"rerun with the same settings to resume, or pass --fresh to start over."
        )
    return study


def count_trials(study: optuna.Study) -> dict[str, int]:
    """Count trials by outcome; ``budget`` is what counts against ``--trials``.

    A stop that is not the recipe's fault costs no budget: a trial interrupted (Ctrl-C,
    SIGTERM, a store that failed) or whose recipe was queued again (its process
    was killed, or stopped sending heartbeats) is counted apart, and the recipe trains again.
    """
    trials = study.get_trials(deepcopy=False)
    requeued = ({t.user_attrs.get(RETRY_OF_ATTR) for t in trials}
                | {n for t in trials for n in t.system_attrs.get("retry_history", ())})

    def stopped(t: FrozenTrial) -> bool:
        return bool(t.user_attrs.get(INTERRUPTED_ATTR)) or t.number in requeued

    counts = {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL and not stopped(t) for t in trials),
        "interrupted": sum(t.state == TrialState.FAIL and stopped(t) for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
    }
    counts["budget"] = counts["complete"] + counts["pruned"] + counts["failed"] + counts["running"]
    return counts


def quiet_optuna() -> None:
    """Keep Optuna's per-trial log lines and experimental warnings off the progress display."""
    # Failed trials are reported by our own display (with their reason), not as tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow logs every database error with its traceback before raising it; regsearch reports
    # what it raises (a failed store in one line: `search.stores.lost_cause`)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # Keras on TensorFlow warns about retracing when each fold builds a fresh model: expected.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
