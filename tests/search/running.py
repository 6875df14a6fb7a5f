"""Waiting for a `search.run` started by a test to be in the middle of a trial."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState


def trial_is_training(storage: str, study_name: str = "digits") -> bool:
    """Whether a RUNNING trial of the study has reported an epoch (False before it exists)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception:  # noqa: BLE001 (not created yet)
        return False
    return any(t.intermediate_values for t in study.get_trials(states=(TrialState.RUNNING,)))
