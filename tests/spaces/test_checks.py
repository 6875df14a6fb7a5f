"""Tests for spaces/checks.py: the helpers that build every validation message."""

from __future__ import annotations

import math

import pytest

from spaces.checks import check_choice, check_float, check_int, check_keys


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (0, 0), (4.0, 4), (-2, -2)])
def test_check_int_returns_int(value, expected):
    result = check_int("n", value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("value", [True, False, 2.5, "3", None, [1]])
def test_check_int_rejects_non_int(value):
    with pytest.raises(TypeError, match="'n_folds' must be an integer"):
        check_int("n_folds", value)


@pytest.mark.parametrize(("value", "low", "high"), [(1, 2, 20), (21, 2, 20), (-1, 0, None)])
def test_check_int_rejects_out_of_range(value, low, high):
    with pytest.raises(ValueError, match=r"'n_folds'=-?\d+ is out of range") as info:
        check_int("n_folds", value, low=low, high=high)
    assert f"[{low}, {'inf' if high is None else high}]" in str(info.value)


@pytest.mark.parametrize("value", [2, 20])
def test_check_int_accepts_closed_bounds(value):
    assert check_int("n_folds", value, low=2, high=20) == value


def test_check_int_states_a_large_int_bound_in_full():
    with pytest.raises(ValueError, match=r"expected an integer in \[0, 4294967295\]\.$"):
        check_int("--seed", 2**32, low=0, high=2**32 - 1)


def test_check_int_prefixes_where():
    with pytest.raises(ValueError, match=r"^spaces/x\.yaml: 'seed'"):
        check_int("seed", -1, low=0, where="spaces/x.yaml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (0.5, 0.5), ("1e-4", 1e-4), ("1E-3", 1e-3), ("2.5", 2.5), (" 3 ", 3.0)],
)
def test_check_float_returns_float(value, expected):
    result = check_float("l2", value)
    assert result == pytest.approx(expected)
    assert type(result) is float


@pytest.mark.parametrize("value", ["abc", "1e-4x", "", True, None, [0.1]])
def test_check_float_rejects_non_number(value):
    with pytest.raises(TypeError, match="'l2' must be a number"):
        check_float("l2", value)


@pytest.mark.parametrize(
    ("value", "kwargs"),
    [
        (-0.1, {"low": 0.0}),
        (1.0, {"low": 0.0, "high": 1.0, "high_open": True}),
        (0.0, {"low": 0.0, "low_open": True}),
        (1.5, {"high": 1.0}),
        (math.nan, {}),
        ("nan", {"low": 0.0}),
    ],
)
def test_check_float_rejects_out_of_range(value, kwargs):
    with pytest.raises(ValueError, match="'dropout'=.* is out of range"):
        check_float("dropout", value, **kwargs)


@pytest.mark.parametrize(
    ("value", "kwargs", "interval"),
    [
        (5.0, {"low": 0.0, "high": 1.0, "high_open": True}, "[0, 1)"),
        (-1.0, {"low": 0.0, "low_open": True}, "(0, inf]"),
        (3.0, {"high": 2.0}, "[-inf, 2]"),
    ],
)
def test_check_float_message_states_interval(value, kwargs, interval):
    with pytest.raises(ValueError) as info:
        check_float("x", value, **kwargs)
    assert interval in str(info.value)


@pytest.mark.parametrize("value", [0.0, 0.999])
def test_check_float_accepts_values_inside_half_open(value):
    assert check_float("dropout", value, low=0.0, high=1.0, high_open=True) == value


def test_check_choice_returns_allowed_value():
    assert check_choice("sampler", "tpe", ("tpe", "random")) == "tpe"


def test_check_choice_lists_choices():
    expected = "'sampler'='grid' is not allowed; expected one of: tpe, random"
    with pytest.raises(ValueError, match=expected):
        check_choice("sampler", "grid", ("tpe", "random"))


def test_check_keys_returns_copy():
    given = {"a": 1}
    result = check_keys("section", given, ("a", "b"))
    assert result == {"a": 1}
    assert result is not given


@pytest.mark.parametrize("allowed", [("a",), None])
def test_check_keys_none_is_empty(allowed):
    assert check_keys("section", None, allowed) == {}


def test_check_keys_any_key_when_allowed_is_none():
    assert check_keys("data", {"whatever": 1}, None) == {"whatever": 1}


def test_check_keys_unknown_key_lists_valid_keys():
    expected = r"unknown key 'n_fold' in 'search'\. Valid keys: n_folds, seed\."
    with pytest.raises(ValueError, match=expected):
        check_keys("search", {"n_fold": 3}, ("seed", "n_folds"))


@pytest.mark.parametrize("given", [[1, 2], "text", 3])
def test_check_keys_rejects_non_mapping(given):
    with pytest.raises(TypeError, match="'search' must be a mapping"):
        check_keys("search", given, ("a",))
