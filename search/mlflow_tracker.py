"""The MLflow `search.tracking.Tracker`: one experiment per study, one parent run, a child run per trial.

It talks to the store through `MlflowClient` and run ids, never through MLflow's global
"active run", so several worker processes can share one parent run. (`search.stores` imports
mlflow too, only to tell a store that cannot be opened from one that answers.)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import IntegrityError

from search.names import (
    FAIL_REASON_TAG,
    INTERRUPTED_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STUDY_NAME_TAG,
    TRIAL_STATE_TAG,
)
from search.redact import redact_url
from search.stores import (
    check_store,
    check_tracking_server,
    MLFLOW_SQLITE_WAIT_SECONDS,
    lost_cause,
    retry_schema_race,
    schema_lock,
    store_error,
)
from search.tracking import ParentStatus, RunState, TrackingLost

# Optuna's trial states, as MLflow run statuses. A pruned trial is a normal outcome of a
# search, not a fault: FINISHED, told apart by its tag `optuna.trial_state=PRUNED` and its
# name (`PRUNED_SUFFIX`). MLflow's UI draws KILLED and FAILED alike, with a red cross, which
# made most trials of a study look broken; only a stop that was not the recipe's doing
# (Ctrl-C, SIGTERM, a lost store) stays KILLED.
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}
# appended to a pruned trial's run name, so it reads as pruned wherever MLflow lists runs
PRUNED_SUFFIX = " (pruned)"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return out


_TAG_RACE_ATTEMPTS = 4


# How a unique-key violation reads once a tracking server has turned it into its answer
# (PostgreSQL, SQLite, MySQL)
_DUPLICATE_KEY_WORDS = ("duplicate key value violates unique constraint",
                        "UNIQUE constraint failed", "Duplicate entry")


def _duplicate_key(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the database's unique-key violation,
    raised here (a database store) or answered by a tracking server (its message)."""
    while exc is not None:
        if isinstance(exc, IntegrityError) or any(w in str(exc) for w in _DUPLICATE_KEY_WORDS):
            return True
        exc = exc.__cause__
    return False


class _LosableClient:
    """An `MlflowClient` whose calls raise `TrackingLost` when its store fails: out of reach,
    or its database or artifact files cannot be written (`search.stores.lost_cause`)."""

    def __init__(self, client: MlflowClient, uri: str) -> None:
        self._client, self._uri = client, uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                # the artifacts it writes are files of the store too
                words = lost_cause(exc, self._uri, files=True, wait=MLFLOW_SQLITE_WAIT_SECONDS)
                if words is None:
                    raise
                raise TrackingLost(f"MLflow at {redact_url(self._uri)}", words) from exc

        return call


