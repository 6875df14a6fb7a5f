"""Is the selected recipe's win over a baseline larger than the noise? NumPy and SciPy only.

The held-out report compares recipes that were all trained on the same k folds and scored on the
same held-out images, so every comparison is paired: per fold (a t-interval and a one-sided
paired t-test over the folds' best validation losses) and per image (a paired bootstrap over
the held-out images). `rank_agreement` asks whether the order cross-validation put the recipes
in held on held-out data, and `design_warnings` names what in the study's design limits the
answer (the epoch cap, the edge of a searched range, too few folds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from spaces.checks import check_float, check_int
from spaces.space import FLOAT_DOMAINS, INT_DOMAINS

__all__ = [
    "EDGE_FRACTION", "MIN_FOLDS", "MIN_RECIPES", "Agreement", "PairedDiff", "design_warnings",
    "paired_bootstrap", "paired_folds", "rank_agreement", "verdict",
]

# A selected value this close to an end of its searched range (as a fraction of the range, on
# the log scale for a log parameter) suggests the best value may lie beyond that end.
EDGE_FRACTION = 0.05
# With 2 folds the t-interval has one degree of freedom (t = 12.7 at 95%): only a difference
# many times the spread between the two folds could count, so the paired test has no power.
MIN_FOLDS = 3
# Spearman's rho over 3 recipes takes only four values; below 4 there is no ranking to judge.
MIN_RECIPES = 4
# a share of complete trials at chance level that says the space reaches too far
AT_CHANCE_SHARE = 0.25
# rho at or above STRONG: the ranking carried over; below WEAK: it did not.
STRONG_RHO, WEAK_RHO = 0.7, 0.4

Better = Literal["lower", "higher"]
_UNIT_NOISE = {"fold": "fold noise", "image": "image-to-image noise"}
_UNIT_COUNT = {"fold": "at this number of folds", "image": "at this number of held-out images"}


@dataclass(frozen=True)
class PairedDiff:
    """Selected minus baseline, paired over folds or over held-out images.

    ``low``/``high`` bound the two-sided ``confidence`` interval of ``mean``; they are NaN when
    there is too little data for one, and ``note`` says why. ``better`` tells which sign of the
    difference is a win for the selected recipe ("lower" for a loss, "higher" for accuracy).
    """

    metric: str
    mean: float
    low: float
    high: float
    confidence: float
    n: int
    unit: Literal["fold", "image"]
    method: str
    better: Better = "lower"
    p: float = math.nan  # one-sided paired t-test, selected lower (folds only)
    n_resamples: int | None = None
    seed: int | None = None
    note: str = ""

    @property
    def outcome(self) -> Literal["better", "worse", "unclear", "unknown"]:
        """Where the interval lies: on the selected recipe's winning side of 0, or not.

        "better" or "worse" when the whole interval lies on one side of 0, "unclear" when it
        spans 0, "unknown" when there is no interval.
        """
        if math.isnan(self.low) or math.isnan(self.high):
            return "unknown"
        wins = self.high < 0 if self.better == "lower" else self.low > 0
        loses = self.low > 0 if self.better == "lower" else self.high < 0
        return "better" if wins else "worse" if loses else "unclear"

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-ready values (NaN becomes None), with ``outcome``."""
        return {**_json_ready(asdict(self)), "outcome": self.outcome}


