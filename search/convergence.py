"""Stop a search once its best recipe can no longer improve by more than the noise of its score.

The rule is the one of Makarova et al., "Automatic Termination for Hyperparameter Optimization"
(AutoML 2022), which Optuna's terminator implemented (deprecated in Optuna 5, so it is owned
here, small): stop when an upper bound on the *regret* of the best recipe found so far, how
much better the best recipe of the whole space could still be, falls below the statistical
error of the cross-validated score itself. Beyond that point a better trial would be better by
less than its own fold noise, and the search only picks among recipes it cannot tell apart.

- **Regret bound.** A Gaussian process (scikit-learn's, Matern 5/2 plus a noise term) is fitted
  to the trials that left chance level: the complete ones (`search.selection`: the ones that
  can be selected) and the pruned ones at the estimate they were pruned on (`pruned_scores`
  says why; Optuna's terminator took complete trials only), keeping the better half of them
  and at least `MIN_TRIALS`, as Optuna did.
  The bound is min over those trials of the upper confidence bound minus min over the space
  (the trials and `CANDIDATES` random recipes) of the lower confidence bound, with the width
  ``sqrt(beta)`` of Srinivas et al. (2010), scaled down by 5 as in the paper's experiments.
- **Error of the score.** sqrt((1/k + 1/(k-1)) · var(fold losses)) of the best trial (Nadeau and
  Bengio's correction for the overlap of the k training parts, the paper's choice).

Recipes are placed in the unit cube from the study's space (`spaces.Space`): a value on its
(log) scale between its bounds; a switchable regularizer is two coordinates, its switch and its
value (0 when off). The rule never fires before `MIN_TRIALS` trials are scored: with fewer,
the Gaussian process says little and the bound is wide anyway.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import TrialState
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from search.names import FOLD_LOSSES_ATTR
from search.selection import CHANCE_TOLERANCE, chance_level, n_classes_of, ranked_trials
from spaces.space import FloatParam, Space
from spaces.suggest import values_from_params

MIN_TRIALS = 20  # Optuna's default `min_n_trials`
TOP_FRACTION = 0.5  # the better half of the trials, and at least MIN_TRIALS of them
DELTA = 0.1  # the bound holds with probability 1 - DELTA under the model
CANDIDATES = 2048  # random recipes the lower confidence bound is minimized over


@dataclass(frozen=True)
class Convergence:
    """Where the search stands: how much the best recipe could still improve, against noise."""

    n_trials: int  # trials scored: complete or pruned, out of chance level
    regret_bound: float
    cv_error: float

    @property
    def within_noise(self) -> bool:
        return self.regret_bound < self.cv_error

    def line(self) -> str:
        return (f"the best recipe could still improve by at most {self.regret_bound:.4g} "
                f"(regret bound over {self.n_trials} trials), less than the noise of its own "
                f"CV loss ({self.cv_error:.4g})")


def stopped_line(record: dict[str, float], counts: dict[str, int], n_trials: int) -> str:
    """What the user reads when --stop-within-noise ended the search before its budget."""
    left = max(n_trials - counts["budget"], 0)
    state = Convergence(int(record["n_trials"]), record["regret_bound"], record["cv_error"])
    return (f"search stopped within noise (--stop-within-noise): {state.line()}; "
            f"{left} trial(s) of the budget of {n_trials} left untrained. "
            f"Rerun without the option to spend them.")


def cv_error(fold_losses: list[float]) -> float:
    """Statistical error of a k-fold mean: sqrt((1/k + 1/(k-1)) · var(fold losses))."""
    k = len(fold_losses)
    if k < 2:
        return math.nan
    return float(math.sqrt((1 / k + 1 / (k - 1)) * np.var(fold_losses)))


def convergence(study: Any, space: Space, *, seed: int = 0) -> Convergence | None:
    """The regret bound and CV error of ``study`` now, or None before `MIN_TRIALS` trials."""
    ranked = ranked_trials(study)
    if not ranked or FOLD_LOSSES_ATTR not in ranked[0].user_attrs:
        return None
    scored = [(t.params, t.value) for t in ranked] + pruned_scores(study)
    if len(scored) < MIN_TRIALS:
        return None
    scored.sort(key=lambda pair: pair[1])
    top = scored[:max(MIN_TRIALS, int(len(scored) * TOP_FRACTION))]
    x = np.array([encode(space, values_from_params(space, params)) for params, _ in top])
    y = np.array([value for _, value in top], dtype=float)
    bound = regret_bound(x, y, random_recipes(space, CANDIDATES, seed), seed=seed)
    return Convergence(len(scored), bound, cv_error(ranked[0].user_attrs[FOLD_LOSSES_ATTR]))


def pruned_scores(study: Any) -> list[tuple[dict[str, Any], float]]:
    """Pruned trials that left chance level, with the last estimate they reported.

    That estimate is the trial's running CV loss (`search.worker.RunningCV`: its first fold's
    best loss, or the mean of the folds it finished), a noisier measure of the same objective.
    With pruning on, most trials of a search are pruned (30 of 40 on `digits`, seed 1): left
    out, the rule would wait for 20 complete trials that a budget of 40 never reaches, and the
    model would know nothing of the regions the pruner already ruled out.
    """
    classes = n_classes_of(study)
    line = chance_level(classes) * (1 - CHANCE_TOLERANCE) if classes else math.inf
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        if t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
            if math.isfinite(value) and value < line:
                out.append((t.params, value))
    return out


def regret_bound(x: np.ndarray, y: np.ndarray, candidates: np.ndarray, *, seed: int = 0) -> float:
    """Upper bound on how far min(y) is above the space's minimum, under a GP fitted to (x, y).

    ``x``: recipes in the unit cube, one row per trial; ``y``: their losses (lower is better);
    ``candidates``: more recipes of the space to look for a lower bound among.
    """
    n, d = x.shape
    scale = max(float(np.std(y)), 1e-10)
    z = (y - np.mean(y)) / scale
    kernel = (ConstantKernel(1.0, (1e-3, 1e3))
              * Matern(length_scale=np.ones(d), length_scale_bounds=(1e-2, 1e2), nu=2.5)
              + WhiteKernel(1e-2, (1e-6, 1.0)))
    gp = GaussianProcessRegressor(kernel, n_restarts_optimizer=2, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, z)
    noise = gp.kernel_.k2.noise_level  # the bound is on the loss itself, not a noisy draw of it

    def bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = gp.predict(points, return_std=True)
        width = np.sqrt(beta(d, n) * np.maximum(std ** 2 - noise, 1e-12))
        return mean - width, mean + width

    lower_trials, upper_trials = bounds(x)
    lower_space = min(lower_trials.min(), bounds(candidates)[0].min())
    return float((upper_trials.min() - lower_space) * scale)


def beta(n_params: int, n_trials: int, delta: float = DELTA) -> float:
    """The confidence width's square of Srinivas et al. (2010), scaled down by 5."""
    return 2 * math.log(n_params * n_trials ** 2 * math.pi ** 2 / 6 / delta) / 5


def encode(space: Space, values: dict[str, float | int]) -> list[float]:
    """A recipe's place in the unit cube: see the module's docstring."""
    out: list[float] = []
    for p in space.params:
        value = values[p.name]
        if isinstance(p, FloatParam) and p.off:
            on = value != 0
            out += [float(on), _unit(p, value) if on else 0.0]
        else:
            out.append(_unit(p, value))
    return out


def random_recipes(space: Space, n: int, seed: int) -> np.ndarray:
    """``n`` recipes drawn uniformly from the space's cube (a switch on or off at even odds)."""
    rng = np.random.default_rng(seed)
    columns = []
    for p in space.params:
        value = rng.uniform(size=n)
        if isinstance(p, FloatParam) and p.off:
            on = rng.integers(0, 2, size=n).astype(float)
            columns += [on, value * on]
        else:
            columns.append(value)
    return np.stack(columns, axis=1)


def _unit(p: Any, value: float) -> float:
    low, high, value = float(p.low), float(p.high), float(value)
    if p.log:
        low, high, value = math.log(low), math.log(high), math.log(value)
    return 0.0 if high == low else min(max((value - low) / (high - low), 0.0), 1.0)
