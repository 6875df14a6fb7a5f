"""Where a user looks once a study ran: the links into MLflow's UI, the lines that end a run,
and what the runs those links open hold (a real digits study in a real SQLite MLflow store)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from rich.console import Console

from search.config import build_config
from search.links import (
    LOCAL_UI,
    budget_spent,
    compare_link,
    fresh_deleted,
    next_steps,
    trials_link,
    trials_view,
    trials_view_tags,
    ui_address,
    ui_command,
)
from search.names import SHARED_VIEW_KEY, SHARED_VIEW_TAG
from search.study import open_study

PARAMS = ("l1", "l2", "dropout", "augment", "patience")


# --- the links, as pure functions -------------------------------------------------------------

@pytest.mark.parametrize("uri,address", [
    ("sqlite:///mlruns/mlflow.db", LOCAL_UI),
    ("postgresql+psycopg2://u:pw@db/mlflow", LOCAL_UI),
    ("http://mlflow-host:5000", "http://mlflow-host:5000"),
    ("https://user:s3cret@mlflow.example.org/", "https://mlflow.example.org"),
])
def test_ui_address_is_the_server_without_credentials_or_mlflow_uis_default(uri, address) -> None:
    assert ui_address(uri) == address
    assert "s3cret" not in ui_address(uri) and "pw" not in ui_address(uri)


def test_ui_command_serves_a_local_store_only() -> None:
    assert ui_command("sqlite:///mlruns/mlflow.db") == \
        "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db"
    assert ui_command("postgresql://u:pw@db/mlflow") == \
        "mlflow ui --backend-store-uri postgresql://u:***@db/mlflow"
    assert ui_command("http://host:5000") is None


def test_trials_link_opens_the_runs_page_in_the_shared_view() -> None:
    link = trials_link("http://127.0.0.1:5000", "7")
    path, _, query = link.partition("?")
    assert path == "http://127.0.0.1:5000/#/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"],
                               "viewStateShareKey": [SHARED_VIEW_KEY]}
    assert SHARED_VIEW_TAG == f"mlflow.sharedViewState.{SHARED_VIEW_KEY}"


def test_compare_link_lists_the_runs_in_order_percent_encoded() -> None:
    link = compare_link("http://h:5000", "3", ["b2", "a1", "c3"])
    assert link.startswith("http://h:5000/#/compare-runs?runs=%5B%22b2%22")
    assert not set('[]" ') & set(link)  # a terminal keeps the whole link clickable
    query = parse_qs(urlsplit(link.replace("/#/", "/")).query)
    assert json.loads(query["runs"][0]) == ["b2", "a1", "c3"]
    assert json.loads(query["experiments"][0]) == ["3"]
    assert query["workflowType"] == ["machine_learning"]


@pytest.mark.parametrize("n_folds", [2, 5])
def test_trials_view_sorts_by_the_score_and_shows_folds_score_and_recipe(n_folds: int) -> None:
    view = trials_view(PARAMS, n_folds)
    assert view["orderByKey"] == "metrics.`cv_val_loss`" and view["orderByAsc"] is True
    assert view["searchFilter"] == "tags.`regsearch.role` != 'study'"  # flat: no parent run
    columns = view["selectedColumns"]
    folds = [f"metrics.`fold_{k}/best_val_loss`" for k in range(n_folds)]
    assert columns[:4] == ["tags.`optuna.trial_state`", "tags.`regsearch.at_chance`",
                           "tags.`fail_reason`", "metrics.`cv_val_loss`"]
    assert set(folds) < set(columns) and f"metrics.`fold_{n_folds}/best_val_loss`" not in columns
    assert columns[-len(PARAMS):] == [f"params.`{p}`" for p in PARAMS]
    chart = view["compareRunCharts"][0]  # the charts view starts with the recipe vs the score
    assert chart["type"] == "PARALLEL" and chart["selectedParams"] == list(PARAMS)
    assert chart["selectedMetrics"] == ["cv_val_loss"]
    (value,) = trials_view_tags(PARAMS, n_folds).values()
    assert json.loads(value) == view and len(value) < 20000  # MLflow's experiment tag limit


def test_next_steps_with_a_local_store() -> None:
    lines = next_steps(tracking_uri="sqlite:///mlruns/mlflow.db", study_name="digits",
                       experiment_id="1", parent_run_id="p0", compared=(["r1", "r2", "b1"], 2, 1),
                       has_recipe=True)
    text = "\n".join(lines)
    assert lines[0] == "next steps:"
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in lines[1]
    assert trials_link(LOCAL_UI, "1") in lines[2]
    compared = compare_link(LOCAL_UI, "1", ["r1", "r2", "b1"])
    assert f"  compare the best 2 trials and 1 baseline: {compared}" in lines
    assert "python -m search.export --study digits\n" in text + "\n"
    assert lines[-1] == ("  already on the study's run (best_recipe.yaml, plots/, space.json): "
                         f"{LOCAL_UI}/#/experiments/1/runs/p0")


def test_next_steps_on_a_server_give_its_links_and_never_the_password() -> None:
    lines = next_steps(tracking_uri="http://user:s3cret@mlflow-host:5000", study_name="flowers",
                       experiment_id="4", parent_run_id="p0", compared=([], 0, 0),
                       has_recipe=False, export_storage="postgresql://u:s3cret@db/optuna")
    text = "\n".join(lines)
    assert "s3cret" not in text and "mlflow ui" not in text
    assert trials_link("http://mlflow-host:5000", "4") in lines[1]
    assert "compare" not in text and "search.export" not in text  # nothing complete yet
    assert "(plots/, space.json)" in lines[-1]


def test_next_steps_name_a_storage_that_is_not_the_default() -> None:
    lines = next_steps(tracking_uri="sqlite:///m.db", study_name="digits", experiment_id="1",
                       parent_run_id="p", compared=(["r"], 1, 0), has_recipe=True,
                       export_storage="postgresql://u:pw@db/optuna")
    assert "  write the recipe:   python -m search.export --study digits --storage " \
           "postgresql://u:***@db/optuna" in lines
    assert any("compare the best 1 trial: " in line for line in lines)


def test_budget_spent_only_when_the_stored_trials_reach_the_budget() -> None:
    counts = {"complete": 20, "pruned": 8, "failed": 2, "running": 0, "budget": 30}
    assert budget_spent(30, counts) == ("budget of 30 trials already spent; raise --trials to "
                                        "run more (--trials 40 runs 10 more)")
    assert budget_spent(31, counts) is None
    assert fresh_deleted("digits", 30) == "--fresh: deleted study digits with 30 trials " \
                                          "(MLflow keeps their runs)"
    assert fresh_deleted("digits", 1).startswith("--fresh: deleted study digits with 1 trial ")


# --- a real study -----------------------------------------------------------------------------

GOOD = {"l1_on": False, "l2_on": True, "l2": 1e-4, "dropout": 0.1, "augment": 0.0, "patience": 3}
# heavy everything: far worse than the others from the first epochs, so the median pruner stops
# it at the end of its first fold
BAD = {"l1_on": True, "l1": 1e-3, "l2_on": True, "l2": 1e-2, "dropout": 0.59, "augment": 1.0,
       "patience": 2}


def _config(root: Path, **changes):
    settings = dict(n_trials=4, n_folds=2, max_epochs=3, pruner="median", seed=0,
                    storage=f"sqlite:///{root}/mlruns/optuna.db",
                    tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    return build_config("digits", **{**settings, **changes})


def _run(config) -> tuple[object, str]:
    from search.driver import run_study

    out = io.StringIO()
    outcome = run_study(config, console=Console(file=out, width=300), progress=False)
    return outcome, out.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """4 trials of 2 folds x 3 epochs: three complete (the defaults first), one pruned."""
    root = tmp_path_factory.mktemp("links")
    config = _config(root)
    stored = open_study(config)  # the defaults are queued as trial 0
    stored.enqueue_trial({**GOOD, "dropout": 0.2})
    stored.enqueue_trial({**GOOD, "dropout": 0.0})
    stored.enqueue_trial(BAD)
    outcome, output = _run(config)
    client = MlflowClient(config.tracking_uri)
    runs = {int(r.data.tags["optuna.trial_number"]): r
            for r in client.search_runs([client.get_experiment_by_name("digits").experiment_id])
            if r.data.tags.get("regsearch.role") == "trial"}
    return root, config, outcome, output, client, runs


@pytest.mark.slow
def test_fold_best_values_average_to_the_score_the_runs_table_shows(study) -> None:
    _, config, outcome, _, client, runs = study
    states = [t.state for t in outcome.study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    for number, run in runs.items():
        metrics = run.data.metrics
        folds = [k for k in range(config.n_folds) if f"fold_{k}/best_val_loss" in metrics]
        assert folds == list(range(config.n_folds if number < 3 else 1))
        best = [metrics[f"fold_{k}/best_val_loss"] for k in folds]
        # what a user reads in the table averages to the score beside it
        assert metrics["cv_val_loss"] == pytest.approx(sum(best) / len(best), abs=1e-12)
        if number < 3:
            assert metrics["cv_val_loss"] == pytest.approx(outcome.study.trials[number].value)
        for k in folds:  # the best epoch is the curve's lowest point, not its last
            curve = [m.value for m in client.get_metric_history(run.info.run_id,
                                                                 f"fold_{k}/val_loss")]
            epoch = int(metrics[f"fold_{k}/best_epoch"])
            assert curve[epoch] == pytest.approx(min(curve)) == pytest.approx(best[k])
        # the score is the first metric of every run: MLflow's compare page plots the first
        # metric the runs share
        assert next(iter(client.get_run(run.info.run_id).data.metrics)) == "cv_val_loss"
    assert outcome.study.metric_names == ["cv_val_loss"]


@pytest.mark.slow
def test_a_pruned_trial_is_finished_and_named_so_not_failed(study) -> None:
    _, _, outcome, output, _, runs = study
    assert {n: r.info.status for n, r in runs.items()} == {n: "FINISHED" for n in range(4)}
    assert runs[3].data.tags["optuna.trial_state"] == "PRUNED"
    assert runs[3].info.run_name == "trial-3 (pruned)" and runs[0].info.run_name == "trial-0"
    assert outcome.study.trials[3].state == TrialState.PRUNED  # Optuna still tells them apart
    assert re.search(r"^trial 3: pruned in fold 1/2 at epoch [1-3]/3( · study: about \S+ left)?$",
                     output, re.MULTILINE)


@pytest.mark.slow
def test_the_run_ends_with_where_to_look_and_what_to_run(study) -> None:
    _, config, outcome, output, client, runs = study
    experiment = client.get_experiment_by_name("digits")
    lines = output[output.index("next steps:"):].splitlines()
    assert lines[1] == f"  open MLflow's UI:   mlflow ui --backend-store-uri {config.tracking_uri}"
    assert lines[2] == f"  then its trials:    {trials_link(LOCAL_UI, experiment.experiment_id)}"
    best = sorted((t for t in outcome.study.trials if t.state == TrialState.COMPLETE),
                  key=lambda t: t.value)
    compared = [t.user_attrs["mlflow_run_id"] for t in best]
    assert lines[3] == ("  compare the best 3 trials: "
                        f"{compare_link(LOCAL_UI, experiment.experiment_id, compared)}")
    assert lines[4].startswith("  write the recipe:   python -m search.export --study digits "
                               "--storage sqlite:///")
    assert lines[5].endswith(f"/#/experiments/{experiment.experiment_id}/runs/"
                             f"{outcome.parent_run_id}")
    assert "gap: validation minus training cross-entropy" in output
    # the view the trials link opens is on the experiment
    assert json.loads(experiment.tags[SHARED_VIEW_TAG]) == trials_view(PARAMS, config.n_folds)
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"best_recipe.yaml", "plots", "space.json"} <= artifacts


@pytest.mark.slow
def test_export_says_when_it_overwrites_a_recipe(study) -> None:
    from search.export import export

    root, config, outcome, _, _, _ = study
    said: list[str] = []
    target = root / "digits_recipe.yaml"
    export("digits", output=str(target), storage=config.storage, on_replace=said.append)
    assert said == []
    export("digits", output=str(target), storage=config.storage, trial_number=1,
           on_replace=said.append)
    best = outcome.study.best_trial.number
    assert said == [f"overwrote {target} (it held trial {best} of study digits; now trial 1 "
                    f"of study digits)"]


@pytest.mark.slow
def test_a_rerun_with_the_budget_spent_says_so_in_one_line(study) -> None:
    _, config, _, _, _, _ = study
    outcome, output = _run(config)
    assert len(outcome.study.trials) == 4
    assert output.count("budget of 4 trials already spent; raise --trials to run more") == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask and tell, outside optimize
def test_fresh_says_what_it_deletes(tmp_path: Path) -> None:
    config = _config(tmp_path, n_trials=1)
    stored = open_study(config)
    for _ in range(2):  # two stored trials (the queued defaults first), told without training
        stored.tell(stored.ask(), 1.0)
    deleted: list[int] = []
    study = open_study(config.replace(fresh=True), on_deleted=deleted.append)
    assert deleted == [2] and len(study.trials) == 1  # the new study's queued defaults
    open_study(config.replace(fresh=True), on_deleted=deleted.append)
    assert deleted == [2, 1]
    open_study(config, on_deleted=deleted.append)  # no --fresh: nothing deleted, nothing said
    assert deleted == [2, 1]


# --- the same links in a real browser ---------------------------------------------------------

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}


class _Page(HTMLParser):
    """What a test reads from a page MLflow's UI rendered: the runs grid's rows (``grid``:
    ``{row id: {column id: text}}``, ``order``: row ids by row index, ``icon``: the class of
    each row's status icon) and the compare page's tables (``rows``: ``{header: [cells]}``)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.grid: dict[str, dict[str, str]] = {}
        self.index: dict[str, int] = {}
        self.icon: dict[str, str] = {}
        self.rows: dict[str, list[str]] = {}
        self.titles: list[str] = []  # the parallel-coordinates plot's axes
        self._open: list[tuple[str, str | None]] = []  # (tag, what it opened)
        self._row = self._cell = None
        self._tr: list[str] | None = None
        self._title = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        opened = None
        if "row-id" in a and a.get("role") == "row":
            self._row, opened = a["row-id"], "row"
            self.grid.setdefault(self._row, {})
            self.index[self._row] = int(a.get("row-index", -1))
        elif a.get("role") == "gridcell" and self._row and a.get("col-id"):
            self._cell, opened = a["col-id"], "cell"
            self.grid[self._row][self._cell] = ""
        elif tag == "tr":
            self._tr, opened = [], "tr"
        elif tag in ("th", "td") and self._tr is not None:
            self._tr.append("")
        elif tag == "text" and a.get("class") == "axis-title":
            self.titles.append("")
            self._title, opened = True, "title"
        if (tag == "span" and a.get("role") == "img" and self._cell == "runDateAndNestInfo"
                and self._row not in self.icon):
            self.icon[self._row] = a.get("class", "")
        if tag not in _VOID:
            self._open.append((tag, opened))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID or not self._open:
            return
        _, opened = self._open.pop()
        if opened == "row":
            self._row = None
        elif opened == "cell":
            self._cell = None
        elif opened == "title":
            self._title = False
        elif opened == "tr":
            if self._tr:
                self.rows.setdefault(self._tr[0].strip(), self._tr[1:])
            self._tr = None

    def handle_data(self, data: str) -> None:
        if self._row and self._cell:
            self.grid[self._row][self._cell] += data
        if self._tr:
            self._tr[-1] += data
        if self._title:
            self.titles[-1] += data

    def ordered_rows(self) -> list[dict[str, str]]:
        return [self.grid[r] for r in sorted(self.grid, key=self.index.get)]


def _render(url: str) -> _Page:
    """``url`` as headless Chromium renders it, once the UI has fetched its data."""
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--window-size=3000,1400",
             "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=True).stdout
    return _Page(dom)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to open the printed links in; "
                                             "install Debian's: apt-get install chromium")
