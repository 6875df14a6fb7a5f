"""The within-noise stopping rule: its two terms on made-up losses, and the trial loop obeying it."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.config import build_config
from search.convergence import (
    MIN_TRIALS,
    convergence,
    cv_error,
    encode,
    random_recipes,
    regret_bound,
)
from search.names import CONVERGED_ATTR, FOLD_LOSSES_ATTR
from search.study import count_trials, quiet_optuna
from search.worker import Objective, run_trials
from tests.search.memory_tracker import MemoryTracker


def test_cv_error_is_the_corrected_spread_of_the_fold_losses() -> None:
    folds = [0.31, 0.27, 0.35, 0.29, 0.30]
    k = len(folds)
    expected = math.sqrt((1 / k + 1 / (k - 1)) * np.var(folds))  # Nadeau and Bengio
    assert cv_error(folds) == pytest.approx(expected)
    assert cv_error([0.3, 0.3, 0.3]) == 0.0
    assert math.isnan(cv_error([0.3]))


def _quadratic(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] - 0.1) ** 2  # minimum 0 at x = 0.1


def test_the_regret_bound_covers_an_unexplored_optimum_and_shrinks_once_it_is_found() -> None:
    rng = np.random.default_rng(0)
    candidates = rng.uniform(size=(512, 1))
    # every trial in [0.6, 1]: the best found is (0.6 - 0.1)^2 = 0.25 above the true minimum
    far = rng.uniform(0.6, 1.0, size=(20, 1))
    bound_far = regret_bound(far, _quadratic(far), candidates)
    assert bound_far >= _quadratic(far).min()  # covers the true regret
    # trials spread over the whole range, several near the minimum: little left to find
    spread = np.linspace(0, 1, 25)[:, None]
    bound_spread = regret_bound(spread, _quadratic(spread), candidates)
    assert bound_spread < bound_far / 10
    assert bound_spread < 0.01


def _digits_trial(values: dict, loss: float, folds: list[float]):
    space = build_config("digits").spec.space
    params, distributions = {}, {}
    for p in space.params:
        value = values[p.name]
        if getattr(p, "off", False):
            params[f"{p.name}_on"] = value != 0
            distributions[f"{p.name}_on"] = CategoricalDistribution([True, False])
            if value == 0:
                continue
        if isinstance(value, int):
            distributions[p.name] = IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            distributions[p.name] = FloatDistribution(p.low, p.high, log=p.log)
        params[p.name] = value
    return create_trial(state=TrialState.COMPLETE, value=loss, params=params,
                        distributions=distributions, user_attrs={FOLD_LOSSES_ATTR: folds})


def _study_of(n: int, *, fold_spread: float, slope: float, seed: int = 0) -> optuna.Study:
    """A digits study with ``n`` complete trials: loss = 0.1 + slope * dropout + small noise;
    each trial's folds spread ``fold_spread`` around its loss."""
    space = build_config("digits").spec.space
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name="digits")
    study.set_user_attr("regsearch.data", {"n_classes": 10})
    for _ in range(n):
        values = {}
        for p in space.params:
            if isinstance(p.low, int) and isinstance(p.high, int):
                values[p.name] = int(rng.integers(p.low, p.high + 1))
            elif getattr(p, "off", False) and rng.uniform() < 0.5:
                values[p.name] = 0.0
            else:
                values[p.name] = float(math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
                                       if p.log else rng.uniform(p.low, p.high))
        loss = 0.1 + slope * values["dropout"] + rng.normal(0, 0.001)
        folds = [loss - fold_spread, loss, loss + fold_spread]
        study.add_trial(_digits_trial(values, loss, folds))
    return study


def test_a_flat_search_with_noisy_folds_is_within_noise() -> None:
    study = _study_of(MIN_TRIALS + 5, fold_spread=0.05, slope=0.0)
    state = convergence(study, build_config("digits").spec.space)
    assert state is not None and state.n_trials == MIN_TRIALS + 5
    assert state.within_noise, state


def test_a_search_still_finding_gains_larger_than_its_noise_is_not() -> None:
    # loss falls steeply with dropout, and the folds agree to 1e-4: a lower recipe is plausible
    # and would be far beyond the noise
    study = _study_of(MIN_TRIALS + 5, fold_spread=1e-4, slope=0.5)
    state = convergence(study, build_config("digits").spec.space)
    assert state is not None and not state.within_noise, state


def test_no_verdict_before_enough_trials_can_be_selected() -> None:
    assert convergence(_study_of(MIN_TRIALS - 1, fold_spread=0.05, slope=0.0),
                       build_config("digits").spec.space) is None


def test_recipes_sit_in_the_unit_cube_with_a_switch_and_a_value_per_regularizer() -> None:
    space = build_config("digits").spec.space
    n_switches = sum(bool(getattr(p, "off", False)) for p in space.params)
    point = encode(space, space.defaults())
    assert len(point) == len(space.params) + n_switches
    assert all(0.0 <= v <= 1.0 for v in point)
    drawn = random_recipes(space, 64, seed=0)
    assert drawn.shape == (64, len(point)) and drawn.min() >= 0 and drawn.max() <= 1


def test_the_trial_loop_stops_within_noise_and_records_why() -> None:
    quiet_optuna()
    study = _study_of(MIN_TRIALS + 2, fold_spread=0.05, slope=0.0)
    config = build_config("digits", n_trials=MIN_TRIALS + 10, stop_within_noise=True)

    def no_training(recipe, **_):  # noqa: ANN001, ANN003
        raise AssertionError("a search within noise trained another trial")

    tracker = MemoryTracker()
    parent = tracker.open_parent(config.name, config.settings())
    objective = Objective(config, None, [], no_training, tracker, parent)
    run_trials(study, objective, n_trials=config.n_trials)
    assert count_trials(study)["budget"] == MIN_TRIALS + 2
    record = study.user_attrs[CONVERGED_ATTR]
    assert record["n_trials"] == MIN_TRIALS + 2 and record["regret_bound"] < record["cv_error"]


def test_pruned_trials_count_at_the_estimate_they_were_pruned_on_unless_at_chance() -> None:
    study = _study_of(10, fold_spread=0.05, slope=0.0)
    assert convergence(study, build_config("digits").spec.space) is None  # 10 < MIN_TRIALS
    complete = study.trials[0]
    for number in range(MIN_TRIALS):
        value = 0.3 if number % 2 else math.log(10)  # half of them never left chance level
        study.add_trial(create_trial(state=TrialState.PRUNED, params=complete.params,
                                     distributions=complete.distributions,
                                     intermediate_values={0: 1.0, 9: value}))
    state = convergence(study, build_config("digits").spec.space)
    assert state is not None and state.n_trials == 10 + MIN_TRIALS // 2
