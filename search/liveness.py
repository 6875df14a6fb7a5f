"""Which process runs a trial, whether it still runs, and failing the trials of one that died."""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search.names import (
    FAIL_REASON_ATTR,
    INTERRUPTED_ATTR,
    RETRY_OF_ATTR,
    WORKER_ATTR,
    WORKER_NS_ATTR,
    WORKER_START_ATTR,
)


def worker_id() -> str:
    """``host:pid`` of this process: recorded on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def this_process() -> dict[str, str]:
    """What a trial (user attributes) or a baseline records of the process running it, for
    `process_gone`: its ``host:pid``, PID namespace and start time."""
    return {WORKER_ATTR: worker_id(), WORKER_NS_ATTR: pid_namespace(),
            WORKER_START_ATTR: _started(os.getpid())}


def killed_reason(record: Mapping[str, Any]) -> str:
    """Why a trial or baseline whose process `process_gone` was ended: the failure's reason.

    A process that stopped because a store failed left word of it (`record_exit`);
    any other ended without a word: killed (SIGKILL, the out-of-memory killer) or crashed.
    """
    worker = record.get(WORKER_ATTR)
    cause = exit_cause(record)
    if cause is not None:
        return f"its worker process {worker} stopped: {cause}"
    return f"its worker process {worker} ended without recording an outcome (killed)"


def record_exit(cause: str) -> None:
    """Leave word on this host of why this process stops without recording its trial's end.

    A store that failed cannot take the trial's outcome; the next run that opens
    the study fails the trial on this process's behalf (`fail_orphaned_trials`) and gives
    this cause as the reason, instead of "killed". Best effort: nothing is raised.
    """
    try:
        path = _exit_file(this_process())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cause)
    except OSError:
        pass


def exit_cause(record: Mapping[str, Any]) -> str | None:
    """The cause `record_exit` left for the process ``record`` names (`this_process`), if any."""
    try:
        return _exit_file(record).read_text() or None
    except OSError:
        return None


def _exit_file(record: Mapping[str, Any]) -> Path:
    # one file per process: host, pid, PID namespace and start time name it (pids are reused)
    key = "|".join(str(record.get(k, "")) for k in (WORKER_ATTR, WORKER_NS_ATTR, WORKER_START_ATTR))
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "regsearch-exits" / name


def _started(pid: int) -> str:
    """Process ``pid``'s start time (clock ticks after boot, /proc), "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22; the name may hold spaces


def pid_namespace() -> str:
    """This process's PID namespace (Linux: ``pid:[4026531836]``), "" where there is none.

    Containers on one host can share its hostname (host networking) and still number their
    processes apart; a pid from another container's namespace says nothing here.
    """
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


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
    # the pid runs, but a later process may have been given it
    started = record.get(WORKER_START_ATTR)
    return bool(started) and _started(int(pid)) not in ("", started)


def _fail_running(study: Any, reason_of: Callable[[Any], str | None],
                  on_failed: Callable[[Any], None] | None) -> list[int]:
    """Fail each RUNNING trial that ``reason_of`` gives a reason for, and queue its recipe again.

    A trial whose process died is not its recipe's fault, so its recipe is queued once more
    and the failed trial no longer counts against the budget (`search.study.count_trials`).
    A retry that dies again is not queued a third time, and counts (a recipe that takes its
    process down, out of memory say, would otherwise be retried for ever), unless its process
    left word that a store failed (`record_exit`): that is never the recipe's fault,
    and the trial is marked ``interrupted`` like one stopped by Ctrl-C (its MLflow run KILLED).

    Safe against another process failing the same trial at the same moment (two workers
    joining together, or the heartbeat): the storage lets one of them finish it, and only
    that one records the reason's consequences.
    """
    storage = study._storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = reason_of(trial)
        if reason is None:
            continue
        lost_store = exit_cause(trial.user_attrs) is not None
        if lost_store:  # what happened, not only that the process ended
            reason = killed_reason(trial.user_attrs)
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            if lost_store:
                storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process finished it first
        frozen = storage.get_trial(trial._trial_id)
        if RETRY_OF_ATTR not in trial.user_attrs or lost_store:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
        if on_failed is not None:
            on_failed(frozen)
        failed.append(trial.number)
    return failed