@dataclass(frozen=True)
class Agreement:
    """How well the CV ranking of the candidates predicted their held-out ranking."""

    rho: float  # Spearman rank correlation; NaN when it cannot be computed
    p: float
    n: int
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-ready values (NaN becomes None)."""
        return _json_ready(asdict(self))


def paired_folds(
    selected: Sequence[float],
    baseline: Sequence[float],
    confidence: float = 0.95,
    *,
    metric: str = "CV loss",
) -> PairedDiff:
    """Compare two recipes fold by fold: mean difference, t-interval and one-sided p.

    Use it on the best-epoch validation losses of the selected trial and of a baseline; both
    were trained on the same folds, so fold ``i`` of one is paired with fold ``i`` of the other
    and the fold-to-fold spread that both share cancels.

    Args:
        selected: the selected recipe's value per fold, in fold order.
        baseline: the baseline's value per fold, in the same order.
        confidence: of the two-sided interval, in (0, 1).
        metric: what the values are, for the verdict.

    Returns:
        ``mean`` of selected minus baseline; the t-interval over folds (n - 1 degrees of
        freedom); ``p`` of `scipy.stats.ttest_rel` with ``alternative="less"`` (small when the
        selected recipe is lower). Fewer than 2 folds: interval and ``p`` are NaN and ``note``
        says why.

    Raises:
        ValueError: the two have different lengths, a value is not finite, or ``confidence``
            is outside (0, 1).
    """
    confidence = check_float("confidence", confidence, low=0.0, high=1.0, low_open=True,
                             high_open=True)
    diff = _differences(selected, baseline, unit="fold")
    n = len(diff)
    method = f"paired t over {n} folds"
    mean = float(diff.mean()) if n else math.nan
    if n < 2:
        return PairedDiff(metric, mean, math.nan, math.nan, confidence, n, "fold", method,
                          note=f"{n} fold{'' if n == 1 else 's'}: a paired test needs at "
                               "least 2 folds to measure the spread between them")
    if np.ptp(diff) == 0:
        # no spread: the t statistic is 0/0 or +-inf, and scipy warns
        p = 0.0 if mean < 0 else 1.0 if mean > 0 else math.nan
        return PairedDiff(metric, mean, mean, mean, confidence, n, "fold", method, p=p,
                          note="every fold differs by exactly the same amount")
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * diff.std(ddof=1) / math.sqrt(n)
    p = float(stats.ttest_rel(np.asarray(selected, float), np.asarray(baseline, float),
                              alternative="less").pvalue)
    note = "" if n >= MIN_FOLDS else (
        f"{n} folds: the interval has {n - 1} degree of freedom and rarely excludes 0")
    return PairedDiff(metric, mean, mean - half, mean + half, confidence, n, "fold", method,
                      p=p, note=note)


def paired_bootstrap(
    selected: np.ndarray,
    baseline: np.ndarray,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    better: Better = "lower",
    metric: str = "held-out loss",
) -> PairedDiff:
    """Compare two recipes image by image on the held-out split: a paired bootstrap interval.

    Use it on `trainers.fit.FinalResult.heldout_losses` (``better="lower"``) or
    ``heldout_correct`` (0/1, ``better="higher"``, ``metric="held-out accuracy"``) of the
    selected recipe and a baseline. Each resample draws images with replacement and takes the
    same images from both, so what makes an image hard for both recipes cancels.

    Args:
        selected: one value per held-out image.
        baseline: one value per held-out image, same images in the same order.
        n_resamples: bootstrap resamples.
        seed: of the resampling (`numpy.random.default_rng`): the same seed gives the same
            interval.
        confidence: of the two-sided percentile interval, in (0, 1).
        better: which sign of selected minus baseline is a win.
        metric: what the values are, for the verdict.

    Returns:
        ``mean`` of selected minus baseline over the images and its percentile interval;
        ``p`` is NaN. Fewer than 2 images: the interval is NaN and ``note`` says why.

    Raises:
        ValueError: the arrays differ in length or are not one-dimensional, a value is not
            finite, ``n_resamples`` < 1, or ``confidence`` is outside (0, 1).
    """
    n_resamples = check_int("n_resamples", n_resamples, low=1)
    seed = check_int("seed", seed, low=0)
    confidence = check_float("confidence", confidence, low=0.0, high=1.0, low_open=True,
                             high_open=True)
    if better not in ("lower", "higher"):
        raise ValueError(f"better={better!r}; expected 'lower' or 'higher'.")
    diff = _differences(selected, baseline, unit="image")
    n = len(diff)
    method = f"paired bootstrap over {n:,} images, {n_resamples:,} resamples, seed {seed}"
    mean = float(diff.mean()) if n else math.nan
    if n < 2:
        return PairedDiff(metric, mean, math.nan, math.nan, confidence, n, "image", method,
                          better=better, n_resamples=n_resamples, seed=seed,
                          note=f"{n} image{'' if n == 1 else 's'}: nothing to resample")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # resample in chunks of about 4M indices: 10,000 resamples of 10,000 images at once would
    # take 800 MB
    chunk = max(1, (1 << 22) // n)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PairedDiff(metric, mean, float(low), float(high), confidence, n, "image", method,
                      better=better, n_resamples=n_resamples, seed=seed)


def rank_agreement(cv: Sequence[float], heldout: Sequence[float]) -> Agreement:
    """Check whether the candidates' CV ranking held on the held-out split (Spearman's rho).

    Use it over every candidate of the report (the selected trial and the baselines): a low
    rho means the CV losses that chose the recipe did not predict held-out losses, so the
    selection itself is in doubt, whatever the winner's margin.

    Args:
        cv: each candidate's mean CV loss.
        heldout: the same candidates' held-out losses, in the same order.

    Returns:
        rho and its p from `scipy.stats.spearmanr`, the number of candidates, and a verdict in
        words. Fewer than `MIN_RECIPES` candidates: rho is still computed where it can be, and
        the verdict says there are too few to tell.

    Raises:
        ValueError: the two have different lengths or a value is not finite.
    """
    cv_values = _finite("cv", cv)
    heldout_values = _finite("heldout", heldout)
    if len(cv_values) != len(heldout_values):
        raise ValueError(f"cv has {len(cv_values)} values and heldout {len(heldout_values)}; "
                         "expected one of each per candidate, in the same order.")
    n = len(cv_values)
    if n < 2 or np.ptp(cv_values) == 0 or np.ptp(heldout_values) == 0:
        rho = p = math.nan
    else:
        result = stats.spearmanr(cv_values, heldout_values)
        rho, p = float(result.statistic), float(result.pvalue)
    over = f"Spearman {rho:.2f}, p = {p:.2g}, over {n} recipes"
    if n < MIN_RECIPES:
        words = f"too few recipes (n={n} < {MIN_RECIPES}) to tell whether the CV ranking held"
    elif math.isnan(rho):
        words = "cannot rank: every candidate has the same CV loss or the same held-out loss"
    elif rho >= STRONG_RHO:
        words = f"the CV ranking carried over to held-out data ({over})"
    elif rho >= WEAK_RHO:
        words = f"partly: the CV ranking carried over only in part ({over})"
    else:
        words = f"weak: CV ranking and held-out ranking disagree ({over})"
    return Agreement(rho, p, n, words)


def verdict(diff: PairedDiff, what: str) -> str:
    """Say in one sentence whether the selected recipe beats ``what`` beyond the noise.

    The selected recipe beats the baseline when the whole interval lies on its winning side
    of 0 (for the t-interval at 95%, that is a one-sided p below 0.025).

    Args:
        diff: from `paired_folds` or `paired_bootstrap`.
        what: the baseline's name, e.g. ``"baseline 'none'"``.

    Returns:
        A sentence without a subject, e.g. "beats baseline 'none' by 0.021 in CV loss (95% CI
        0.008 to 0.034; one-sided p = 0.004 over 5 folds), beyond fold noise".
    """
    if diff.outcome == "unknown":
        return f"cannot be compared with {what} on {diff.metric}: {diff.note}"
    # say the margin as a gain for the selected recipe: positive when it wins
    sign = -1.0 if diff.better == "lower" else 1.0
    gain, low, high = sign * diff.mean, *sorted((sign * diff.low, sign * diff.high))
    level = f"{diff.confidence:.0%} CI"
    detail = (f"one-sided p = {diff.p:.2g} over {diff.n} folds" if diff.unit == "fold"
              else f"{diff.n_resamples:,} paired resamples of {diff.n:,} images")
    if diff.outcome == "better":
        return (f"beats {what} by {gain:.3g} in {diff.metric} ({level} {low:.3g} to "
                f"{high:.3g}; {detail}), beyond {_UNIT_NOISE[diff.unit]}")
    if diff.outcome == "worse":
        return (f"is worse than {what} by {-gain:.3g} in {diff.metric} ({level} {-high:.3g} "
                f"to {-low:.3g}; {detail}), beyond {_UNIT_NOISE[diff.unit]}")
    return (f"not distinguishable from {what} in {diff.metric} {_UNIT_COUNT[diff.unit]} "
            f"(gain {gain:.3g}, {level} {low:.3g} to {high:.3g}; {detail})")


def search_warnings(n_complete: int, n_at_chance: int, n_random: int) -> list[str]:
    """Name what in the search itself limits the answer, one line each with the fix.

    Args:
        n_complete: complete trials (those at chance level included).
        n_at_chance: complete trials that never beat chance level (`search.selection`).
        n_random: trials the sampler draws at random before it models anything (TPE's
            ``n_startup_trials``; 0 for a sampler that never models, such as random search).

    Returns:
        A line when at least a quarter of the complete trials never beat chance level (the
        space reaches into recipes that cannot train), and one when fewer trials completed than
        the sampler draws at random (the search was still random search).
    """
    warnings = []
    if n_complete and n_at_chance / n_complete >= AT_CHANCE_SHARE:
        warnings.append(
            f"{n_at_chance} of {n_complete} complete trials never beat chance level: the space "
            f"reaches into recipes that cannot train (often too strong a penalty); narrow the "
            f"ranges that those trials share (see the slice plot)")
    if n_complete < n_random:
        warnings.append(
            f"only {n_complete} trials completed, fewer than the {n_random} the sampler draws at "
            f"random before it models the results: the search was still random; raise --trials")
    return warnings


def design_warnings(
    best_epochs: Sequence[int],
    patience: int,
    max_epochs: int,
    recipe: Mapping[str, float],
    space: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Name what in the study's design limits the comparison, one line each with the fix.

    Use it on the selected trial. Three limits are checked: the epoch cap, not early
    stopping, ended most folds (the recipe might do better with more epochs); a selected
    strength sits within `EDGE_FRACTION` of an end of its searched range (the best value may
    lie outside it), unless that end is as far as the parameter can go (dropout 0, say); and
    fewer than `MIN_FOLDS` folds, too few for the paired test over folds.

    Args:
        best_epochs: the selected trial's best epoch per fold, counted from 0 as
            `trainers.fit.FoldResult.best_epoch` counts them.
        patience: the selected recipe's early-stopping patience.
        max_epochs: the study's epoch cap per fold.
        recipe: the selected recipe's values by name; names not in ``space`` are ignored.
        space: the study's search space as `spaces.space.Space.to_dict` gives it.

    Returns:
        One warning per limit found; empty when none is.

    Raises:
        ValueError: ``patience`` or ``max_epochs`` below 1, or a best epoch outside
            ``[0, max_epochs)``.
    """
    patience = check_int("patience", patience, low=1)
    max_epochs = check_int("max_epochs", max_epochs, low=1)
    epochs = [check_int("best_epochs", e, low=0, high=max_epochs - 1) for e in best_epochs]
    lines: list[str] = []
    # Early stopping ends a fold patience epochs after its best one; a best epoch that late
    # means the fold ran into max_epochs first.
    capped = [e for e in epochs if e + patience >= max_epochs]
    if epochs and 2 * len(capped) > len(epochs):
        lines.append(
            f"training was cut by the epoch cap: in {len(capped)} of {len(epochs)} folds the "
            f"best epoch lies within patience {patience} of max_epochs {max_epochs} (best "
            f"epochs {', '.join(str(e) for e in epochs)}, counted from 0), so early stopping "
            f"did not end those folds; raise --epochs (now {max_epochs})"
        )
    for name, entry in space.items():
        line = _edge_warning(name, recipe.get(name), entry)
        if line:
            lines.append(line)
    if len(epochs) < MIN_FOLDS:
        lines.append(
            f"only {len(epochs)} fold{'' if len(epochs) == 1 else 's'}: too few for the paired "
            f"test over folds to tell a real win from fold noise (it needs at least "
            f"{MIN_FOLDS}); use --folds 5"
        )
    return lines


