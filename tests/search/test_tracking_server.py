"""regsearch against a real `mlflow server`, as in "Running across machines".

Workers that open a new study at the same moment all reach its one experiment, and a password in
the tracking URL shows nowhere in the output (MLflow's own per-run links would show it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.tracking import ROLE_TAG, Tracker

PASSWORD = "pw-9f3k"


@pytest.mark.parametrize("round_", range(3))
def test_workers_opening_a_new_study_together_share_one_experiment(mlflow_server: str,
                                                                   round_: int) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    trackers = [Tracker(mlflow_server) for _ in range(6)]
    start = threading.Barrier(len(trackers))

    def open_experiment(tracker: Tracker) -> str:
        start.wait()
        return tracker.experiment_id(name)

    with ThreadPoolExecutor(len(trackers)) as pool:
        ids = list(pool.map(open_experiment, trackers))
    assert len(set(ids)) == 1
    assert MlflowClient(mlflow_server).get_experiment_by_name(name).experiment_id == ids[0]


@pytest.mark.slow
def test_a_study_on_a_server_prints_one_link_and_never_the_password(mlflow_server: str,
                                                                     tmp_path: Path) -> None:
    uri = mlflow_server.replace("http://", f"http://user:{PASSWORD}@")
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--study", "digits", "--trials", "2", "--epochs",
         "2", "--folds", "2", "--no-progress", "--storage", f"sqlite:///{tmp_path}/optuna.db",
         "--tracking-uri", uri],
        cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True,
        text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert PASSWORD not in output
    assert "View run" not in output  # MLflow's link for every run it ends
    links = re.findall(r"MLflow run: (http://user:\*\*\*@127\.0\.0\.1:\d+)/#/experiments/(\d+)/runs/(\w+)",
                       output)
    assert len(links) == 1, output[-3000:]
    _, experiment_id, run_id = links[0]
    parent = MlflowClient(mlflow_server).get_run(run_id)
    assert parent.info.experiment_id == experiment_id
    assert parent.data.tags[ROLE_TAG] == "study" and parent.info.status == "FINISHED"
