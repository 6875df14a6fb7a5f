"""Which trial a study selects: the lowest CV loss among complete trials that beat chance level.

A recipe whose validation loss never fell below chance level, ln(number of classes), learned
nothing. Such a trial stays COMPLETE in Optuna with its real (large) CV loss, because that is
what teaches the sampler to avoid its region: TPE ranks complete trials by value and models the
worst ones as "bad", while a FAIL is left out of its model altogether (a learning rate of 10 on
digits gave three COMPLETE trials at 25.4, 4.4e10 and 22.7, and the sampler kept away from it
only because they were complete). But it is never the answer: not selected, not exported, not
retrained for the held-out report. Optuna's own ``study.best_trial`` knows nothing of chance;
regsearch never asks it.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search.names import AT_CHANCE_ATTR, DATA_ATTR, FOLD_LOSSES_ATTR


def chance_level(n_classes: int) -> float:
    """The cross-entropy of guessing every class alike: ln(``n_classes``)."""
    return math.log(n_classes)


# A loss within this fraction of ln(K) has not left chance level: the trainer's own line
# (`trainers.fit.CHANCE_TOLERANCE`, not imported: it would bring Keras into `search.export`)
CHANCE_TOLERANCE = 0.01


def beats_chance(fold_losses: list[float], n_classes: int) -> bool:
    """True when every fold's best validation loss fell clearly below chance level."""
    line = chance_level(n_classes) * (1 - CHANCE_TOLERANCE)
    return bool(fold_losses) and all(math.isfinite(v) and v < line for v in fold_losses)


def at_chance(trial: FrozenTrial, n_classes: int | None) -> bool:
    """True for a complete trial that did not beat chance level in every fold.

    Trials record it (``at_chance``) when they end; for one that did not, its folds' losses
    or, failing those, its CV loss decide against ``n_classes``.
    """
    if AT_CHANCE_ATTR in trial.user_attrs:
        return bool(trial.user_attrs[AT_CHANCE_ATTR])
    if trial.value is None or not math.isfinite(trial.value):
        return True
    if n_classes is None:
        return False
    return not beats_chance(trial.user_attrs.get(FOLD_LOSSES_ATTR) or [trial.value], n_classes)


def n_classes_of(study: Any) -> int | None:
    """The class count of the study's data, as its first process recorded it."""
    return study.user_attrs.get(DATA_ATTR, {}).get("n_classes")


def ranked_trials(study: Any) -> list[FrozenTrial]:
    """The complete trials that beat chance level, lowest CV loss first."""
    classes = n_classes_of(study)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value) and not at_chance(t, classes)]
    return sorted(done, key=lambda t: (t.value, t.number))


def selected_trial(study: Any) -> FrozenTrial | None:
    """The trial the study selects, or None when no complete trial beat chance level."""
    ranked = ranked_trials(study)
    return ranked[0] if ranked else None


def nothing_selected(study: Any) -> str:
    """One line saying why a study has no selected recipe yet."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return f"study {study.study_name!r} has no complete trial yet; run more trials first."
    classes = n_classes_of(study)
    level = f"ln({classes}) = {chance_level(classes):.4f}" if classes else "ln(classes)"
    return (f"no trial of study {study.study_name!r} beat chance level: the validation loss of "
            f"all {len(complete)} complete trial(s) stayed at or above {level} in some fold, so "
            f"no recipe is selected; check the learning rate, the model and the data, or the "
            f"space's ranges.")