def test_the_printed_links_land_on_the_trials_and_their_comparison_in_a_browser(study) -> None:
    from tests.search.mlflow_server import MlflowServer

    root, config, outcome, output, client, runs = study
    printed = {line.split(":", 1)[0].strip(): line.split(": ", 1)[1].strip()
               for line in output[output.index("next steps:"):].splitlines()[1:]}
    server = MlflowServer(root / "mlruns", workers=1)  # the study's store, mlruns/mlflow.db
    server.start()
    try:
        trials = _render(printed["then its trials"].replace(LOCAL_UI, server.url))
        compare = _render(printed["compare the best 3 trials"].replace(LOCAL_UI, server.url))
    finally:
        server.stop()

    # the runs page: every trial, flat, best score first, with the score, its folds and the recipe
    rows = trials.ordered_rows()
    by_score = sorted(runs.values(), key=lambda r: r.data.metrics["cv_val_loss"])
    # (a run name cell starts with the run's colour, "#8a63bf")
    names = [re.sub(r"^#[0-9a-f]{6}", "", r["attributes.`Run Name`"]) for r in rows]
    assert names == [r.info.run_name for r in by_score]
    for row, run in zip(rows, by_score):
        assert float(row["metrics.`cv_val_loss`"]) == pytest.approx(run.data.metrics["cv_val_loss"])
        assert row["tags.`optuna.trial_state`"] == run.data.tags["optuna.trial_state"]
        assert float(row["metrics.`fold_0/best_val_loss`"]) == pytest.approx(
            run.data.metrics["fold_0/best_val_loss"])
        for name in PARAMS:
            assert float(row[f"params.`{name}`"]) == pytest.approx(float(run.data.params[name]))
    # no pruned trial drawn as a failure: its status icon is a complete one's
    icons = {row["tags.`optuna.trial_state`"]: trials.icon[run_id]
             for run_id, row in trials.grid.items()}
    assert icons["PRUNED"] == icons["COMPLETE"]

    # the compare page: the objective on the parallel-coordinates plot, the recipes side by side
    best = sorted((t for t in outcome.study.trials if t.state == TrialState.COMPLETE),
                  key=lambda t: t.value)
    differ = sorted(p for p in PARAMS if len({t.user_attrs["recipe"][p] for t in best}) > 1)
    # (MLflow's choice of parameters: the first three that differ, alphabetically)
    assert compare.titles == [*differ[:3], "cv_val_loss"]
    assert [v.strip() for v in compare.rows["Run Name:"]] == [f"trial-{t.number}" for t in best]
    for name in differ:  # the table below the plot lists the parameters that differ
        assert [float(v) for v in compare.rows[name]] == pytest.approx(
            [t.user_attrs["recipe"][name] for t in best])
