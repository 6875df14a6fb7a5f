"""Tests for trainers/recipe.py: the frozen value object one trial trains with."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from spaces.strengths import STRENGTHS
from trainers.recipe import Recipe

FIELDS = ("l1", "l2", "dropout", "augment", "weight_decay", "label_smoothing", "mixup",
          "cutmix", "patience", "learning_rate", "batch_size", "max_epochs")


def test_recipe_defaults():
    assert Recipe().to_dict() == {
        "l1": 0.0, "l2": 0.0, "dropout": 0.0, "augment": 0.0, "weight_decay": 0.0,
        "label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0, "patience": 5,
        "learning_rate": 1e-3, "batch_size": 64, "max_epochs": 20,
    }


@pytest.mark.parametrize(
    "values",
    [
        {"l1": 1e-5, "l2": 1e-4, "dropout": 0.5, "augment": 1.0, "patience": 1},
        {"dropout": 0.0, "augment": 0.0, "learning_rate": 0.1, "batch_size": 1, "max_epochs": 1},
        {"dropout": 0.999, "l1": 0.0, "l2": 0.0},
    ],
)
def test_recipe_accepts_edge_values(values):
    recipe = Recipe(**values)
    for key, value in values.items():
        assert getattr(recipe, key) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("l1", -1e-6),
        ("l2", -0.1),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("dropout", math.nan),
        ("augment", 1.01),
        ("augment", -0.5),
        ("weight_decay", -0.01),
        ("weight_decay", 1.5),
        ("label_smoothing", 1.0),
        ("mixup", -0.2),
        ("cutmix", 10.5),
        ("patience", 0),
        ("batch_size", 0),
        ("max_epochs", -1),
        ("learning_rate", 0.0),
        ("learning_rate", -1e-3),
    ],
)
def test_recipe_rejects_bad_value_naming_field(field, value):
    with pytest.raises(ValueError, match=rf"^Recipe: {field}=") as info:
        Recipe(**{field: value})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("l1", math.nan), ("learning_rate", math.nan), ("patience", 2.5), ("batch_size", "64"),
     ("max_epochs", True), ("l2", None)],
)
def test_recipe_rejects_wrong_type_or_non_finite(field, value):
    with pytest.raises((TypeError, ValueError), match=field):
        Recipe(**{field: value})


def test_recipe_is_frozen():
    recipe = Recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.l1 = 0.1  # type: ignore[misc]


def test_recipe_to_dict_is_json():
    values = Recipe(l1=1e-5, dropout=0.3, patience=7).to_dict()
    assert tuple(values) == FIELDS
    assert json.loads(json.dumps(values)) == values


@pytest.mark.parametrize(
    "recipe",
    [Recipe(), Recipe(l1=1e-6, l2=3e-4, dropout=0.25, augment=0.5, patience=3,
                      learning_rate=3e-4, batch_size=32, max_epochs=40)],
)
def test_recipe_round_trip(recipe):
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_recipe_from_dict_partial_uses_defaults():
    recipe = Recipe.from_dict({"dropout": 0.4})
    assert recipe == Recipe(dropout=0.4)


def test_recipe_from_dict_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown key 'drop_out'") as info:
        Recipe.from_dict({"drop_out": 0.2, "l1": 0.0})
    assert f"Valid keys: {', '.join(sorted(FIELDS))}." in str(info.value)


def test_recipe_from_dict_validates_values():
    with pytest.raises(ValueError, match="dropout"):
        Recipe.from_dict({"dropout": 1.5})


def test_recipe_replace_checks_again():
    recipe = Recipe(dropout=0.2)
    assert recipe.replace(dropout=0.3) == Recipe(dropout=0.3)
    assert recipe.dropout == 0.2
    with pytest.raises(ValueError, match="patience"):
        recipe.replace(patience=0)


def test_recipe_fields_are_the_strengths_table_in_order() -> None:
    assert [f.name for f in dataclasses.fields(Recipe)] == [s.name for s in STRENGTHS]


@pytest.mark.parametrize("strength", STRENGTHS, ids=lambda s: s.name)
def test_recipe_refuses_each_fields_bound_from_the_table(strength) -> None:
    below = strength.low if strength.low_open else strength.low - 1
    with pytest.raises(ValueError, match=rf"^Recipe: {strength.name}=.* must be "):
        Recipe(**{strength.name: strength.kind(below)})
    if strength.high is not None:
        above = strength.high if strength.high_open else strength.high + 1
        with pytest.raises(ValueError, match=rf"^Recipe: {strength.name}="):
            Recipe(**{strength.name: strength.kind(above)})