def _edge_warning(name: str, value: Any, entry: Mapping[str, Any]) -> str:
    """The warning for a value near an end of its searched range, or ""."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return ""
    low, high, log = float(entry["low"]), float(entry["high"]), bool(entry.get("log", False))
    if high <= low or not low <= value <= high:
        return ""  # a fixed value, or "off" (0 below a log range): not a point of the range
    scale = math.log if log else float
    where = (scale(value) - scale(low)) / (scale(high) - scale(low))
    domain_low, domain_high = _domain(name)
    scale_words = ", log scale" if log else ""
    searched = f"its searched range [{low:g}, {high:g}{scale_words}]"
    if where <= EDGE_FRACTION and (domain_low is None or low > domain_low):
        return (f"{name}={value:g} sits at the low end of {searched}: the best value may lie "
                f"below it; widen the range (lower space.{name}.low)")
    if where >= 1 - EDGE_FRACTION and (domain_high is None or high < domain_high):
        return (f"{name}={value:g} sits at the high end of {searched}: the best value may lie "
                f"above it; widen the range (raise space.{name}.high)")
    return ""


def _domain(name: str) -> tuple[float | None, float | None]:
    """How far a parameter can go at all: a range end there cannot be widened."""
    if name in FLOAT_DOMAINS:
        return FLOAT_DOMAINS[name][:2]
    if name in INT_DOMAINS:
        return INT_DOMAINS[name]
    return None, None


def _finite(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name!r} must be one-dimensional; got shape {array.shape}.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name!r} has a value that is not finite: {array[bad[0]]!r} at "
                         f"index {bad[0]}.")
    return array


def _differences(selected: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray,
                 *, unit: str) -> np.ndarray:
    a, b = _finite("selected", selected), _finite("baseline", baseline)
    if len(a) != len(b):
        raise ValueError(f"selected has {len(a)} values and baseline {len(b)}; expected one of "
                         f"each per {unit}, in the same order.")
    return a - b


def _json_ready(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}
