"""Paired comparisons over folds and images, rank agreement, verdicts and design warnings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from search.stats import (
    PairedDiff,
    design_warnings,
    paired_bootstrap,
    paired_folds,
    rank_agreement,
    verdict,
)

# the digits preset's space, as Space.to_dict() writes it
SPACE = {
    "l1": {"type": "float", "low": 1e-7, "high": 1e-3, "log": True, "off": True, "default": None},
    "l2": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True, "off": True, "default": 1e-4},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6, "log": False, "off": False,
                "default": 0.2},
    "augment": {"type": "float", "low": 0.0, "high": 1.0, "log": False, "off": False,
                "default": 0.0},
    "patience": {"type": "int", "low": 2, "high": 10, "step": 1, "log": False, "default": 5},
}
MIDDLE = {"l1": 0.0, "l2": 1e-4, "dropout": 0.3, "augment": 0.5, "patience": 5}


# ---- paired over folds -----------------------------------------------------------------------

@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_paired_folds_matches_a_hand_computed_t_interval(confidence: float) -> None:
    selected = [1.00, 1.20, 0.90, 1.10, 1.05]
    baseline = [1.10, 1.25, 1.00, 1.30, 1.10]
    d = np.subtract(selected, baseline)
    se = d.std(ddof=1) / math.sqrt(5)
    half = scipy_stats.t.ppf(1 - (1 - confidence) / 2, df=4) * se
    diff = paired_folds(selected, baseline, confidence)
    assert diff.mean == pytest.approx(-0.1)
    assert (diff.low, diff.high) == pytest.approx((-0.1 - half, -0.1 + half))
    # one-sided: the chance of a t this low if the recipes were equal
    assert diff.p == pytest.approx(scipy_stats.t.cdf(-0.1 / se, df=4))
    assert diff.n == 5 and diff.unit == "fold" and diff.note == ""


def test_paired_folds_cancels_the_spread_both_recipes_share() -> None:
    # folds differ by a lot, the recipes by a steady 0.05: paired, that is clear
    baseline = [0.5, 1.5, 1.0, 2.0, 0.8]
    selected = [b - 0.05 + e for b, e in zip(baseline, [0.004, -0.003, 0.002, -0.001, 0.0])]
    diff = paired_folds(selected, baseline)
    assert diff.outcome == "better" and diff.high < 0 and diff.p < 0.001
    assert diff.mean == pytest.approx(-0.0496)


@pytest.mark.parametrize("n", [0, 1])
def test_paired_folds_below_two_folds_gives_no_interval_and_says_why(n: int) -> None:
    diff = paired_folds([1.0] * n, [1.1] * n)
    assert math.isnan(diff.low) and math.isnan(diff.high) and math.isnan(diff.p)
    assert diff.outcome == "unknown" and "at least 2 folds" in diff.note
    assert "cannot be compared" in verdict(diff, "none") and diff.note in verdict(diff, "none")


def test_paired_folds_with_two_folds_notes_its_one_degree_of_freedom() -> None:
    diff = paired_folds([1.0, 1.2], [1.1, 1.25])
    assert math.isfinite(diff.low) and "1 degree of freedom" in diff.note
    assert diff.high - diff.low == pytest.approx(
        2 * scipy_stats.t.ppf(0.975, 1) * np.std([-0.1, -0.05], ddof=1) / math.sqrt(2))


def test_paired_folds_with_identical_recipes_is_not_distinguishable() -> None:
    diff = paired_folds([1.0, 1.2, 0.9], [1.0, 1.2, 0.9])
    assert diff.mean == 0 and diff.outcome == "unclear"
    assert verdict(diff, "none").startswith("not distinguishable from none")


def test_paired_folds_rejects_bad_input_naming_it() -> None:
    with pytest.raises(ValueError, match="selected has 3 values and baseline 2"):
        paired_folds([1.0, 1.1, 1.2], [1.0, 1.1])
    with pytest.raises(ValueError, match="'baseline' has a value that is not finite"):
        paired_folds([1.0, 1.1], [1.0, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        paired_folds([1.0, 1.1], [1.0, 1.2], confidence=1.0)


# ---- paired bootstrap over images ------------------------------------------------------------

def _images(shift: float, n: int = 2000, noise: float = 0.5, seed: int = 0):
    """Per-image losses of a baseline and of a recipe that is ``shift`` lower on average."""
    rng = np.random.default_rng(seed)
    baseline = rng.gamma(2.0, 0.6, size=n)  # hard images are hard for both recipes
    return baseline - shift + rng.normal(0.0, noise, size=n), baseline


def test_paired_bootstrap_contains_the_true_shift_and_excludes_0_when_it_is_large() -> None:
    selected, baseline = _images(shift=0.1)
    diff = paired_bootstrap(selected, baseline)
    assert diff.low < -0.1 < diff.high and diff.low < diff.mean < diff.high
    assert diff.high < 0 and diff.outcome == "better"
    # a mean of 2000 differences with sd 0.5: the normal approximation's half-width
    assert (diff.high - diff.low) / 2 == pytest.approx(1.96 * 0.5 / math.sqrt(2000), rel=0.1)
    assert (diff.n, diff.n_resamples, diff.seed) == (2000, 10_000, 0)
    assert "10,000 resamples, seed 0" in diff.method


def test_paired_bootstrap_contains_0_when_there_is_no_shift() -> None:
    diff = paired_bootstrap(*_images(shift=0.0, seed=3))
    assert diff.low < 0 < diff.high and diff.outcome == "unclear"
    assert "at this number of held-out images" in verdict(diff, "none")


def test_paired_bootstrap_pairs_images() -> None:
    # per-image spread 1 shared by both, a steady gain of 0.02: only pairing sees it
    rng = np.random.default_rng(1)
    baseline = rng.normal(2.0, 1.0, size=500)
    selected = baseline - 0.02 + rng.normal(0.0, 0.01, size=500)
    diff = paired_bootstrap(selected, baseline, n_resamples=2000)
    assert diff.outcome == "better" and diff.high - diff.low < 0.01


def test_paired_bootstrap_same_seed_same_interval() -> None:
    selected, baseline = _images(shift=0.05, n=300)
    a = paired_bootstrap(selected, baseline, seed=7, n_resamples=2000)
    b = paired_bootstrap(selected, baseline, seed=7, n_resamples=2000)
    c = paired_bootstrap(selected, baseline, seed=8, n_resamples=2000)
    assert (a.low, a.high) == (b.low, b.high)
    assert (a.low, a.high) != (c.low, c.high)


def test_paired_bootstrap_compares_accuracies_where_higher_is_better() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.random(1000) < 0.80
    selected = baseline | (rng.random(1000) < 0.5)  # right where the baseline is, and more
    diff = paired_bootstrap(selected, baseline, better="higher", metric="held-out accuracy")
    assert diff.mean == pytest.approx(selected.mean() - baseline.mean())
    assert diff.low > 0 and diff.outcome == "better"
    assert verdict(diff, "none").startswith(f"beats none by {diff.mean:.3g} in held-out accuracy")
    # the same arrays the other way round: worse
    assert paired_bootstrap(baseline, selected, better="higher").outcome == "worse"


def test_paired_bootstrap_rejects_bad_input_naming_it() -> None:
    with pytest.raises(ValueError, match="per image"):
        paired_bootstrap(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap(np.zeros(5), np.zeros(5), n_resamples=0)
    with pytest.raises(ValueError, match="better"):
        paired_bootstrap(np.zeros(5), np.zeros(5), better="smaller")
    with pytest.raises(ValueError, match="one-dimensional"):
        paired_bootstrap(np.zeros((5, 2)), np.zeros((5, 2)))
    one = paired_bootstrap(np.zeros(1), np.ones(1))
    assert one.outcome == "unknown" and "nothing to resample" in one.note


def test_paired_diff_to_dict_is_strict_json() -> None:
    for diff in (paired_folds([1.0], [1.1]), paired_bootstrap(*_images(0.1, n=50))):
        data = json.loads(json.dumps(diff.to_dict(), allow_nan=False))
        assert data["outcome"] == diff.outcome and data["n"] == diff.n
    assert json.loads(json.dumps(paired_folds([1.0], [1.1]).to_dict()))["low"] is None


# ---- verdicts --------------------------------------------------------------------------------

def _fold_diff(mean: float, low: float, high: float) -> PairedDiff:
    return PairedDiff("CV loss", mean, low, high, 0.95, 5, "fold", "paired t over 5 folds",
                      p=0.004)


def test_verdict_says_the_margin_as_a_gain_with_its_interval() -> None:
    assert verdict(_fold_diff(-0.021, -0.034, -0.008), "baseline 'none'") == (
        "beats baseline 'none' by 0.021 in CV loss (95% CI 0.008 to 0.034; one-sided "
        "p = 0.004 over 5 folds), beyond fold noise")
    assert verdict(_fold_diff(0.021, 0.008, 0.034), "L2").startswith(
        "is worse than L2 by 0.021 in CV loss (95% CI 0.008 to 0.034;")
    unclear = verdict(_fold_diff(-0.004, -0.02, 0.012), "dropout")
    assert unclear.startswith("not distinguishable from dropout in CV loss at this number of "
                              "folds (gain 0.004, 95% CI -0.012 to 0.02;")


# ---- rank agreement --------------------------------------------------------------------------

def test_rank_agreement_of_a_perfectly_ordered_list_is_1() -> None:
    agreement = rank_agreement([1.0, 1.2, 1.5, 1.9, 2.4], [0.9, 1.3, 1.35, 2.0, 2.1])
    assert agreement.rho == pytest.approx(1.0) and agreement.n == 5
    assert agreement.verdict.startswith("the CV ranking carried over to held-out data")


def test_rank_agreement_of_a_reversed_list_is_weak() -> None:
    agreement = rank_agreement([1.0, 1.2, 1.5, 1.9, 2.4], [2.0, 1.9, 1.5, 1.2, 1.0])
    assert agreement.rho == pytest.approx(-1.0)
    assert agreement.verdict.startswith("weak: CV ranking and held-out ranking disagree")


def test_rank_agreement_matches_scipy_in_between() -> None:
    cv, heldout = [1.0, 1.2, 1.5, 1.9, 2.4, 2.5], [1.2, 1.0, 1.5, 2.5, 1.9, 2.4]
    expected = scipy_stats.spearmanr(cv, heldout)
    agreement = rank_agreement(cv, heldout)
    assert (agreement.rho, agreement.p) == pytest.approx((expected.statistic, expected.pvalue))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rank_agreement_with_fewer_than_4_recipes_cannot_tell(n: int) -> None:
    agreement = rank_agreement(list(range(n)), list(range(n)))
    assert agreement.verdict.startswith(f"too few recipes (n={n} < 4)")
    json.dumps(agreement.to_dict(), allow_nan=False)


def test_rank_agreement_of_constant_losses_cannot_rank() -> None:
    agreement = rank_agreement([1.0, 1.0, 1.0, 1.0], [0.5, 0.7, 0.6, 0.9])
    assert math.isnan(agreement.rho) and agreement.verdict.startswith("cannot rank")
    with pytest.raises(ValueError, match="cv has 2 values and heldout 3"):
        rank_agreement([1.0, 2.0], [1.0, 2.0, 3.0])


# ---- design warnings -------------------------------------------------------------------------

def test_design_warnings_flag_the_epoch_cap_when_most_folds_ran_into_it() -> None:
    # the digits study's best trial (DESIGN.md): best epochs 23/28/27 of 30
    lines = design_warnings([23, 28, 27], patience=7, max_epochs=30, recipe=MIDDLE, space=SPACE)
    assert len(lines) == 1 and "epoch cap" in lines[0] and "raise --epochs (now 30)" in lines[0]
    assert "3 of 3 folds" in lines[0]


@pytest.mark.parametrize("best_epochs", [[5, 8, 6], [23, 10, 5], [22, 28, 10, 11]])
def test_design_warnings_leave_folds_that_early_stopping_ended(best_epochs: list[int]) -> None:
    # 22 + 7 = 29 < 30: early stopping ended that fold; one capped fold of three is no majority
    assert design_warnings(best_epochs, 7, 30, MIDDLE, SPACE) == []


@pytest.mark.parametrize("name,value,end", [
    ("l2", 1.1e-6, "low"), ("l2", 9e-3, "high"), ("l1", 1.2e-7, "low"),
    ("dropout", 0.59, "high"), ("patience", 2, "low"), ("patience", 10, "high"),
])
def test_design_warnings_flag_a_value_at_the_edge_of_its_range(name: str, value: float,
                                                               end: str) -> None:
    lines = design_warnings([3, 4, 5], 5, 30, {**MIDDLE, name: value}, SPACE)
    assert len(lines) == 1 and f"{name}=" in lines[0] and f"at the {end} end" in lines[0]
    change = "lower" if end == "low" else "raise"
    assert f"widen the range ({change} space.{name}.{end})" in lines[0]


@pytest.mark.parametrize("name,value", [
    ("l2", 1e-5),     # 1/4 of the way on the log scale (0.1% on a linear one)
    ("l2", 1e-4), ("l1", 1e-5), ("dropout", 0.3), ("patience", 6),
    ("l1", 0.0),      # off: a point of the space, not an end of the range
    ("dropout", 0.0), ("augment", 1.0),  # the end of what the parameter can take: nothing wider
])
def test_design_warnings_leave_a_value_inside_its_range(name: str, value: float) -> None:
    assert design_warnings([3, 4, 5], 5, 30, {**MIDDLE, name: value}, SPACE) == []


@pytest.mark.parametrize("n_folds", [1, 2])
def test_design_warnings_say_too_few_folds(n_folds: int) -> None:
    lines = design_warnings([3] * n_folds, 5, 30, MIDDLE, SPACE)
    assert len(lines) == 1 and f"only {n_folds} fold" in lines[0] and "--folds" in lines[0]


def test_design_warnings_reject_a_best_epoch_past_max_epochs() -> None:
    with pytest.raises(ValueError, match="best_epochs"):
        design_warnings([3, 30, 5], 5, 30, MIDDLE, SPACE)
    with pytest.raises(ValueError, match="patience"):
        design_warnings([3, 4, 5], 0, 30, MIDDLE, SPACE)


@pytest.mark.parametrize("complete,at_chance,random,expected", [
    (20, 5, 5, ["never beat chance"]),  # a quarter at chance: the space reaches too far
    (20, 4, 5, []),
    (3, 0, 5, ["still random"]),
    (3, 0, 0, []),  # random search never models: nothing to warn of
    (2, 1, 5, ["never beat chance", "still random"]),
])
def test_search_warnings(complete: int, at_chance: int, random: int, expected: list[str]) -> None:
    from search.stats import search_warnings

    lines = search_warnings(complete, at_chance, random)
    assert len(lines) == len(expected)
    assert all(words in line for words, line in zip(expected, lines))
