"""An in-memory `search.tracking.Tracker`: what the objective, the baselines and the report
record, without a store."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from search.tracking import ParentStatus, RunState, TrackingLost


@dataclass
class Run:
    name: str
    parent: str | None
    params: dict[str, str]
    tags: dict[str, str]
    status: str = "RUNNING"  # RUNNING, then a RunState (child) or a ParentStatus (parent)
    reason: str | None = None
    folds: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    dicts: dict[str, dict] = field(default_factory=dict)


class MemoryTracker:
    """Runs kept in a dict. ``lose_at`` names a method that raises `TrackingLost`, as a store
    that stopped answering would."""

    def __init__(self, lose_at: str | None = None) -> None:
        self.runs: dict[str, Run] = {}
        self.studies: dict[str, list[str]] = {}
        self.experiment_tags: dict[str, str] = {}
        self.lose_at = lose_at
        self._ids = itertools.count()

    def _check(self, method: str) -> None:
        if method == self.lose_at:
            raise TrackingLost("the test's tracker", "stopped answering")

    def _new(self, run: Run) -> str:
        run_id = f"run-{next(self._ids)}"
        self.runs[run_id] = run
        return run_id

    def children(self, parent: str) -> list[Run]:
        return [r for r in self.runs.values() if r.parent == parent]

    def open_parent(self, study_name: str, settings: Mapping[str, Any], *,
                    run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        self._check("open_parent")
        if run_id in self.runs:
            self.runs[run_id].status = "RUNNING"
            self.runs[run_id].tags.update(tags or {})
            return run_id
        run_id = self._new(Run(study_name, None, {k: str(v) for k, v in settings.items()},
                               dict(tags or {})))
        self.studies.setdefault(study_name, []).append(run_id)
        return run_id

    def discard_parent(self, run_id: str) -> None:
        del self.runs[run_id]

    def start_run(self, parent_run_id: str, name: str, params: Mapping[str, Any],
                  tags: Mapping[str, str]) -> str:
        self._check("start_run")
        run_id = self._new(Run(name, parent_run_id, {k: str(v) for k, v in params.items()},
                               dict(tags)))
        for study, ids in self.studies.items():
            if parent_run_id in ids:
                ids.append(run_id)
        return run_id

    def log_fold(self, run_id: str, fold: int, history: Mapping[str, Iterable[float]]) -> None:
        self._check("log_fold")
        self.runs[run_id].folds[fold] = {k: list(v) for k, v in history.items()}

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self._check("log_metrics")
        self.runs[run_id].metrics.update({k: float(v) for k, v in metrics.items()})

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.runs[run_id].tags.update({k: str(v) for k, v in tags.items()})

    def log_artifacts(self, run_id: str, paths: Iterable[Path],
                      artifact_path: str | None = None) -> None:
        prefix = f"{artifact_path}/" if artifact_path else ""
        self.runs[run_id].artifacts += [prefix + Path(p).name for p in paths]

    def log_dict(self, run_id: str, values: Mapping[str, Any], name: str) -> None:
        self.runs[run_id].dicts[name] = dict(values)

    def finish_run(self, run_id: str, state: RunState, *, reason: str | None = None) -> None:
        self._check("finish_run")
        self.runs[run_id].status, self.runs[run_id].reason = state, reason

    def finish_parent(self, run_id: str, status: ParentStatus = "FINISHED") -> None:
        self.runs[run_id].status = status

    def running_runs(self, study_name: str) -> list[str]:
        return [i for i in self.studies.get(study_name, []) if self.runs[i].status == "RUNNING"]

    def experiment_of(self, run_id: str) -> str:
        return "0"

    def set_experiment_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.experiment_tags.update(tags)
