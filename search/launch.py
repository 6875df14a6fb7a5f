"""Start one worker process per GPU slot on this host, watch them, and clean up after any that dies."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

WORKER_ATTR = "worker"
# the worker's PID namespace: pids of this host are comparable only within one (`process_gone`)
WORKER_NS_ATTR = "worker_pid_namespace"


# Why this process was asked to stop ("" for Ctrl-C), once it was; see `check_stop`
_stop_reason: str | None = None
# A worker's launcher (`stop_with_launcher`)
_launcher_pid: int | None = None
LAUNCHER_GONE = "its launcher ended"


def stop_cleanly_on(*signals: signal.Signals) -> None:
    """Make the first of ``signals`` stop this process the way Ctrl-C does, and ignore the rest.

    `kill`, `timeout`, `docker stop` and a batch scheduler's preemption send SIGTERM, which
    would end Python on the spot and leave the running trial RUNNING in Optuna and MLflow.
    Raised as KeyboardInterrupt, it takes the Ctrl-C path instead: the trial is marked failed
    (interrupted) in both stores, the parent run is closed, and a rerun resumes. Once that
    clean stop is under way, more of the same signals are ignored so they cannot cut it short
    (SIGKILL still can). The request is remembered for `check_stop`.
    """
    def handler(signum: int, frame: Any) -> None:
        global _stop_reason
        for other in signals:
            signal.signal(other, signal.SIG_IGN)
        _stop_reason = f"stopped by {signal.Signals(signum).name}"
        raise KeyboardInterrupt(_stop_reason)

    for sig in signals:
        signal.signal(sig, handler)
    _quiet_lost_interrupts()


def remember_ctrl_c() -> None:
    """Python's own Ctrl-C (KeyboardInterrupt, every time), remembered for `check_stop`."""
    def handler(signum: int, frame: Any) -> None:
        global _stop_reason
        if _stop_reason is None:
            _stop_reason = ""
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    _quiet_lost_interrupts()


def _quiet_lost_interrupts() -> None:
    """Print nothing for a KeyboardInterrupt that Python could not raise (`check_stop` will).

    Python reports an exception from a finalizer as "Exception ignored in ..." with a
    traceback: alarming for a Ctrl-C that `check_stop` goes on to handle cleanly.
    """
    default = sys.unraisablehook
    if getattr(default, "regsearch", False):
        return

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            default(unraisable)

    hook.regsearch = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def stop_with_launcher() -> None:
    """Make `check_stop` stop this worker once the process that started it has ended.

    A launcher killed outright (SIGKILL, the out-of-memory killer) cannot pass a stop on, and
    its workers would train on unseen, holding their GPUs, while a rerun starts new ones
    beside them. The parent's end shows as a new parent pid; the worker then stops as for a
    SIGTERM, its trial interrupted ("its launcher ended").
    """
    global _launcher_pid
    _launcher_pid = os.getppid()


def check_stop() -> None:
    """Raise KeyboardInterrupt again if a stop was asked for and something swallowed it.

    Python raises a signal's exception in whatever code runs when it comes. When that is a
    finalizer or a weakref callback (garbage collection during training), Python prints
    "Exception ignored" and carries on: the stop is lost, and the trial trains to its end
    (seen once in the Ctrl-C test: a KeyboardInterrupt inside SQLAlchemy's registry cleanup).
    The trial loop calls this before every batch and every trial, so a lost stop is caught
    within one batch. A worker whose launcher has gone stops here too (`stop_with_launcher`).
    """
    global _stop_reason
    if _stop_reason is None and _launcher_pid is not None and os.getppid() != _launcher_pid:
        _stop_reason = LAUNCHER_GONE
    if _stop_reason is not None:
        raise KeyboardInterrupt(_stop_reason)


def worker_id() -> str:
    """``host:pid`` of this process: recorded on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def this_process() -> dict[str, str]:
    """What a trial (user attributes) or a baseline records of the process running it, for
    `process_gone`: ``{WORKER_ATTR: host:pid, WORKER_NS_ATTR: its PID namespace}``."""
    return {WORKER_ATTR: worker_id(), WORKER_NS_ATTR: pid_namespace()}


def killed_reason(record: Mapping[str, Any]) -> str:
    """Why a trial or baseline whose process `process_gone` was ended: the failure's reason."""
    return f"its worker process {record.get(WORKER_ATTR)} ended without recording an outcome (killed)"


