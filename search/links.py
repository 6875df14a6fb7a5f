"""Where to look once a study ran: the links into MLflow's UI that a run prints at its end.

What a link into MLflow 3's UI can carry, read from the UI's own code (the minified
JavaScript in the wheel, ``mlflow/server/js/build``; checked on 3.17.2):

- ``/#/experiments/<id>/runs`` is the runs page; without it an experiment opens on the GenAI
  "Overview". ``workflowType=machine_learning`` switches the sidebar to "Model training", and
  an experiment's own page then opens on its runs (the UI otherwise keeps the last choice in
  the browser's local storage, GenAI at first). No experiment tag changes the landing page
  (``mlflow.experimentKind`` did not).
- ``searchFilter``, ``orderByKey``, ``orderByAsc``, ``startTime``, ``lifecycleFilter``,
  ``datasetsFilter`` and ``modelVersionFilter`` set the search and the sort; nothing in a URL
  chooses columns. A search that leaves out the parent run lists its children flat, not
  folded under it.
- ``viewStateShareKey=<key>`` loads a whole view (search, sort, shown columns, column order,
  charts, runs shown in charts) from the experiment tag ``mlflow.sharedViewState.<key>``, a
  JSON object; a URL that also carries a search parameter ignores it. Which parents are
  expanded and pinned runs are never shared. That is what `trials_link` uses.
- ``compareRunsMode=TABLE|CHART|ARTIFACT`` picks the runs page's view.
- ``/#/compare-runs?runs=[...]&experiments=[...]`` compares runs: its parallel-coordinates
  plot starts with the first three parameters that differ (in alphabetical order) and the
  first metric the runs share, in the order the store returns it, which is the order metrics
  were first logged: `search.recording` logs ``cv_val_loss`` first for that reason.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote, urlencode

from search.config import default_storage
from search.names import (
    AT_CHANCE_TAG,
    BASELINES_ATTR,
    CV_ACCURACY,
    CV_LOSS,
    CV_LOSS_STD,
    FAIL_REASON_TAG,
    GAP,
    ROLE_TAG,
    RUN_ID_ATTR,
    SHARED_VIEW_KEY,
    SHARED_VIEW_TAG,
    TRIAL_STATE_TAG,
)
from search.redact import redact_url
from search.selection import ranked_trials

# where `mlflow ui` serves unless told otherwise
LOCAL_UI = "http://127.0.0.1:5000"
# trials in the compare link, beside the baselines
N_COMPARED = 5
# the score and its parts, in the order the trials view shows them
SCORE_METRICS = (CV_LOSS, CV_LOSS_STD)
OTHER_METRICS = (CV_ACCURACY, GAP)

_SECTION = "regsearch-section"  # the trials view's one chart section


def ui_address(tracking_uri: str) -> str:
    """The address of MLflow's UI for a tracking URI: a server's own (without user name and
    password: the browser asks for them), else where ``mlflow ui`` serves by default."""
    if tracking_uri.startswith(("http://", "https://")):
        return re.sub(r"^(https?://)[^/@]*@", r"\1", tracking_uri).rstrip("/")
    return LOCAL_UI


def ui_command(tracking_uri: str) -> str | None:
    """The ``mlflow ui`` command that serves a local store; None for a tracking server."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {redact_url(tracking_uri)}"


