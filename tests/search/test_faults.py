"""Faults injected into real runs of a digits study: real processes, real SQLite stores.

The process is killed (SIGKILL) at chosen moments, found by watching its real progress (the
stores, its output), never by a hook in the code; the disk under the stores fills up. After
each, a rerun of the same command must leave nothing RUNNING or WAITING, in Optuna or MLflow,
and exactly ``--trials`` trained trials counted: read back with Optuna's and MLflow's own APIs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.study import count_trials
from tests.search.running import LONG_TRIALS, start_training, with_trials

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
# the cheapest study with a held-out report: 2 trials, 2 folds, 2 epochs; each fold builds its
# own model, so a trial's first moments are spent building one
SHORT = [sys.executable, "-m", "search.run", "--study", "digits", "--trials", "2", "--epochs",
         "2", "--folds", "2", "--no-progress", "--rebuild-per-trial",
         "--set", "data.heldout_fraction=0.2"]


def assert_nothing_lost(storage: str, tracking_uri: str, n_trials: int) -> None:
    """The accounting every run must leave: nothing RUNNING or WAITING; ``n_trials`` trials
    trained and counted; every failed trial stopped for a reason not its recipe's, with its
    recipe trained again (by its retry, or its retry's retry when that was stopped too); every
    MLflow run closed, each trial's with the trial's outcome."""
    study = optuna.load_study(study_name="digits", storage=storage)
    trials = study.get_trials()
    assert [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)] == []
    trained = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(trained) == n_trials, [(t.number, t.state.name) for t in trials]
    retry_of = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        retry = retry_of.get(failed.number)
        while retry is not None and retry.state == TrialState.FAIL:
            retry = retry_of.get(retry.number)
        assert retry is not None and retry.params == failed.params, failed.user_attrs
    assert count_trials(study)["budget"] == n_trials  # regsearch's own count agrees

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    status = {r.info.run_id: r.info.status for r in runs}
    for trial in trials:
        expected = {TrialState.COMPLETE: {"FINISHED"}, TrialState.PRUNED: {"FINISHED"},
                    TrialState.FAIL: {"FAILED", "KILLED"}}[trial.state]
        assert status[trial.user_attrs["mlflow_run_id"]] in expected, trial.number
    parents = [r for r in runs if r.data.tags.get("regsearch.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def _stores(cwd: Path) -> tuple[str, str]:
    return f"sqlite:///{cwd}/mlruns/optuna.db", f"sqlite:///{cwd}/mlruns/mlflow.db"


def _rerun(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _kill_when(proc: subprocess.Popen, seen, what: str, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``seen()`` is true; fail with its output if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if seen():
            proc.kill()
            proc.wait(timeout=60)
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"never saw {what} within {timeout:.0f} s:\n{proc.communicate()[0][-4000:]}")


def _building(storage: str):
    """True while a trial is RUNNING and has its MLflow run but no epoch yet: from there to its
    first epoch the trial builds its model (and traces its training step)."""
    def seen() -> bool:
        try:
            study = optuna.load_study(study_name="digits", storage=storage)
        except Exception:  # noqa: BLE001 (not created yet)
            return False
        return any("mlflow_run_id" in t.user_attrs and not t.intermediate_values
                   for t in study.get_trials(states=(TrialState.RUNNING,)))
    return seen


def _printed(proc: subprocess.Popen, pattern: str):
    """A test true once ``proc`` has printed a line matching ``pattern``, and its output so far."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if re.search(pattern, line):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    return found.is_set, lines


def test_sigkill_at_model_build_and_at_the_report_loses_no_trial_and_no_run(tmp_path) -> None:
    storage, tracking = _stores(tmp_path)

    # 1. killed while trial 0 builds its model
    proc = subprocess.Popen(SHORT, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _kill_when(proc, _building(storage), "a trial building its model")
    killed = optuna.load_study(study_name="digits", storage=storage).trials[0]
    assert killed.state == TrialState.RUNNING and not killed.intermediate_values

    # 2. the rerun trains the killed trial's recipe and one more; killed in the held-out
    # report, while it retrains the selected recipe
    proc = subprocess.Popen(SHORT, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    reporting, lines = _printed(proc, r"^retraining ")
    _kill_when(proc, reporting, "the held-out report")
    output = "".join(lines)
    assert "trial(s) [0] of a worker process that was killed on this host" in output, output
    counts = count_trials(optuna.load_study(study_name="digits", storage=storage))
    assert counts["budget"] == 2 and counts["running"] == 0  # the report follows the trials

    # 3. a rerun with the budget spent goes straight to the report; SIGTERM while it retrains
    # (the signal may land inside Keras's tracing, which turns it into its own TypeError)
    proc = subprocess.Popen(SHORT, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    reporting, lines = _printed(proc, r"^retraining ")
    deadline = time.monotonic() + 300
    while not reporting() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 130, "".join(lines)[-4000:]
    time.sleep(0.5)  # the reader thread has the last lines
    assert "Traceback" not in "".join(lines), "".join(lines)[-4000:]
    client = MlflowClient(tracking)
    parent = optuna.load_study(study_name="digits", storage=storage).user_attrs[
        "regsearch.mlflow_parent_run_id"]
    assert client.get_run(parent).info.status == "KILLED"

    # 4. a rerun with the budget spent trains no trial and writes the report
    done = _rerun(SHORT, tmp_path)
    assert "budget of 2 trials already spent" in done.stderr, done.stderr[-4000:]
    assert "held-out report of digits" in done.stderr, done.stderr[-4000:]
    assert_nothing_lost(storage, tracking, n_trials=2)
    study = optuna.load_study(study_name="digits", storage=storage)
    assert study.trials[0].user_attrs["fail_reason"].endswith("ended without recording an "
                                                              "outcome (killed)")
    client = MlflowClient(tracking)
    parent = study.user_attrs["regsearch.mlflow_parent_run_id"]
    assert {"heldout_report.json", "heldout_report.md"} <= {
        a.path for a in client.list_artifacts(parent)}


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """``tmp_path/mlruns`` on its own 64 MB file system (tmpfs); skips where mounting one is
    not permitted (mount needs root, or CAP_SYS_ADMIN)."""
    mlruns = tmp_path / "mlruns"
    mlruns.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mlruns)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    try:
        yield mlruns
    finally:
        subprocess.run(["umount", "-l", str(mlruns)], check=False)


def _fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until its file system has no space left; return the file."""
    filler = folder / "filler"
    with pytest.raises(OSError, match="No space left"), filler.open("wb") as file:
        while True:
            file.write(b"\0" * (1 << 20))
            file.flush()
    return filler


def test_a_full_disk_under_the_stores_stops_the_run_like_a_lost_store(small_disk) -> None:
    """A real full disk: mlruns/ (both stores, the default layout) is a 64 MB tmpfs, filled up
    while trial 0 trains."""
    cwd = small_disk.parent
    storage, tracking = _stores(cwd)
    proc = start_training(LONG_TRIALS, cwd=cwd, env=ENV, storage=storage, timeout=300)
    filler = _fill(small_disk)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert error == output.strip().splitlines()[-1:], output[-4000:]
    # every epoch reports to Optuna's storage, so it fails first; MLflow's would do as well
    assert re.match(r"error: (the Optuna storage sqlite:///mlruns/optuna.db|MLflow at "
                    r"sqlite:///mlruns/mlflow.db) failed \((database or disk is full|No space "
                    r"left on device)", error[0]), error[0]
    assert error[0].endswith("run the same command again once that is fixed")

    filler.unlink()
    done = _rerun(with_trials(LONG_TRIALS, 1), cwd)
    assert "trial(s) [0] of a worker process that stopped when a store failed" in done.stderr
    assert_nothing_lost(storage, tracking, n_trials=1)
    trial = optuna.load_study(study_name="digits", storage=storage).trials[0]
    assert trial.user_attrs["interrupted"] is True
    assert re.search(r"failed \((database or disk is full|No space left on device)",
                     trial.user_attrs["fail_reason"]), trial.user_attrs["fail_reason"]
    run = MlflowClient(tracking).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == "true"


@contextlib.contextmanager
def _locked(db: Path):
    """Another process's write lock on the SQLite file ``db``, held as a ``sqlite3`` shell
    inside ``BEGIN EXCLUSIVE`` holds it."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as shell:
        shell.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            shell.execute("ROLLBACK")


def test_a_store_locked_by_another_process_past_its_wait_stops_the_run_like_a_lost_store(
        tmp_path) -> None:
    """A store file locked by another process while trial 0 trains, longer than the store's
    client waits for it (SQLite's busy timeout): MLflow's first (MLflow waits 20 s), then, on
    the rerun, Optuna's (its 60 s shortened for the test). Each stops the run in one line, exit
    75, the trial not counted; once the lock is gone, a rerun leaves nothing lost."""
    env = {**ENV, "REGSEARCH_SQLITE_WAIT_SECONDS": "3"}
    storage, tracking = _stores(tmp_path)
    for name, store in (("mlflow.db", "MLflow at sqlite:///mlruns/mlflow.db"),
                        ("optuna.db", "the Optuna storage sqlite:///mlruns/optuna.db")):
        proc = start_training(LONG_TRIALS, cwd=tmp_path, env=env, storage=storage)
        with _locked(tmp_path / "mlruns" / name):
            output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 75, output[-4000:]
        assert "Traceback" not in output, output[-4000:]
        error = [line for line in output.splitlines() if line.startswith("error:")]
        assert error == output.strip().splitlines()[-1:], output[-4000:]
        assert error[0].startswith(f"error: {store} was locked by another process for over "
                                   f"{20 if name == 'mlflow.db' else 3} s (database is locked); "
                                   f"the running trial does not count"), error[0]
        assert error[0].endswith("run the same command again once nothing else holds it (close "
                                 "what does: a sqlite3 shell inside a transaction, an mlflow ui "
                                 "or mlflow db upgrade migrating it)"), error[0]

    done = _rerun(with_trials(LONG_TRIALS, 1), tmp_path)
    assert "stopped when a store failed" in done.stderr, done.stderr[-4000:]
    assert_nothing_lost(storage, tracking, n_trials=1)
    stopped = [t for t in optuna.load_study(study_name="digits", storage=storage).trials
               if t.state == TrialState.FAIL]
    assert [t.number for t in stopped] == [0, 1]
    for trial, name in zip(stopped, ("MLflow at", "the Optuna storage")):
        assert trial.user_attrs["interrupted"] is True
        assert f"{name} sqlite:///mlruns/" in trial.user_attrs["fail_reason"]
        assert "was locked by another process" in trial.user_attrs["fail_reason"]


@pytest.fixture
def bind_mounts(tmp_path) -> None:
    """Skip where a folder cannot be bind-mounted (mount needs root, or CAP_SYS_ADMIN)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(probe), str(probe)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount a folder here: {mounted.stderr.strip()}")
    subprocess.run(["umount", str(probe)], check=True)


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made read-only while files in it are open for writing: the kernel refuses to
    remount a file system so, but a read-only bind mount of the folder over itself takes. Open
    file descriptors still write the old mount; every file made anew (SQLite's journal,
    MLflow's artifacts, lock files) fails with EROFS."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_stores_made_read_only_mid_study_stop_the_run_like_a_lost_store(bind_mounts,
                                                                       tmp_path) -> None:
    storage, tracking = _stores(tmp_path)
    proc = start_training(LONG_TRIALS, cwd=tmp_path, env=ENV, storage=storage)
    with _read_only(tmp_path / "mlruns"):
        output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert error == output.strip().splitlines()[-1:], output[-4000:]
    # SQLite cannot make its journal: "unable to open database file", which the line explains
    assert re.match(rf"error: (the Optuna storage sqlite:///mlruns/optuna.db|MLflow at "
                    rf"sqlite:///mlruns/mlflow.db) failed \(.+; {tmp_path}/mlruns is on a "
                    rf"read-only file system\); ", error[0]), error[0]
    assert error[0].endswith("run the same command again once that is fixed"), error[0]

    done = _rerun(with_trials(LONG_TRIALS, 1), tmp_path)
    assert "stopped when a store failed" in done.stderr, done.stderr[-4000:]
    assert_nothing_lost(storage, tracking, n_trials=1)


def test_a_store_file_damaged_mid_study_stops_the_run_and_says_what_to_do(tmp_path) -> None:
    """Junk over the first page of the Optuna database while trial 0 trains: the run stops in
    one line saying the file cannot be resumed, MLflow's runs are closed at once (they would
    stay RUNNING if the file is moved aside), and the rerun refuses the file, saying what to
    do, before writing anything."""
    storage, tracking = _stores(tmp_path)
    proc = start_training(LONG_TRIALS, cwd=tmp_path, env=ENV, storage=storage)
    with (tmp_path / "mlruns" / "optuna.db").open("r+b") as file:
        file.write(b"junk" * 1024)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    last = output.strip().splitlines()[-1]
    assert last == ("error: the Optuna storage sqlite:///mlruns/optuna.db is damaged (file is not "
                    "a database); a damaged database cannot be resumed: restore the file from a "
                    "backup and run the same command again, or move it aside to start that "
                    "store anew (what it held is lost)"), output[-4000:]
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert {r.info.run_name: r.info.status for r in runs} == {"digits": "KILLED",
                                                              "trial-0": "KILLED"}

    again = subprocess.run(LONG_TRIALS, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 2, again.stderr[-4000:]
    assert again.stderr.strip().splitlines() == [
        "error: --storage sqlite:///mlruns/optuna.db: mlruns/optuna.db is not a SQLite database "
        "(it does not start with SQLite's header: damaged, or a file of another kind); nothing "
        "was written to it. --fresh cannot help (it must read the store first): move the file "
        "aside (or restore it from a backup) to start a new store there, or point --storage at "
        "another file."]


def _stores_on(folder: Path):
    """An Optuna study on SQLite, one on a journal file, and an MLflow tracker with a parent
    run, all in ``folder``, each holding a trial or a run already."""
    from search.mlflow_tracker import MlflowTracker
    from search.study import open_storage

    studies = [optuna.create_study(study_name="s", storage=open_storage(url)) for url in (
        f"sqlite:///{folder}/optuna.db", str(folder / "optuna.journal"))]
    for study in studies:
        study.enqueue_trial({"x": 0.5})
    tracker = MlflowTracker(f"sqlite:///{folder}/mlflow.db")
    return studies, tracker, tracker.open_parent("s", {"a": 1})


def _write_until_lost(study: optuna.Study) -> None:
    """Write to ``study`` until its storage fails (a store may have room left in its pages)."""
    for _ in range(2000):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("padding", "x" * 2000)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials made by ask()
def test_a_store_on_a_full_disk_raises_store_lost_saying_what_happened(small_disk,
                                                                      tmp_path) -> None:
    """Each store on a full file system, written to: Optuna's SQLite and journal storages,
    MLflow's database and its artifacts. (A file system made read-only under open stores
    cannot be had here: the kernel refuses to remount one with files open for writing.)"""
    from search.tracking import StorageLost, TrackingLost

    (sqlite, journal), tracker, parent = _stores_on(small_disk)
    artifact = tmp_path / "report.md"
    artifact.write_text("x" * 100_000)
    _fill(small_disk)
    expected = r"failed \((database or disk is full|No space left on device)"

    for study, shown in ((sqlite, "sqlite:///"), (journal, "")):
        with pytest.raises(StorageLost, match=rf"^the Optuna storage {shown}\S+ {expected}"):
            _write_until_lost(study)
    with pytest.raises(TrackingLost, match=rf"^MLflow at sqlite:///\S+ {expected}"):
        for step in range(2000):
            tracker.log_metrics(parent, {f"m{i}": 1.0 for i in range(100)}, step=step)
    with pytest.raises(TrackingLost, match=rf"^MLflow at sqlite:///\S+ {expected}"):
        tracker.log_artifacts(parent, [artifact])


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_store_file_damaged_mid_study_raises_store_lost(tmp_path) -> None:
    from search.tracking import StorageLost, TrackingLost

    (sqlite, _), tracker, parent = _stores_on(tmp_path)
    for name in ("optuna.db", "mlflow.db"):
        with (tmp_path / name).open("r+b") as file:
            file.write(b"junk" * 1024)
    with pytest.raises(StorageLost, match=r"is damaged \((file is not a database|database "
                                          r"disk image is malformed)\)$"):
        _write_until_lost(sqlite)
    with pytest.raises(TrackingLost, match=r"is damaged \((file is not a database|database "
                                           r"disk image is malformed)\)$"):
        tracker.log_metrics(parent, {"m": 1.0})


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("removed", ["file", "folder"])
def test_a_store_file_deleted_mid_study_raises_store_lost_saying_so(tmp_path, removed) -> None:
    """The Optuna database deleted, or its folder removed, under an open study: SQLite says
    "attempt to write a readonly database" (it will not write a file no longer linked); the
    line says what happened and that a rerun without the file starts a new store."""
    import shutil

    from search.tracking import StorageLost

    folder = tmp_path / "store"
    (sqlite, _), _, _ = _stores_on(folder)
    if removed == "file":
        (folder / "optuna.db").unlink()
    else:
        shutil.rmtree(folder)
    gone = (f"{folder}/optuna.db was deleted or moved away" if removed == "file"
            else f"its folder {folder} is gone")
    with pytest.raises(StorageLost, match=rf"failed \(.+; {re.escape(gone)}\)$") as lost:
        _write_until_lost(sqlite)
    assert lost.value.advice.startswith("put the file back (or restore it from a backup) and run "
                                        "the same command again")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the other worker's trial: ask()
def test_a_worker_whose_budget_is_reached_waits_to_train_a_retry_of_another_workers_trial(
        tmp_path) -> None:
    """Two workers share a study with a budget of 1. One holds the last trial when the other
    finds the budget reached; then the first is killed. The second, still there, fails the
    killed trial and trains its recipe: no retry is left WAITING for the next run."""
    import socket

    from search.config import build_config
    from search.datasets import StudyData, load_data
    from search.liveness import _started, pid_namespace
    from search.names import WORKER_ATTR, WORKER_NS_ATTR, WORKER_START_ATTR
    from search.study import open_storage, quiet_optuna
    from search.training import prepare_training
    from search.worker import Objective, run_trials
    from spaces import sample_params
    from tests.search.memory_tracker import MemoryTracker

    quiet_optuna()
    config = build_config("digits", n_trials=1, n_folds=2, max_epochs=2, seed=0)
    full = load_data(config.spec.data, where="digits", seed=0)
    data = StudyData(full.train.subset(range(150)), None, full.augment_preset)
    training = prepare_training(config, data)
    tracker = MemoryTracker()
    parent = tracker.open_parent(config.name, config.settings())
    objective = Objective(config, data.train, training.folds, training.models, tracker, parent)
    study = optuna.create_study(study_name="s", storage=open_storage(
        f"sqlite:///{tmp_path}/optuna.db"))

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        held = study.ask()  # the other worker's trial, as it records it
        sample_params(config.spec.space, held)
        for key, value in {WORKER_ATTR: f"{socket.gethostname()}:{other.pid}",
                           WORKER_NS_ATTR: pid_namespace(),
                           WORKER_START_ATTR: _started(other.pid)}.items():
            held.set_user_attr(key, value)
        # killed and reaped, as the launcher reaps a worker that died
        threading.Timer(2.0, lambda: (other.kill(), other.wait())).start()
        started = time.monotonic()
        run_trials(study, objective, n_trials=1, poll_seconds=0.2)
    finally:
        other.kill()
        other.wait()

    assert time.monotonic() - started >= 2.0  # it waited for the other worker
    killed, retry = study.get_trials()
    assert killed.state == TrialState.FAIL and "(killed)" in killed.user_attrs["fail_reason"]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == killed.number
    assert retry.params == killed.params
    assert count_trials(study)["budget"] == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_mlflow_on_a_full_disk_ends_the_trial_interrupted_in_optuna_at_once(small_disk,
                                                                           tmp_path) -> None:
    """MLflow's store alone fills up (Optuna's is elsewhere): the trial is ended in Optuna at
    once, interrupted and not counted, its recipe queued; the run stops (`TrackingLost`)."""
    from search.config import build_config
    from search.datasets import StudyData, load_data
    from search.mlflow_tracker import MlflowTracker
    from search.study import open_storage, quiet_optuna
    from search.tracking import TrackingLost
    from search.training import prepare_training
    from search.worker import Objective, run_trials

    quiet_optuna()
    config = build_config("digits", n_trials=2, n_folds=2, max_epochs=2, seed=0)
    full = load_data(config.spec.data, where="digits", seed=0)
    data = StudyData(full.train.subset(range(150)), None, full.augment_preset)
    training = prepare_training(config, data)
    tracker = MlflowTracker(f"sqlite:///{small_disk}/mlflow.db")
    parent = tracker.open_parent(config.name, config.settings())
    objective = Objective(config, data.train, training.folds, training.models, tracker, parent)
    study = optuna.create_study(study_name="s", storage=open_storage(
        f"sqlite:///{tmp_path}/optuna.db"))
    _fill(small_disk)

    with pytest.raises(TrackingLost, match=r"^MLflow at sqlite:///\S+ failed \((database or "
                                           r"disk is full|No space left on device)"):
        run_trials(study, objective, n_trials=2)
    stopped, queued = study.get_trials()
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    assert stopped.user_attrs["fail_reason"].startswith("interrupted (MLflow at sqlite:///")
    assert queued.state == TrialState.WAITING and queued.user_attrs["retry_of"] == 0
    assert count_trials(study)["budget"] == 0
