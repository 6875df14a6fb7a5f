"""Worker processes: the GPU plan, the workers' command line, and a study run by several workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.gpus import plan_workers
from search.liveness import _started, fail_orphaned_trials, pid_namespace, process_gone
from search.names import WORKER_ATTR, WORKER_NS_ATTR, WORKER_START_ATTR
from search.study import count_trials
from search.run import _worker_argv
from tests.search.running import training_trials


@pytest.mark.parametrize("gpus,per_gpu,expected", [("0,1", 1, 2), ("3", 4, 4), ("0,1,2", 2, 6)])
def test_plan_workers_one_slot_per_gpu_and_share(gpus: str, per_gpu: int, expected: int,
                                                 monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    plan = plan_workers(gpus, per_gpu)
    assert plan.note is None
    envs = plan.environments()
    assert plan.n_workers == expected == len(envs)
    assert sorted({e["CUDA_VISIBLE_DEVICES"] for e in envs}) == gpus.split(",")
    for env in envs:
        shared = "XLA_PYTHON_CLIENT_PREALLOCATE" in env
        assert shared == (per_gpu > 1)
        if shared:
            assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) * per_gpu <= 0.9 + 1e-9


def test_plan_workers_without_gpus_runs_one_worker(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    plan = plan_workers(None, 1)
    assert plan.gpus == () and plan.n_workers == 1 and plan.environments() == [{}]


@pytest.mark.parametrize("gpus,per_gpu,key", [("0,x", 1, "--gpus"), (",", 1, "--gpus"),
                                              ("0", 0, "--workers-per-gpu")])
def test_plan_workers_rejects_bad_input(gpus: str, per_gpu: int, key: str, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ValueError, match=key):
        plan_workers(gpus, per_gpu)


def test_plan_workers_refuses_a_gpu_outside_the_schedulers_allocation(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert plan_workers("3", 2).gpus == ("3",)
    with pytest.raises(ValueError) as info:
        plan_workers("0,3", 1)
    assert str(info.value) == ("'--gpus'='0,3': GPU 0 is not visible here; the GPUs visible here "
                               "are 2,3 (CUDA_VISIBLE_DEVICES='2,3').")


def test_plan_workers_refuses_gpus_on_a_host_without_any(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="no GPU is visible here .*leave out --gpus to run one "
                                         "worker on the CPU"):
        plan_workers("0", 1)


def test_plan_workers_notes_what_it_cannot_check_or_apply(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    plan = plan_workers("0,1", 1)
    assert plan.gpus == ("0", "1") and "cannot check --gpus 0,1" in plan.note
    plan = plan_workers(None, 4)
    assert plan.n_workers == 1 and "one worker on the CPU" in plan.note


def test_worker_argv_drops_what_only_the_launcher_does() -> None:
    argv = ["--study", "digits", "--fresh", "--baselines", "reference", "--gpus=0,1",
            "--workers-per-gpu", "2", "--trials", "8"]
    assert _worker_argv(argv) == ["--study", "digits", "--trials", "8", "--no-progress"]


def _ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _gone(worker: str, namespace: str) -> bool:
    return process_gone({WORKER_ATTR: worker, WORKER_NS_ATTR: namespace})


def test_process_gone_tells_a_dead_local_process_from_a_live_or_remote_one() -> None:
    host, here = socket.gethostname(), pid_namespace()
    assert _gone(f"{host}:{_ended_pid()}", here)
    assert _gone(f"{host}:{os.getpid()}", here)  # joining: it runs no trial yet
    assert not _gone(f"{host}:{os.getppid()}", here)
    assert not _gone(f"another-{host}:{_ended_pid()}", here)
    # a container sharing the hostname numbers its processes apart; an old record has no space
    assert not _gone(f"{host}:{_ended_pid()}", "pid:[1]")
    assert not process_gone({WORKER_ATTR: f"{host}:{_ended_pid()}"})
    assert not _gone("", here)


def test_process_gone_sees_a_pid_given_to_a_later_process() -> None:
    live = {WORKER_ATTR: f"{socket.gethostname()}:{os.getppid()}", WORKER_NS_ATTR: pid_namespace()}
    started = _started(os.getppid())
    assert started and not process_gone({**live, WORKER_START_ATTR: started})
    assert process_gone({**live, WORKER_START_ATTR: str(int(started) - 1)})  # another process


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials made by ask(), not optimize()
def test_a_process_that_lost_its_store_is_named_so_and_its_recipe_queued_again(tmp_path) -> None:
    cause = "the Optuna storage postgresql://u:***@db/optuna stopped answering (connection refused)"
    ended = subprocess.run(
        [sys.executable, "-c", "import json, sys; from search.liveness import record_exit, "
         "this_process; print(json.dumps(this_process())); record_exit(sys.argv[1])", cause],
        capture_output=True, text=True, check=True)
    record = json.loads(ended.stdout)
    study = optuna.create_study(study_name="s")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for key, value in {**record, "retry_of": 7}.items():  # already a retry: queued again anyway
        trial.set_user_attr(key, value)

    assert fail_orphaned_trials(study) == [trial.number]
    failed, queued = study.get_trials()
    assert failed.user_attrs["fail_reason"] == (
        f"its worker process {record[WORKER_ATTR]} stopped: {cause}")
    assert queued.state == TrialState.WAITING and queued.user_attrs["retry_of"] == trial.number
    assert count_trials(study)["budget"] == 0  # a lost store is not the recipe's fault


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials made by ask(), not optimize()
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_trials_of_a_killed_local_process_are_failed_and_queued_once(tmp_path, kind) -> None:
    from search.study import open_storage

    url = (f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite"
           else str(tmp_path / "optuna.journal"))
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    host, dead = socket.gethostname(), _ended_pid()
    owners = {"killed": f"{host}:{dead}", "live": f"{host}:{os.getppid()}",
              "remote": f"elsewhere:{dead}", "retried": f"{host}:{dead}",
              "other container": f"{host}:{dead}"}
    trials = {}
    for name, worker in owners.items():
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr(WORKER_ATTR, worker)
        trial.set_user_attr(WORKER_NS_ATTR,
                            "pid:[1]" if name == "other container" else pid_namespace())
        if name == "retried":
            trial.set_user_attr("retry_of", 0)
        trials[name] = trial.number
    closed = []

    assert fail_orphaned_trials(study, on_failed=closed.append) == [
        trials["killed"], trials["retried"]]

    by_number = {t.number: t for t in study.get_trials()}
    for name in ("killed", "retried"):
        trial = by_number[trials[name]]
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["fail_reason"] == (
            f"its worker process {host}:{dead} ended without recording an outcome (killed)")
    assert [t.number for t in closed] == [trials["killed"], trials["retried"]]
    for name in ("live", "remote", "other container"):
        assert by_number[trials[name]].state == TrialState.RUNNING
    # one retry of the killed trial's recipe; a trial that was itself a retry gets none
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(queued) == 1
    assert queued[0].system_attrs["fixed_params"] == by_number[trials["killed"]].params
    assert queued[0].user_attrs["retry_of"] == trials["killed"]
    # a second process joining finds nothing left to fail
    assert fail_orphaned_trials(study) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_swallowed_by_a_finalizer_is_raised_again_at_the_next_check(
        monkeypatch, capsys, sig: signal.Signals) -> None:
    import search.stopping as launch

    monkeypatch.setattr(launch, "_stop_reason", None)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # what Python prints
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    class Finalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), sig)
            time.sleep(1)  # the handler raises in here, and Python ignores what __del__ raises

    try:
        if sig == signal.SIGINT:
            launch.remember_ctrl_c()
        else:
            launch.stop_cleanly_on(signal.SIGINT, signal.SIGTERM)
        launch.check_stop()  # nothing asked yet
        Finalized()  # collected at once: the stop is raised inside __del__ and lost there
        with pytest.raises(KeyboardInterrupt) as raised:
            launch.check_stop()
        assert str(raised.value) == ("" if sig == signal.SIGINT else "stopped by SIGTERM")
        # the lost one printed nothing ("Exception ignored in ... Traceback" otherwise)
        assert "Traceback" not in capsys.readouterr().err
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    # two "GPUs" on a CPU machine: the backends find none and train on the CPU
    command = [sys.executable, "-m", "search.run", "--study", "digits", "--folds", "2",
               "--set", "model.hidden_layers=1", "--set", "model.units=32",
               "--no-progress", *extra]
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _training(proc: subprocess.Popen, storage: str, timeout: float = 300) -> list:
    """Wait until a worker's trial has trained an epoch; return the trials training then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        running = [t for t in training_trials(storage) if "worker" in t.user_attrs]
        if running:
            return running
    proc.kill()
    pytest.fail(f"no trial started training within {timeout} s:\n" + proc.communicate()[0])


