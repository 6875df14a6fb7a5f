"""No recipe at chance level is ever the answer: selection, the run's last lines, export, report."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search.names import AT_CHANCE_ATTR, DATA_ATTR, FOLD_LOSSES_ATTR
from search import selection
from search.selection import at_chance, beats_chance, nothing_selected, selected_trial

ROOT = Path(__file__).resolve().parents[2]


def _study(*trials: tuple[float, list[float] | None]) -> optuna.Study:
    """A 10-class study with complete trials of (CV loss, fold losses)."""
    study = optuna.create_study(study_name="s")
    study.set_user_attr(DATA_ATTR, {"n_classes": 10})
    for value, folds in trials:
        trial = study.ask()
        if folds is not None:
            trial.set_user_attr(FOLD_LOSSES_ATTR, folds)
        study.tell(trial, value)
    return study


def test_beats_chance_needs_every_fold_clearly_below_ln_k() -> None:
    from trainers.fit import CHANCE_TOLERANCE

    assert CHANCE_TOLERANCE == selection.CHANCE_TOLERANCE  # one line for "chance level"
    line = math.log(10) * (1 - CHANCE_TOLERANCE)
    assert beats_chance([0.1, line - 1e-9], 10)
    assert not beats_chance([0.1, line], 10)
    assert not beats_chance([0.1, math.log(10) - 1e-3], 10)  # 2.3016: still at chance
    assert not beats_chance([0.1, math.nan], 10)
    assert not beats_chance([], 10)


def test_a_low_mean_with_a_fold_at_chance_is_not_selected() -> None:
    # trial 0: the lowest mean, but its second fold never left chance; trial 1: 22.7 blown up
    study = _study((1.3, [0.2, 2.4]), (22.7, [22.7, 22.7]), (1.5, [1.4, 1.6]))
    assert selected_trial(study).number == 2
    assert study.best_trial.number == 0  # what Optuna alone would have called best


def test_no_trial_beat_chance_is_said_in_one_line() -> None:
    study = _study((25.4, None), (4.4e10, None), (22.7, None))
    assert selected_trial(study) is None
    line = nothing_selected(study)
    assert "\n" not in line and "beat chance level" in line and "ln(10) = 2.3026" in line
    assert "no complete trial yet" in nothing_selected(optuna.create_study(study_name="e"))


def test_a_trials_own_verdict_comes_first() -> None:
    study = _study((0.5, None))
    trial = study.trials[0]
    assert not at_chance(trial, 10)
    study = optuna.create_study()
    t = study.ask()
    t.set_user_attr(AT_CHANCE_ATTR, True)
    study.tell(t, 0.5)
    assert at_chance(study.trials[0], 10)


@pytest.mark.slow
def test_a_study_where_nothing_beats_chance_selects_exports_and_reports_nothing(
        tmp_path: Path) -> None:
    # a learning rate of 10 blows every recipe up (the 25.4, 4.4e10, 22.7)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "search.run", "--study", "digits", "--trials", "2", "--epochs", "2",
         "--folds", "2", "--no-progress", "--set", "training.learning_rate=10.0",
         "--set", "data.heldout_fraction=0.2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "no better than chance level (never selected)" in run.stderr
    assert "no trial of study 'digits' beat chance level" in run.stderr
    assert "held-out report: nothing to report" in run.stderr
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    assert all(t.state.name == "COMPLETE" and t.user_attrs[AT_CHANCE_ATTR] for t in study.trials)
    assert "regsearch.heldout" not in study.user_attrs  # nothing was retrained

    export = subprocess.run([sys.executable, "-m", "search.export", "--study", "digits"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert export.returncode == 2 and "Traceback" not in export.stderr
    assert export.stderr.startswith("error: no trial of study 'digits' beat chance level")
    assert not list(tmp_path.glob("digits_recipe.*"))
    refused = subprocess.run([sys.executable, "-m", "search.export", "--study", "digits",
                              "--trial", "0"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "did not beat chance level" in refused.stderr
