"""Run hand-picked baseline recipes through the study's folds, beside the searched trials."""

from __future__ import annotations

from typing import Any

from search.baseline_sets import BASELINE_SETS
from search.liveness import killed_reason, process_gone, this_process
from search.names import (
    BASELINE_TAG,
    BASELINES_ATTR,
    BEST_EPOCHS_ATTR,
    CV_LOSS,
    FAIL_REASON_ATTR,
    FOLD_LOSSES_ATTR,
    RECIPE_ATTR,
    RUN_ID_ATTR,
    RUNNING_IN_KEY,
)
from search.progress import StudyProgress, job
from search.recording import fold_losses, make_recipe, start_run, train_recorded
from search.tracking import Tracker
from spaces.strengths import OFF
from trainers.batched import fold_trainer
from trainers.fit import ClassWeight, TrainingFailed


def baseline_recipes(config: Any, set_name: str) -> dict[str, Any]:
    """Return ``{name: Recipe}`` of a baseline set for this study.

    Raises:
        ValueError: unknown set name (the message lists the known ones).
    """
    if set_name not in BASELINE_SETS:
        raise ValueError(f"--baselines {set_name!r} is not known; known sets: "
                         f"{', '.join(BASELINE_SETS)}.")
    defaults = config.spec.space.defaults()
    patience = {"patience": defaults["patience"]} if "patience" in defaults else {}
    return {name: make_recipe(config, {**OFF, **patience, **changes})
            for name, changes in BASELINE_SETS[set_name].items()}


def run_baselines(study: Any, config: Any, recipes: dict[str, Any], *, data: Any, folds: Any,
                  models: Any, tracker: Tracker, parent_run_id: str, console: Any = None,
                  class_weight: ClassWeight = None,
                  progress: StudyProgress | None = None) -> dict[str, dict[str, Any]]:
    """Cross-validate each baseline once per study (a resumed study skips those already done).

    Each baseline is an MLflow child run tagged ``baseline=<name>`` with the same metrics as a
    trial; its outcome is kept in the study's user attributes. ``progress`` shows each one's
    folds and epochs like a trial's.

    Returns:
        ``{name: outcome}``; an outcome has the recipe, ``cv_val_loss`` and friends, or
        ``fail_reason``.
    """
    cross_validate = fold_trainer(config.fold_mode)  # the study's fold mode, as its trials

    done: dict[str, dict[str, Any]] = dict(study.user_attrs.get(BASELINES_ATTR, {}))
    for name, recipe in recipes.items():
        previous = done.pop(name, None)
        # a recipe stored before a regularizer existed had it off: the same recipe
        if previous is not None and RUNNING_IN_KEY not in previous \
                and {**OFF, **previous.get(RECIPE_ATTR, {})} == recipe.to_dict():
            done[name] = previous
            continue
        if previous is not None and process_gone(previous.get(RUNNING_IN_KEY, {})):
            # its process was killed outright: close the run it left RUNNING, train it again
            tracker.finish_run(previous[RUN_ID_ATTR], "FAIL",
                               reason=killed_reason(previous[RUNNING_IN_KEY]))
        run_id = start_run(tracker, parent_run_id, recipe, name=f"baseline-{name}",
                           role="baseline", tags={BASELINE_TAG: name})
        outcome: dict[str, Any] = {RECIPE_ATTR: recipe.to_dict(), RUN_ID_ATTR: run_id}
        study.set_user_attr(BASELINES_ATTR,
                            {**done, name: {**outcome, RUNNING_IN_KEY: this_process()}})
        with job(progress, f"baseline {name}") as hooks:
            try:
                result, summary, _ = train_recorded(tracker, run_id, lambda on_fold: cross_validate(
                    data, folds, recipe, models, seed=config.seed, class_weight=class_weight,
                    on_fold=on_fold, **hooks), n_classes=data.n_classes)
            except TrainingFailed as exc:
                outcome[FAIL_REASON_ATTR] = str(exc)
            except KeyboardInterrupt:
                study.set_user_attr(BASELINES_ATTR, done)  # closed: nothing left to clean up
                raise
            else:
                outcome.update(summary, **{BEST_EPOCHS_ATTR: [f.best_epoch for f in result.folds],
                                           FOLD_LOSSES_ATTR: fold_losses(result)})
        done[name] = outcome
        study.set_user_attr(BASELINES_ATTR, done)
        if console is not None:
            shown = (f"cv val_loss {outcome[CV_LOSS]:.4f}" if CV_LOSS in outcome
                     else f"failed ({outcome[FAIL_REASON_ATTR]})")
            console.print(f"baseline {name}: {shown}", highlight=False)
    return {name: done[name] for name in recipes}
