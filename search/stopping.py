"""Stop this process cleanly: signals raised as Ctrl-C, a lost stop raised again, a launcher gone."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

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


def as_stop(exc: BaseException) -> KeyboardInterrupt | None:
    """The stop that ``exc`` stands for, or None when it is the code's own failure.

    A KeyboardInterrupt is one. So is any other exception raised after a stop was asked for:
    Python raises the signal's exception in whatever code runs when it comes, and a library
    can turn it into its own error on the way out (a C extension's callback, a storage
    driver), which would record a stopped trial as a failed recipe and count it against the
    budget. After a stop, no failure is the recipe's.
    """
    if isinstance(exc, KeyboardInterrupt):
        return exc
    if _stop_reason is not None:
        return KeyboardInterrupt(_stop_reason)
    return None


def trainer_hooks(progress: Any = None) -> dict[str, Any]:
    """The trainer's ``on_epoch`` and ``on_batch`` hooks: each raises a stop that was asked for
    and lost (`check_stop`), and feeds ``progress`` (a `search.progress.StudyProgress`) when
    there is one."""

    def on_epoch(metrics: Any) -> None:
        check_stop()
        if progress is not None:
            progress.show(metrics)

    def on_batch(fold: int, epoch: int, fraction: float) -> None:
        check_stop()
        if progress is not None:
            progress.batch(fold, epoch, fraction)

    return {"on_epoch": on_epoch, "on_batch": on_batch}