def pid_namespace() -> str:
    """This process's PID namespace (Linux: ``pid:[4026531836]``), "" where there is none.

    Containers on one host can share its hostname (host networking) and still number their
    processes apart; a pid from another container's namespace says nothing here.
    """
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def gpu_inventory() -> tuple[list[str] | None, str]:
    """The GPU ids this process may use and where that list comes from.

    ``CUDA_VISIBLE_DEVICES`` if set (a scheduler's allocation), else the GPUs nvidia-smi
    lists; None where neither can tell (no variable, no nvidia-smi).
    """
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        ids = [g.strip() for g in declared.split(",") if g.strip() and g.strip() != "-1"]
        return ids, f"CUDA_VISIBLE_DEVICES={declared!r}"
    if shutil.which("nvidia-smi") is None:
        return None, "nvidia-smi is not installed and CUDA_VISIBLE_DEVICES is not set"
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"nvidia-smi -L failed ({exc})"
    ids = [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")]
    return ids, "nvidia-smi -L"


def visible_gpus() -> list[str]:
    """GPU ids this process may use (`gpu_inventory`); none where nothing lists any."""
    return gpu_inventory()[0] or []


@dataclass(frozen=True)
class WorkerPlan:
    """Which worker processes to start: ``per_gpu`` on each GPU of ``gpus`` (one on a CPU host).

    ``note`` is a line for the user about a setting that did not apply as given.
    """

    gpus: tuple[str, ...]
    per_gpu: int = 1
    note: str | None = None

    @property
    def n_workers(self) -> int:
        return max(1, len(self.gpus) * self.per_gpu)

    def environments(self) -> list[dict[str, str]]:
        """The environment of each worker: its GPU, and memory shared with its neighbours."""
        if not self.gpus:
            return [{}]
        out = []
        for gpu in self.gpus:
            for _ in range(self.per_gpu):
                env = {"CUDA_VISIBLE_DEVICES": gpu}
                if self.per_gpu > 1:
                    # several processes on one GPU: none may take all of its memory up front
                    env.update({
                        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / self.per_gpu:.3f}",
                        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
                    })
                out.append(env)
        return out


def plan_workers(gpus: str | None, per_gpu: int) -> WorkerPlan:
    """Return the plan for ``--gpus`` (``"0,1"``, or None for every visible GPU).

    The GPUs chosen must be among those this process may use (`gpu_inventory`): a GPU outside
    a scheduler's ``CUDA_VISIBLE_DEVICES`` belongs to someone else, and on a host without one
    the run would silently train on the CPU. Where nothing lists the GPUs, the plan says so in
    its ``note`` and trusts ``--gpus``.

    Raises:
        ValueError: ``per_gpu`` < 1, a GPU id that is not an integer, or a GPU not visible here.
    """
    if per_gpu < 1:
        raise ValueError(f"'--workers-per-gpu'={per_gpu} is out of range; expected an integer >= 1.")
    visible, source = gpu_inventory()
    if gpus is None:
        note = None
        if not visible and per_gpu > 1:
            note = (f"no GPU visible ({source}): one worker on the CPU; --workers-per-gpu "
                    f"counts workers per GPU")
        return WorkerPlan(tuple(visible or ()), per_gpu, note)
    chosen = tuple(g.strip() for g in gpus.split(",") if g.strip())
    bad = [g for g in chosen if not g.isdigit()]
    if bad or not chosen:
        what = f"{bad[0]!r} is not a GPU index" if bad else "no GPU index"
        raise ValueError(f"'--gpus'={gpus!r}: {what}; expected e.g. 0,1,3.")
    if visible is None:
        return WorkerPlan(chosen, per_gpu, f"cannot check --gpus {gpus} ({source}): using it as given")
    missing = [g for g in chosen if g not in visible]
    if missing:
        allowed = (f"the GPUs visible here are {','.join(visible)} ({source})" if visible else
                   f"no GPU is visible here ({source}); leave out --gpus to run one worker "
                   f"on the CPU")
        raise ValueError(f"'--gpus'={gpus!r}: GPU {missing[0]} is not visible here; {allowed}.")
    return WorkerPlan(chosen, per_gpu)