@pytest.mark.slow
def test_two_workers_share_one_study_and_a_killed_worker_leaves_nothing_running(tmp_path) -> None:
    proc = _start(tmp_path, "--trials", "3", "--epochs", "12")
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    victim = _training(proc, storage)[0]
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert "Traceback" not in output.split("exited with code")[0]

    study = optuna.load_study(study_name="digits", storage=storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert "exited with code -9" in killed.user_attrs["fail_reason"]
    assert (f"exited with code -9; its trial(s) [{victim.number}] marked failed and queued "
            f"again; the other workers go on\n") in output
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    workers = {t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}
    assert len(workers) == 2  # both processes ran trials

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert all(r.info.status != "RUNNING" for r in runs)
    numbers = [r.data.tags["optuna.trial_number"] for r in children]
    assert sorted(numbers, key=int) == [str(t.number) for t in trials if "mlflow_run_id" in t.user_attrs]
    assert next(r for r in children if r.data.tags["optuna.trial_number"] == str(victim.number)
                ).info.status == "FAILED"


def _start_long_trials(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """A 2-worker launcher whose trials are training; return it and its storage."""
    # patience as long as the epoch budget: the trials are still training when the signal comes
    proc = _start(tmp_path, "--trials", "4", "--epochs", "25",
                  "--set", "space.patience={type: int, low: 25, high: 25, default: 25}")
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    _training(proc, storage)
    return proc, storage


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_worker_cleanly(tmp_path) -> None:
    proc, storage = _start_long_trials(tmp_path)
    proc.send_signal(signal.SIGTERM)  # to the launcher only, as `kill <pid>` would
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output

    trials = optuna.load_study(study_name="digits", storage=storage).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.user_attrs.get("interrupted")]
    assert stopped and all(t.state == TrialState.FAIL for t in stopped)
    # what waits is each stopped trial's recipe, queued once to train in the next run
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t.number for t in stopped)
    by_number = {t.number: t for t in trials}
    assert all(t.system_attrs["fixed_params"] == by_number[t.user_attrs["retry_of"]].params
               for t in waiting)
    assert {t.user_attrs["fail_reason"] for t in stopped} == {"interrupted (stopped by SIGTERM)"}
    for pid in {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials
                if t.state != TrialState.WAITING}:
        with pytest.raises(ProcessLookupError):  # no worker outlives the launcher
            os.kill(pid, 0)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)


@pytest.mark.slow
def test_workers_of_a_launcher_killed_outright_stop_cleanly_on_their_own(tmp_path) -> None:
    proc, storage = _start_long_trials(tmp_path)
    proc.kill()  # SIGKILL: the launcher can pass nothing on
    proc.communicate(timeout=60)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trials = optuna.load_study(study_name="digits", storage=storage).get_trials()
        if not [t for t in trials if t.state == TrialState.RUNNING]:
            break
        time.sleep(1)
    stopped = [t for t in trials if t.user_attrs.get("interrupted")]
    assert stopped and all(t.state == TrialState.FAIL for t in stopped)
    assert {t.user_attrs["fail_reason"] for t in stopped} == {"interrupted (its launcher ended)"}
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for pid in {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials
                if t.state != TrialState.WAITING}:
        for _ in range(60):  # the worker closes its stores and exits
            if not _runs(pid):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"worker {pid} still runs 30 s after its trial stopped")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert children and all(r.info.status != "RUNNING" for r in children)


def _runs(pid: int) -> bool:
    """Whether ``pid`` runs: an orphan that exited stays a zombie until init reaps it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