class MlflowTracker:
    """The MLflow store of one study (`search.tracking.Tracker`).

    Args:
        tracking_uri: MLflow tracking URI; a local ``sqlite:///`` store keeps its artifacts in
            ``artifacts/`` beside the database file.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root: str | None = None
        if tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri.removeprefix("sqlite:///"))  # its folder: `schema_lock`
            self.artifact_root = (db.parent / "artifacts").resolve().as_uri()
        if tracking_uri.startswith(("http://", "https://")):
            check_tracking_server(tracking_uri)
        check_store("--tracking-uri", tracking_uri)  # a local file: before anything is written
        # MLflow prints a link to every run it ends on a tracking server, with the URL's
        # password in it, and between the progress bars: regsearch prints one link itself.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        try:
            with schema_lock(tracking_uri):
                self.client = retry_schema_race(lambda: MlflowClient(tracking_uri))
                self.client.search_experiments(max_results=1)  # opens the store: fail here
        except Exception as exc:  # noqa: BLE001 (a bad URI becomes one line; the rest re-raised)
            raise (store_error("--tracking-uri", tracking_uri, exc) or exc) from exc
        self.client = _LosableClient(self.client, tracking_uri)

    def experiment_id(self, name: str) -> str:
        """Return the id of experiment ``name``, creating it (and restoring it if deleted).

        Workers that start together may all find no experiment: the store keeps one, the
        others are refused and take the one it kept.
        """
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = f"{self.artifact_root}/{name}" if self.artifact_root else None
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None or exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        if experiment.lifecycle_stage == "deleted":
            try:
                self.client.restore_experiment(experiment.experiment_id)
            except MlflowException:  # another worker restored it first
                if self.client.get_experiment(experiment.experiment_id).lifecycle_stage != "active":
                    raise
        return experiment.experiment_id

    def open_parent(
        self,
        study_name: str,
        settings: Mapping[str, Any],
        *,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Return the study's parent run, reopened if ``run_id`` still exists, else a new one.

        The settings that a resumed study must keep are logged as params (MLflow params are
        write-once); anything that may change between invocations goes in ``tags``.
        """
        experiment_id = self.experiment_id(study_name)
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
            except Exception:  # the run was deleted from the store: start a new parent
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.client.update_run(run_id, status="RUNNING")
                self._set_tags(run_id, tags or {})
                return run_id
        run = self.client.create_run(
            experiment_id,
            run_name=study_name,
            tags={ROLE_TAG: "study", STUDY_NAME_TAG: study_name, **(tags or {})},
        )
        params = [Param(k, v[:6000]) for k, v in _flatten(settings).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        return run.info.run_id

    def discard_parent(self, run_id: str) -> None:
        self.finish_parent(run_id, status="KILLED")
        self.client.delete_run(run_id)

    def start_run(self, parent_run_id: str, name: str, params: Mapping[str, Any],
                  tags: Mapping[str, str]) -> str:
        """Open a child run of ``parent_run_id`` (tag ``mlflow.parentRunId``); return its id."""
        parent = self.client.get_run(parent_run_id)
        run = self.client.create_run(parent.info.experiment_id, run_name=name,
                                     tags={PARENT_TAG: parent_run_id, **tags})
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def log_fold(self, run_id: str, fold: int, history: Mapping[str, Iterable[float]]) -> None:
        """Log one fold's per-epoch curves as ``fold_<i>/<metric>`` with ``step = epoch``."""
        now = _now_ms()
        metrics = [
            Metric(f"fold_{fold}/{name}", float(value), now, epoch)
            for name, values in history.items()
            for epoch, value in enumerate(values)
        ]
        for start in range(0, len(metrics), 900):
            self.client.log_batch(run_id, metrics=metrics[start:start + 900])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = _now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._set_tags(run_id, tags)

    def finish_run(self, run_id: str, state: RunState, *, reason: str | None = None) -> None:
        """Close a child run: its status (`STATUS`), tag ``optuna.trial_state`` (FAIL for an
        interrupted one, as Optuna records it, with tag ``interrupted``) and ``fail_reason``;
        a pruned run's name gets `PRUNED_SUFFIX`."""
        tags = {TRIAL_STATE_TAG: "FAIL" if state == "INTERRUPTED" else state}
        if reason:
            tags[FAIL_REASON_TAG] = reason[:4000]
        if state == "INTERRUPTED":
            tags[INTERRUPTED_TAG] = "true"
        self._set_tags(run_id, tags)
        if state == "PRUNED":
            name = self.client.get_run(run_id).info.run_name or ""
            if not name.endswith(PRUNED_SUFFIX):
                self.client.update_run(run_id, name=name + PRUNED_SUFFIX)
        self.client.set_terminated(run_id, status=STATUS[state])

    def running_runs(self, study_name: str) -> list[str]:
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None:
            return []
        running = self.client.search_runs([experiment.experiment_id],
                                          filter_string="attributes.status = 'RUNNING'",
                                          max_results=5000)
        return [run.info.run_id for run in running]

    def finish_parent(self, run_id: str, status: ParentStatus = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def experiment_of(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.experiment_id

    def set_experiment_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on the experiment of ``run_id``, as every worker of a study does at start.

        MLflow writes an experiment tag as read-then-insert: workers on several hosts setting
        the same new tag at one moment all insert, and on PostgreSQL all but one fail with a
        duplicate key. A tag that already holds its value is left alone, and a lost race is
        written again (then as an update).
        """
        experiment = self.experiment_of(run_id)
        held = self.client.get_experiment(experiment).tags
        for key, value in tags.items():
            if held.get(key) == value:
                continue
            for attempt in range(_TAG_RACE_ATTEMPTS):
                try:
                    self.client.set_experiment_tag(experiment, key, value)
                    break
                except MlflowException as exc:
                    if attempt == _TAG_RACE_ATTEMPTS - 1 or not _duplicate_key(exc):
                        raise

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, values: Mapping[str, Any], name: str) -> None:
        self.client.log_dict(run_id, dict(values), name)

    def _set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

