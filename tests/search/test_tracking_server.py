"""regsearch against a real `mlflow server`, as in "Running across machines".

Workers that open a new study at the same moment all reach its one experiment; a password in
the tracking URL shows nowhere in the output (MLflow's own per-run links would show it); a
server that goes away mid-study stops the run cleanly, and the rerun closes what it left open.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.stores import lost_cause
from search.mlflow_tracker import MlflowTracker
from search.names import ROLE_TAG
from tests.search.mlflow_server import MlflowServer
from tests.search.running import LONG_TRIALS, start_training, with_trials

PASSWORD = "pw-9f3k"


@pytest.mark.parametrize("round_", range(3))
def test_workers_opening_a_new_study_together_share_one_experiment(mlflow_server: str,
                                                                   round_: int) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    trackers = [MlflowTracker(mlflow_server) for _ in range(6)]
    start = threading.Barrier(len(trackers))

    def open_experiment(tracker: MlflowTracker) -> str:
        start.wait()
        return tracker.experiment_id(name)

    with ThreadPoolExecutor(len(trackers)) as pool:
        ids = list(pool.map(open_experiment, trackers))
    assert len(set(ids)) == 1
    assert MlflowClient(mlflow_server).get_experiment_by_name(name).experiment_id == ids[0]


@pytest.mark.slow
def test_a_study_on_a_server_prints_its_links_and_never_the_password(mlflow_server: str,
                                                                      tmp_path: Path) -> None:
    uri = mlflow_server.replace("http://", f"http://user:{PASSWORD}@")
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--study", "digits", "--trials", "2", "--epochs",
         "2", "--folds", "2", "--no-progress", "--storage", f"sqlite:///{tmp_path}/optuna.db",
         "--tracking-uri", uri],
        cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True,
        text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert PASSWORD not in output
    assert "View run" not in output  # MLflow's link for every run it ends
    # the server's own links, without the credentials (a browser asks for them)
    links = re.findall(r"already on the study's run \([^)]*\): (http://127\.0\.0\.1:\d+)"
                       r"/#/experiments/(\d+)/runs/(\w+)", output)
    assert len(links) == 1, output[-3000:]
    address, experiment_id, run_id = links[0]
    assert f"  the study's trials: {address}/#/experiments/{experiment_id}/runs?" in output
    assert "mlflow ui" not in output  # nothing to serve: the server is the UI
    parent = MlflowClient(mlflow_server).get_run(run_id)
    assert parent.info.experiment_id == experiment_id
    assert parent.data.tags[ROLE_TAG] == "study" and parent.info.status == "FINISHED"


@pytest.mark.slow
def test_mlflow_lost_mid_study_stops_the_run_and_the_rerun_closes_the_trials_run(
        tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    server.start()
    storage = f"sqlite:///{tmp_path}/optuna.db"
    command = LONG_TRIALS + ["--storage", storage, "--tracking-uri", server.url]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    try:
        proc = start_training(command, cwd=tmp_path, env=env, storage=storage)
        server.stop()
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 75, output
        assert "Traceback" not in output
        last = output.strip().splitlines()[-1]
        assert last.startswith(f"error: MLflow at {server.url} stopped answering (connection "
                               f"refused); the running trial does not count against the budget "
                               f"and its recipe is trained again"), last
        assert last.endswith("run the same command again once it answers"), last
        trial = optuna.load_study(study_name="digits", storage=storage).trials[0]
        assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] is True

        server.start()
        rerun = subprocess.run(with_trials(command, 1), cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "trial(s) [0] ended while MLflow was out of reach" in rerun.stderr
    finally:
        server.stop()
    trials = optuna.load_study(study_name="digits", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    client = MlflowClient(f"sqlite:///{tmp_path}/server/mlflow.db")  # the server's own store
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs)
    lost = next(r for r in runs if r.data.tags.get("optuna.trial_number") == "0")
    assert lost.info.status == "KILLED"
    assert "stopped answering (connection refused)" in lost.data.tags["fail_reason"]


def test_only_a_store_out_of_reach_counts_as_lost() -> None:
    from sqlalchemy.exc import OperationalError

    url = "postgresql+psycopg2://u:s3cret@db/mlflow"

    def wrapped(message: str) -> Exception:
        try:
            raise OperationalError("SELECT 1", {}, Exception(message))
        except OperationalError as exc:
            try:
                raise RuntimeError("the store's own wrapper") from exc
            except RuntimeError as outer:
                return outer

    gone = lost_cause(wrapped('connection to server at "db" failed: could not connect '
                              '(password "s3cret")'), url)
    assert gone is not None and "could not connect" in gone and "s3cret" not in gone
    assert lost_cause(wrapped("database is locked"), url) is None
    assert lost_cause(ValueError("a bad metric"), url) is None


def test_a_database_locked_past_the_wait_is_a_locked_store_and_a_refused_request_is_not_lost(
        tmp_path) -> None:
    import sqlite3

    from mlflow.exceptions import MlflowException

    url = f"sqlite:///{tmp_path}/s.db"
    holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError) as busy:
        sqlite3.connect(tmp_path / "s.db", timeout=0).execute("INSERT INTO t VALUES (1)")
    assert busy.value.sqlite_errorname == "SQLITE_BUSY"
    # the store's clients wait (SQLite's busy timeout) before SQLite says so: a moment's
    # contention between workers never gets here, a lock held past the wait does
    assert lost_cause(busy.value, url, wait=60) == (
        "was locked by another process for over 60 s (database is locked)")
    # MLflow's own errors carry a SQLSTATE-like code of their own ("XXM00"), not the store's
    refused = MlflowException("Run 'abc' not found", error_code="RESOURCE_DOES_NOT_EXIST")
    assert lost_cause(refused, url) is None
    holder.close()
