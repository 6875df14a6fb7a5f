"""Several workers share one study through PostgreSQL, as on several hosts.

Three `search.run` processes join the `digits` study by name on a real PostgreSQL server (Optuna
storage in one database, MLflow's tracking store in another), started at the same moment on
empty databases. Afterwards Optuna and MLflow must hold each trial exactly once, one parent run,
nothing RUNNING, and the database password nowhere in output or records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from optuna.trial import TrialState

from search.redact import redact_url
from tests.search.running import LONG_TRIALS, start_training

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
N_WORKERS = 3
N_TRIALS = 6
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED",
                 TrialState.FAIL: "FAILED"}


def _secrets(password: str) -> set[str]:
    """The password as it could leak: raw, URL-encoded, and encoded except for '/'."""
    return {password, quote(password, safe=""), quote(password)}


def _leaks(text: str, secrets: set[str]) -> list[str]:
    return sorted(s for s in secrets if s in text)


@pytest.fixture(scope="module")
def shared_study(postgres, tmp_path_factory):
    """Run three workers at once against the PostgreSQL stores; return their outputs."""
    tmp_path = tmp_path_factory.mktemp("workers")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0",
           "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "search.run", "--study", "digits",
               "--storage", postgres.optuna, "--tracking-uri", postgres.mlflow,
               "--trials", str(N_TRIALS), "--folds", "2", "--epochs", "2", "--no-progress"]
    procs, logs = [], []
    started = time.monotonic()
    for i in range(N_WORKERS):
        out = open(tmp_path / f"worker-{i}.out", "w+")
        err = open(tmp_path / f"worker-{i}.err", "w+")
        logs.append((out, err))
        procs.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=err,
                                      text=True))
    deadline = started + 300
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
    outputs = []
    for out, err in logs:
        out.seek(0)
        err.seek(0)
        outputs.append((out.read(), err.read()))
        out.close()
        err.close()
    return {"dir": tmp_path, "returncodes": [p.returncode for p in procs], "outputs": outputs,
            "seconds": time.monotonic() - started}


def _runs(postgres, view=ViewType.ACTIVE_ONLY):
    client = MlflowClient(postgres.mlflow)
    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None, "no MLflow experiment 'digits'"
    return client, experiment, client.search_runs([experiment.experiment_id], run_view_type=view,
                                                  max_results=1000)


def _study(postgres) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=postgres.optuna)


def test_every_worker_exits_cleanly(shared_study) -> None:
    for i, (code, (out, err)) in enumerate(zip(shared_study["returncodes"],
                                                shared_study["outputs"])):
        assert code == 0, f"worker {i} exited with {code}:\n{out}\n{err[-6000:]}"
        assert "Traceback" not in err, f"worker {i}:\n{err[-6000:]}"


def test_optuna_records_each_trial_once_and_nothing_stays_running(shared_study, postgres) -> None:
    trials = _study(postgres).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), numbers
    # Each worker checks the budget, then asks for a trial: when all N see N_TRIALS - 1 trials
    # at once, each starts one more. So N_TRIALS <= n <= N_TRIALS + (N_WORKERS - 1).
    assert N_TRIALS <= len(trials) <= N_TRIALS + N_WORKERS - 1, numbers
    left = {t.number: t.state.name for t in trials if t.state not in FINISHED}
    assert not left, f"trials left unfinished (RUNNING or WAITING): {left}"
    # the study file's defaults are enqueued once, not once per worker
    enqueued = [t.number for t in trials if t.user_attrs.get("enqueued") == "defaults"]
    assert len(enqueued) == 1, f"defaults enqueued as trials {enqueued}"


def test_mlflow_holds_one_parent_and_one_child_per_trial(shared_study, postgres) -> None:
    from search.names import PARENT_RUN_ATTR

    study = _study(postgres)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    _, _, runs = _runs(postgres)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, (
        f"{len(parents)} active parent runs for one study: "
        f"{[(r.info.run_id, r.info.status, r.info.start_time) for r in parents]}")
    parent = parents[0]
    assert study.user_attrs[PARENT_RUN_ATTR] == parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}

    numbers = [int(r.data.tags["optuna.trial_number"]) for r in children]
    assert sorted(numbers) == sorted(trials), f"child runs by trial number: {sorted(numbers)}"
    for run in children:
        trial = trials[int(run.data.tags["optuna.trial_number"])]
        assert run.info.status == MLFLOW_STATUS[trial.state], (trial.number, run.info.status)
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]

    # a parent that lost the race may be deleted, but no trial may have been logged under it
    _, _, every = _runs(postgres, ViewType.ALL)
    deleted = {r.info.run_id for r in every if r.info.lifecycle_stage == "deleted"}
    assert not [r.info.run_id for r in every
                if r.data.tags.get("mlflow.parentRunId") in deleted or
                ("optuna.trial_number" in r.data.tags and r.info.run_id in deleted)]


def test_the_password_is_never_printed_nor_recorded(shared_study, postgres) -> None:
    secrets = _secrets(postgres.password)
    for i, (code, (out, err)) in enumerate(zip(shared_study["returncodes"],
                                                shared_study["outputs"])):
        assert not _leaks(out + err, secrets), f"worker {i} printed the password"
        if code == 0:  # the storage a worker prints is the redacted one
            assert "postgresql+psycopg2://regsearch:***@127.0.0.1" in err, err[-3000:]

    client, experiment, runs = _runs(postgres, ViewType.ALL)
    assert not _leaks(json.dumps([experiment.artifact_location, experiment.tags]), secrets)
    for run in runs:
        recorded = {**run.data.params, **run.data.tags}
        leaked = {k: v for k, v in recorded.items() if _leaks(f"{k}={v}", secrets)}
        assert not leaked, f"run {run.info.run_id} records the password in {sorted(leaked)}"
    parent = next(r for r in runs if r.info.lifecycle_stage == "active"
                  and "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["optuna.storage"] == redact_url(postgres.optuna)
    assert "regsearch:***@127.0.0.1" in parent.data.tags["optuna.storage"]

    study = _study(postgres)
    stored = json.dumps([study.user_attrs, [(t.user_attrs, t.system_attrs, t.params)
                                            for t in study.trials]], default=str)
    assert not _leaks(stored, secrets), "the Optuna study records the password"

    # artifacts (best_recipe.yaml, space.json, plots) and anything else the workers wrote
    written = [p for p in Path(shared_study["dir"]).rglob("*") if p.is_file()
               and not p.name.startswith("worker-")]
    for path in written:
        assert not _leaks(path.read_bytes().decode("utf-8", "replace"), secrets), path


def test_a_storage_lost_mid_study_stops_the_run_with_one_line(tmp_path: Path) -> None:
    from tests.search.pg import PostgresServer, Unavailable

    server = PostgresServer(databases=("optuna",))
    try:
        server.start()
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    storage = server.url("optuna")
    try:
        proc = start_training(LONG_TRIALS + ["--storage", storage], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, storage=storage)
    finally:
        server.stop()
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, output[-3000:]
    assert "Traceback" not in output
    assert not any(secret in output for secret in _secrets(server.password))
    last = output.strip().splitlines()[-1]
    # what the driver says depends on the moment: a connection in use was closed, or a new
    # one was refused
    assert last.startswith(f"error: the Optuna storage {redact_url(storage)} stopped answering "
                           f"(")
    assert (f'(connection to server at "127.0.0.1", port {server.port} failed' in last
            or "(server closed the connection unexpectedly" in last), last
    assert last.endswith("run the same command again once it answers")


@pytest.mark.parametrize("through", ["database", "server"])
def test_workers_setting_the_same_experiment_tags_at_once_all_succeed(
        postgres, through, tmp_path) -> None:
    """Every worker records the trials view on the experiment as it starts; on PostgreSQL,
    MLflow's read-then-insert of a new experiment tag lets all but one of them hit a
    duplicate key (a worker exited with it in CI), directly or through a tracking server on
    that database. Eight trackers in threads, released together by a barrier, set the same
    fresh tags ten times over; none may fail."""
    from search.mlflow_tracker import MlflowTracker
    from tests.search.mlflow_server import MlflowServer

    uri = postgres.mlflow
    server = None
    if through == "server":
        server = MlflowServer(tmp_path, workers=4, backend_store_uri=postgres.mlflow)
        server.start()
        uri = server.url
    try:
        _race_experiment_tags([MlflowTracker(uri) for _ in range(8)])
    finally:
        if server is not None:
            server.stop()


def _race_experiment_tags(trackers: list) -> None:
    import threading
    import uuid

    parent = trackers[0].open_parent(f"tag-race-{uuid.uuid4().hex[:8]}", {}, tags={})
    errors: list[BaseException] = []
    for round_ in range(10):
        tags = {f"view.{round_}.{i}": json.dumps({"round": round_, "i": i}) for i in range(3)}
        barrier = threading.Barrier(len(trackers))

        def write(tracker) -> None:  # noqa: ANN001
            barrier.wait()
            try:
                tracker.set_experiment_tags(parent, tags)
            except BaseException as exc:  # noqa: BLE001 (collected and reported below)
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(t,)) for t in trackers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, f"{len(errors)} of 80 writes failed, first: {errors[0]!r}"[:3000]
    held = trackers[0].client.get_experiment(trackers[0].experiment_of(parent)).tags
    assert held["view.9.2"] == json.dumps({"round": 9, "i": 2})
