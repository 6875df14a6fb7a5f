"""What a study is recorded in: the `Tracker` interface, the run states it knows, a lost store.

`search.mlflow_tracker.MlflowTracker` implements it; the tests use an in-memory one. A tracker
knows runs (a study's parent run, one child run per trial or baseline), never Optuna: the code
that ties trials to runs (`search.recording`) passes it plain run ids, states and reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Protocol, runtime_checkable

# How a child run ended: an Optuna trial's state, or INTERRUPTED (a stop that was not the
# recipe's fault: Ctrl-C, SIGTERM, a lost store; Optuna records it as FAIL, not counted).
RunState = Literal["COMPLETE", "PRUNED", "FAIL", "INTERRUPTED"]
# How a study's parent run ended
ParentStatus = Literal["FINISHED", "KILLED"]


# How `search.stores.lost_cause`'s words begin for a store out of reach, one kept locked by
# another process, and a damaged one (`StoreLost.advice` reads them)
ANSWERING = "stopped answering"
LOCKED = "was locked by another process"
DAMAGED = "is damaged"
# and what they end with for a store file that is no longer there
GONE = ("was deleted or moved away", "is gone")


class StoreLost(Exception):
    """A store of the study failed for a reason of its own, not of the recipe being trained.

    Out of reach, out of disk space, read-only, damaged: whatever a store says about itself
    (`search.stores.lost_cause`). The study records every trial, so it does not go on without
    its stores: the running trial does not count against the budget, its recipe is queued
    again, and the run stops with `search.stores.EXIT_STORE_LOST`; the same command resumes
    once the store is back.

    Args:
        store: which store, e.g. ``MLflow at sqlite:///mlruns/mlflow.db`` (password hidden).
        words: what happened to it (`search.stores.lost_cause`), e.g.
            ``failed (database or disk is full)``.
    """

    def __init__(self, store: str, words: str = "") -> None:
        super().__init__(f"{store} {words}".strip())
        self.store, self.words = store, words

    @property
    def advice(self) -> str:
        """What becomes of the running trial, and what to do: the end of the line a run that
        stopped so prints after ``str(self)``."""
        if self.words.startswith(DAMAGED):
            return ("a damaged database cannot be resumed: restore the file from a backup and "
                    "run the same command again, or move it aside to start that store anew "
                    "(what it held is lost)")
        if self.words.rstrip(")").endswith(GONE):
            return ("put the file back (or restore it from a backup) and run the same command "
                    "again: the running trial does not count against the budget and its recipe "
                    "is trained again; run without it, that store starts anew (what it held is "
                    "lost)")
        when = ("once it answers" if self.words.startswith(ANSWERING) else
                "once nothing else holds it (close what does: a sqlite3 shell inside a "
                "transaction, an mlflow ui or mlflow db upgrade migrating it)"
                if self.words.startswith(LOCKED) else "once that is fixed")
        return ("the running trial does not count against the budget and its recipe is trained "
                "again (a trial left running is failed and queued by the next run that opens the "
                "study: at once on this host, after the heartbeat's grace period on another): "
                f"run the same command again {when}")


class StorageLost(StoreLost):
    """The Optuna storage failed (`StoreLost`); `search.study.open_storage` raises it."""


class TrackingLost(StoreLost):
    """The tracking store failed in the middle of a study (`StoreLost`).

    Optuna still answers, so the running trial is ended there like an interrupted one (it
    does not count against the budget, its recipe is queued again) and the run stops.
    """


@runtime_checkable
class Tracker(Protocol):
    """Where a study's runs are recorded. Every method may raise `TrackingLost`."""

    def open_parent(self, study_name: str, settings: Mapping[str, Any], *,
                    run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        """Return the study's parent run: ``run_id`` reopened if it still exists, else a new
        run with ``settings`` recorded once (write-once) and ``tags`` (changeable)."""

    def discard_parent(self, run_id: str) -> None:
        """Delete a parent run that lost the race to be the study's (`search.driver`)."""

    def start_run(self, parent_run_id: str, name: str, params: Mapping[str, Any],
                  tags: Mapping[str, str]) -> str:
        """Open a child run of ``parent_run_id`` with ``params``; return its id."""

    def log_fold(self, run_id: str, fold: int, history: Mapping[str, Iterable[float]]) -> None:
        """Record one fold's per-epoch curves (``{metric: [value per epoch]}``)."""

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def log_artifacts(self, run_id: str, paths: Iterable[Path],
                      artifact_path: str | None = None) -> None: ...

    def log_dict(self, run_id: str, values: Mapping[str, Any], name: str) -> None:
        """Record ``values`` as a JSON file ``name`` of the run."""

    def finish_run(self, run_id: str, state: RunState, *, reason: str | None = None) -> None:
        """Close a child run with how it ended and, for a failure, why."""

    def finish_parent(self, run_id: str, status: ParentStatus = "FINISHED") -> None: ...

    def running_runs(self, study_name: str) -> list[str]:
        """The ids of the study's runs still open (parent and children)."""

    def experiment_of(self, run_id: str) -> str:
        """The id of the experiment (one per study) that holds ``run_id``."""

    def set_experiment_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Tag the experiment that holds ``run_id`` (`search.links` shares a view that way)."""