def trials_view(param_names: Sequence[str], n_folds: int) -> dict[str, Any]:
    """The runs-page view of a study that `trials_link` opens (MLflow's shared view state).

    Every trial and baseline, flat (the parent run left out), best ``cv_val_loss`` first, with
    the columns a comparison needs: outcome and failure reason, the score, each fold's best
    validation loss (they average to the score), accuracy, gap, and the recipe. The charts
    view starts with a parallel-coordinates chart of the recipe against ``cv_val_loss``, over
    the ten runs at the top of the table.
    """
    metrics = [*SCORE_METRICS, *(f"fold_{k}/best_val_loss" for k in range(n_folds)),
               *OTHER_METRICS]
    # at_chance: "true" on a recipe that never beat chance level (never selected)
    columns = ([f"tags.`{TRIAL_STATE_TAG}`", f"tags.`{AT_CHANCE_TAG}`", f"tags.`{FAIL_REASON_TAG}`"]
               + [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in param_names])
    parallel = {"uuid": "regsearch-parallel", "type": "PARALLEL", "runsCountToCompare": 10,
                "metricSectionId": _SECTION, "deleted": False, "isGenerated": False,
                "selectedParams": list(param_names), "selectedMetrics": [CV_LOSS],
                "showAllRuns": False}
    # a chart with a metric after the parallel one keeps it first: MLflow inserts the charts it
    # adds for the other metrics before the first chart whose metric sorts after theirs, or
    # before the last chart when there is none
    score = {"uuid": "regsearch-score", "type": "BAR", "runsCountToCompare": 10,
             "metricSectionId": _SECTION, "deleted": False, "isGenerated": True,
             "metricKey": CV_LOSS, "displayName": CV_LOSS}
    return {
        "searchFilter": f"tags.`{ROLE_TAG}` != 'study'",
        "orderByKey": "metrics.`cv_val_loss`",
        "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": columns,
        "runsHiddenMode": "FIRST_10_RUNS",
        "compareRunCharts": [parallel, score],
        "compareRunSections": [{"uuid": _SECTION, "name": "Model metrics", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": True}],
        "isAccordionReordered": True,  # the chart's section first, the fold sections after
    }


def trials_view_tags(param_names: Sequence[str], n_folds: int) -> dict[str, str]:
    """The experiment tag that holds `trials_view` (set through
    `search.tracking.Tracker.set_experiment_tags`)."""
    return {SHARED_VIEW_TAG: json.dumps(trials_view(param_names, n_folds),
                                        separators=(",", ":"))}


def trials_link(address: str, experiment_id: str) -> str:
    """The runs page of a study's experiment in `trials_view`."""
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": SHARED_VIEW_KEY})
    return f"{address}/#/experiments/{experiment_id}/runs?{query}"


def compare_link(address: str, experiment_id: str, run_ids: Iterable[str]) -> str:
    """MLflow's compare page for ``run_ids`` (in that order: the first run's columns first)."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    experiments = quote(json.dumps([experiment_id]), safe="")
    return (f"{address}/#/compare-runs?runs={runs}&experiments={experiments}"
            "&workflowType=machine_learning")


def run_link(address: str, experiment_id: str, run_id: str) -> str:
    return f"{address}/#/experiments/{experiment_id}/runs/{run_id}"


def compared_runs(study: Any, k: int = N_COMPARED) -> tuple[list[str], int, int]:
    """The runs the compare link opens: the ``k`` best trials that beat chance level
    (`search.selection`), then the baselines that have a score.

    Returns:
        ``(run ids, number of trials, number of baselines)``.
    """
    complete = [t for t in ranked_trials(study) if t.user_attrs.get(RUN_ID_ATTR)]
    trials = [t.user_attrs[RUN_ID_ATTR] for t in complete[:k]]
    baselines = [outcome[RUN_ID_ATTR]
                 for outcome in study.user_attrs.get(BASELINES_ATTR, {}).values()
                 if CV_LOSS in outcome and outcome.get(RUN_ID_ATTR)]
    return trials + baselines, len(trials), len(baselines)


def next_steps(*, tracking_uri: str, study_name: str, experiment_id: str, parent_run_id: str,
               compared: tuple[list[str], int, int], has_recipe: bool,
               export_storage: str | None = None) -> list[str]:
    """The lines that end a run: how to open MLflow's UI and where, what to compare, how to
    export the recipe, and what the study's parent run already holds.

    Args:
        compared: `compared_runs`.
        has_recipe: the study has a complete trial (so ``best_recipe.yaml`` exists).
        export_storage: the Optuna storage to name in the export command, when it is not the
            default one (shown with its password hidden).
    """
    address = ui_address(tracking_uri)
    command = ui_command(tracking_uri)
    lines = ["next steps:"]
    if command is not None:
        lines += [f"  open MLflow's UI:   {command}",
                  f"  then its trials:    {trials_link(address, experiment_id)}"]
    else:
        lines.append(f"  the study's trials: {trials_link(address, experiment_id)}")
    run_ids, n_trials, n_baselines = compared
    if run_ids:
        what = " and ".join(filter(None, [
            f"best {n_trials} trial{'s' if n_trials != 1 else ''}" if n_trials else "",
            f"{n_baselines} baseline{'s' if n_baselines != 1 else ''}" if n_baselines else ""]))
        lines.append(f"  compare the {what}: {compare_link(address, experiment_id, run_ids)}")
    if has_recipe:
        storage = f" --storage {redact_url(export_storage)}" if export_storage else ""
        lines.append(f"  write the recipe:   python -m search.export --study {study_name}{storage}")
    held = ", ".join(filter(None, ["best_recipe.yaml" if has_recipe else "", "plots/",
                                   "space.json"]))
    lines.append(f"  already on the study's run ({held}): "
                 f"{run_link(address, experiment_id, parent_run_id)}")
    return lines


def budget_spent(n_trials: int, counts: Mapping[str, int]) -> str | None:
    """The line a run prints when the study's trial budget was spent before it started."""
    if counts["budget"] < n_trials:
        return None
    return (f"budget of {n_trials} trials already spent; raise --trials to run more "
            f"(--trials {n_trials + 10} runs 10 more)")


def fresh_deleted(study_name: str, n_trials: int) -> str:
    """The line ``--fresh`` prints when it deleted a stored study."""
    return (f"--fresh: deleted study {study_name} with {n_trials} trial"
            f"{'s' if n_trials != 1 else ''} (MLflow keeps their runs)")


def share_trials_view(tracker: Any, parent_run_id: str, config: Any) -> None:
    """Record `trials_view` on the study's experiment, for `trials_link` to open."""
    tracker.set_experiment_tags(parent_run_id,
                                trials_view_tags(config.spec.space.names, config.n_folds))


def study_next_steps(study: Any, config: Any, tracker: Any, parent_run_id: str) -> list[str]:
    """`next_steps` for a study of ``config`` (a `search.config.StudyConfig`)."""
    compared = compared_runs(study)
    return next_steps(
        tracking_uri=config.tracking_uri, study_name=config.name,
        experiment_id=tracker.experiment_of(parent_run_id), parent_run_id=parent_run_id,
        compared=compared, has_recipe=compared[1] > 0,
        export_storage=None if config.storage == default_storage() else config.storage)