def start_workers(argv: Sequence[str], plan: WorkerPlan, log_dir: Path) -> list[subprocess.Popen]:
    """Start ``python -m search.run <argv> --worker-index i`` once per slot of the plan.

    Each worker's output goes to ``log_dir/worker-<i>.log``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for index, extra in enumerate(plan.environments()):
        log = open(log_dir / f"worker-{index}.log", "a")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "search.run", *argv, "--worker-index", str(index)],
            env={**os.environ, **extra, "PYTHONUNBUFFERED": "1"},
            stdout=log, stderr=subprocess.STDOUT,
        ))
    return procs


def supervise(procs: list[subprocess.Popen], *, on_tick: Callable[[], None],
              on_death: Callable[[subprocess.Popen], None], interval: float = 1.0) -> bool:
    """Wait for every worker; call ``on_tick`` periodically and ``on_death`` for a crashed one.

    A worker that exits with an error does not stop the others. Returns True when the wait was
    interrupted: Ctrl-C on a terminal reaches the workers itself; a SIGTERM sent to this process
    alone is passed on to them. Either way they end their trial cleanly and exit.
    """
    pending = set(range(len(procs)))
    try:
        while pending:
            time.sleep(interval)
            for i in sorted(pending):
                code = procs[i].poll()
                if code is None:
                    continue
                pending.discard(i)
                if code not in (0, 130):
                    on_death(procs[i])
            on_tick()
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # ignored by a worker already stopping
        for p in procs:
            try:
                p.wait(timeout=120)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                p.kill()
        on_tick()
        return True
    return False


def fail_trials_of(study: Any, worker: str, reason: str,
                   on_failed: Callable[[Any], None] | None = None) -> list[int]:
    """Mark the RUNNING trials of a dead ``worker`` failed (and queue one retry of each)."""
    return _fail_running(
        study, lambda trial: reason if trial.user_attrs.get(WORKER_ATTR) == worker else None,
        on_failed)


def fail_orphaned_trials(study: Any, on_failed: Callable[[Any], None] | None = None) -> list[int]:
    """Fail the RUNNING trials whose worker was a process of this host that no longer runs.

    A process killed outright (SIGKILL, the kernel's out-of-memory killer, a crash of the
    machine) records no outcome, and its trial stays RUNNING: in Optuna until another worker
    sees its heartbeat stale, minutes later, and forever on a journal file, which has no
    heartbeat. On the host that ran it, a process table lookup tells at once. Called when a
    process joins the study, so no trial of this process is running yet: a trial that names
    this very pid comes from an earlier process that had it. Trials of live processes, and of
    other hosts, are left to their workers and to the heartbeat.
    """
    return _fail_running(
        study, lambda trial: killed_reason(trial.user_attrs)
        if process_gone(trial.user_attrs) else None, on_failed)


def process_gone(record: Mapping[str, Any]) -> bool:
    """True when ``record`` (`this_process` of some process) names a process of this host that
    no longer runs, or this process itself (which, joining the study, is not running that
    trial). False whenever that cannot be told: another host, another PID namespace, or a
    record without one."""
    host, _, pid = str(record.get(WORKER_ATTR, "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() \
            or record.get(WORKER_NS_ATTR) != pid_namespace():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def _fail_running(study: Any, reason_of: Callable[[Any], str | None],
                  on_failed: Callable[[Any], None] | None) -> list[int]:
    """Fail each RUNNING trial that ``reason_of`` gives a reason for; queue one retry of each.

    Safe against another process failing the same trial at the same moment (two workers
    joining together, or the heartbeat): the storage lets one of them finish it, and only
    that one records the reason's consequences.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = reason_of(trial)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process finished it first
        frozen = storage.get_trial(trial._trial_id)
        if "retry_of" not in trial.user_attrs:  # one retry, like the heartbeat path
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        if on_failed is not None:
            on_failed(frozen)
        failed.append(trial.number)
    return failed
