"""Tests for spaces/suggest.py: a `Space` as Optuna suggestions and KerasTuner hyperparameters."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import FixedTrial

from spaces import (
    FloatParam,
    IntParam,
    Space,
    default_params,
    load_study,
    sample_params,
    values_from_params,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# One of each kind: switchable log float, plain float, stepped int, log int.
MIXED = Space((
    FloatParam("l1", 1e-7, 1e-3, log=True, off=True, default=None),
    FloatParam("l2", 1e-6, 1e-2, log=True, off=True, default=1e-4),
    FloatParam("dropout", 0.0, 0.6, default=0.2),
    IntParam("patience", 2, 10, step=2, default=4),
    IntParam("batch_size", 8, 256, log=True, default=32),
))


@pytest.fixture(scope="module")
def digits_space() -> Space:
    return load_study("digits").space


def ask_many(space: Space, n_trials: int, seed: int, sampler: str = "random"):
    """Run a real study whose objective records what `sample_params` returned."""
    make = optuna.samplers.RandomSampler if sampler == "random" else optuna.samplers.TPESampler
    study = optuna.create_study(sampler=make(seed=seed))
    sampled = []
    for _ in range(n_trials):
        trial = study.ask()
        values = sample_params(space, trial)
        trial.set_user_attr("values", values)
        sampled.append(values)
        # Any deterministic loss of the values, so best_trial is meaningful.
        study.tell(trial, values["dropout"] + values["l2"] * 10 + values["patience"] / 100)
    return study, sampled


def test_sample_params_fixed_trial_all_on(digits_space):
    trial = FixedTrial({"l1_on": True, "l1": 1e-5, "l2_on": True, "l2": 3e-3, "dropout": 0.4,
                        "augment": 0.7, "patience": 9})
    values = sample_params(digits_space, trial)
    assert values == {"l1": 1e-5, "l2": 3e-3, "dropout": 0.4, "augment": 0.7, "patience": 9}
    assert type(values["patience"]) is int
    assert all(type(values[k]) is float for k in ("l1", "l2", "dropout", "augment"))


def test_sample_params_switch_off_gives_zero_without_value(digits_space):
    # FixedTrial raises for a parameter it does not hold, so l1/l2 are never asked for.
    trial = FixedTrial({"l1_on": False, "l2_on": False, "dropout": 0.0, "augment": 1.0,
                        "patience": 2})
    values = sample_params(digits_space, trial)
    assert values == {"l1": 0.0, "l2": 0.0, "dropout": 0.0, "augment": 1.0, "patience": 2}
    assert set(trial.params) == {"l1_on", "l2_on", "dropout", "augment", "patience"}


def test_sample_params_switch_on_needs_value(digits_space):
    trial = FixedTrial({"l1_on": True, "l2_on": False, "dropout": 0.1, "augment": 0.0,
                        "patience": 3})
    with pytest.raises(ValueError, match="l1"):
        sample_params(digits_space, trial)


def test_sample_params_returns_every_name_in_order(digits_space):
    trial = FixedTrial(default_params(digits_space))
    assert tuple(sample_params(digits_space, trial)) == digits_space.names


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_sample_params_real_study_within_bounds(seed, sampler):
    study, sampled = ask_many(MIXED, 60, seed, sampler)
    for values, trial in zip(sampled, study.trials):
        for p in MIXED.params:
            value = values[p.name]
            if isinstance(p, FloatParam) and p.off and not trial.params[p.switch]:
                assert value == 0.0
                assert p.name not in trial.params
                continue
            assert p.low <= value <= p.high, (p.name, value)
            assert trial.params[p.name] == value
        assert values["patience"] in {2, 4, 6, 8, 10}
        assert type(values["patience"]) is int and type(values["batch_size"]) is int


def test_sample_params_real_study_explores_switches():
    _, sampled = ask_many(MIXED, 100, seed=3)
    l1_zero = sum(v["l1"] == 0.0 for v in sampled)
    assert 20 < l1_zero < 80
    assert len({v["patience"] for v in sampled}) == 5


def test_sample_params_real_study_distributions():
    study, _ = ask_many(MIXED, 40, seed=4)
    dists = {}
    for trial in study.trials:
        dists.update(trial.distributions)
    assert dists["l1"] == optuna.distributions.FloatDistribution(1e-7, 1e-3, log=True)
    assert dists["dropout"] == optuna.distributions.FloatDistribution(0.0, 0.6)
    assert dists["patience"] == optuna.distributions.IntDistribution(2, 10, step=2)
    assert dists["batch_size"] == optuna.distributions.IntDistribution(8, 256, log=True)
    assert dists["l1_on"] == optuna.distributions.CategoricalDistribution([True, False])


def test_sample_params_log_scale_spreads_over_decades():
    # Log-uniform over [1e-7, 1e-3]: a quarter of the decades lie above 1e-4. A linear scale
    # would put ~90% of the samples there.
    _, sampled = ask_many(MIXED, 300, seed=5)
    on = [v["l1"] for v in sampled if v["l1"] > 0]
    above = sum(x > 1e-4 for x in on) / len(on)
    assert 0.1 < above < 0.45
    decades = {math.floor(math.log10(x)) for x in on}
    assert decades == {-7, -6, -5, -4}


@pytest.mark.parametrize("seed", [0, 7])
def test_values_from_params_round_trip(seed):
    study, _ = ask_many(MIXED, 30, seed)
    best = study.best_trial
    assert values_from_params(MIXED, best.params) == best.user_attrs["values"]
    for trial in study.trials:
        assert values_from_params(MIXED, trial.params) == trial.user_attrs["values"]


def test_values_from_params_missing_value_names_it(digits_space):
    params = {"l1_on": True, "l2_on": False, "dropout": 0.1, "augment": 0.0, "patience": 3}
    with pytest.raises(KeyError, match="'l1'"):
        values_from_params(digits_space, params)


def test_default_params_digits(digits_space):
    assert default_params(digits_space) == {
        "l1_on": False, "l2_on": True, "l2": 1e-4, "dropout": 0.2, "augment": 0.0, "patience": 5,
    }


def test_default_params_skip_params_without_default():
    space = Space((FloatParam("dropout", 0.0, 0.5), IntParam("patience", 1, 5, default=2)))
    assert default_params(space) == {"patience": 2}
    assert space.defaults() == {"patience": 2}


@pytest.mark.parametrize("space_name", ["digits", "mixed"])
def test_default_params_enqueue_reproduces_defaults(space_name, digits_space):
    space = digits_space if space_name == "digits" else MIXED
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(default_params(space))
    trial = study.ask()
    values = sample_params(space, trial)
    assert values == space.defaults()
    assert trial.params == default_params(space)
    assert values_from_params(space, trial.params) == space.defaults()


@pytest.fixture(scope="module")
def keras_tuner():
    return pytest.importorskip("keras_tuner")


def _hp_configs(hp) -> dict:
    return {h.name: (type(h).__name__, h.get_config()) for h in hp.space}


def test_to_keras_tuner_digits(keras_tuner, digits_space):
    from spaces import to_keras_tuner

    configs = _hp_configs(to_keras_tuner(digits_space))
    assert list(configs) == ["l1_on", "l1", "l2_on", "l2", "dropout", "augment", "patience"]
    assert configs["l1_on"] == ("Boolean", {"name": "l1_on", "default": False, "conditions": []})
    assert configs["l2_on"][1]["default"] is True
    kind, l1 = configs["l1"]
    assert kind == "Float"
    assert (l1["min_value"], l1["max_value"], l1["sampling"]) == (1e-7, 1e-3, "log")
    kind, l2 = configs["l2"]
    assert (l2["min_value"], l2["max_value"], l2["sampling"], l2["default"]) == (
        1e-6, 1e-2, "log", 1e-4)
    kind, dropout = configs["dropout"]
    assert (kind, dropout["min_value"], dropout["max_value"], dropout["sampling"],
            dropout["default"]) == ("Float", 0.0, 0.6, "linear", 0.2)
    assert configs["augment"][1]["default"] == 0.0
    kind, patience = configs["patience"]
    assert (kind, patience["min_value"], patience["max_value"], patience["step"],
            patience["sampling"], patience["default"]) == ("Int", 2, 10, 1, "linear", 5)


def test_to_keras_tuner_switch_scopes_value(keras_tuner, digits_space):
    from spaces import to_keras_tuner

    configs = _hp_configs(to_keras_tuner(digits_space))
    for name in ("l1", "l2"):
        conditions = configs[name][1]["conditions"]
        assert conditions == [{"class_name": "Parent",
                               "config": {"name": f"{name}_on", "values": [True]}}]
    for name in ("dropout", "augment", "patience", "l1_on", "l2_on"):
        assert configs[name][1]["conditions"] == []


def test_to_keras_tuner_inactive_value_is_absent(keras_tuner, digits_space):
    from spaces import to_keras_tuner

    hp = to_keras_tuner(digits_space)
    assert not hp.is_active("l1")
    assert hp.is_active("l2")
    assert "l1" not in hp.values


def test_values_from_keras_tuner_defaults(keras_tuner, digits_space):
    from spaces import to_keras_tuner, values_from_keras_tuner

    values = values_from_keras_tuner(digits_space, to_keras_tuner(digits_space))
    assert values == digits_space.defaults()


def test_to_keras_tuner_log_int_and_step(keras_tuner):
    from spaces import to_keras_tuner, values_from_keras_tuner

    hp = to_keras_tuner(MIXED)
    configs = _hp_configs(hp)
    assert (configs["batch_size"][1]["sampling"], configs["batch_size"][1]["min_value"],
            configs["batch_size"][1]["max_value"]) == ("log", 8, 256)
    assert configs["patience"][1]["step"] == 2
    assert values_from_keras_tuner(MIXED, hp) == MIXED.defaults() | {"l1": 0.0}


@pytest.mark.parametrize("seed", [0, 1])
def test_values_from_keras_tuner_random_samples_within_bounds(keras_tuner, seed):
    from spaces import to_keras_tuner, values_from_keras_tuner

    hp = to_keras_tuner(MIXED)
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("val_loss", "min"), max_trials=50, seed=seed,
        hyperparameters=hp,
    )
    seen_off = seen_on = False
    for i in range(40):
        drawn = hp.copy()
        drawn.values = oracle.populate_space(str(i))["values"]
        values = values_from_keras_tuner(MIXED, drawn)
        assert list(values) == list(MIXED.names)
        if drawn.values["l1_on"]:
            seen_on = True
            assert 1e-7 <= values["l1"] <= 1e-3
            assert values["l1"] == drawn.values["l1"]
        else:
            seen_off = True
            assert values["l1"] == 0.0
            assert "l1" not in drawn.values
        assert values["patience"] in {2, 4, 6, 8, 10}
        assert 8 <= values["batch_size"] <= 256 and type(values["batch_size"]) is int
        assert 0.0 <= values["dropout"] <= 0.6
    assert seen_on and seen_off


def test_values_from_keras_tuner_switched_on(keras_tuner, digits_space):
    from spaces import to_keras_tuner, values_from_keras_tuner

    hp = to_keras_tuner(digits_space)
    hp.values.update({"l1_on": True, "l1": 2e-5, "l2_on": False})
    hp.values.pop("l2")
    values = values_from_keras_tuner(digits_space, hp)
    assert values == {"l1": 2e-5, "l2": 0.0, "dropout": 0.2, "augment": 0.0, "patience": 5}


def test_to_keras_tuner_carries_the_later_regularizers(keras_tuner):
    from spaces import to_keras_tuner, values_from_keras_tuner

    space = Space((
        FloatParam("weight_decay", 1e-3, 0.3, log=True, off=True, default=0.05),
        FloatParam("label_smoothing", 0.01, 0.3, off=True, default=None),
        FloatParam("mixup", 0.1, 1.0, log=True, off=True, default=0.2),
        FloatParam("cutmix", 0.1, 2.0, off=True, default=None),
    ))
    hp = to_keras_tuner(space)
    values = values_from_keras_tuner(space, hp)
    assert values == {"weight_decay": 0.05, "label_smoothing": 0.0, "mixup": 0.2, "cutmix": 0.0}
    assert values == sample_params(space, FixedTrial(default_params(space)))
