"""Split sample indices into seeded, stratified folds. No Keras imports."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold


@dataclass(frozen=True)
class Fold:
    """One cross-validation split: sample indices to train on and to validate on."""

    index: int
    train: np.ndarray
    val: np.ndarray


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> list[Fold]:
    """Split ``range(len(labels))`` into ``n_folds`` stratified folds, fixed by ``seed``.

    A study calls this once with its own seed, so every trial sees identical folds and
    trials differ only by their recipe.

    Args:
        labels: integer class label of every sample.
        n_folds: number of folds, at least 2.
        seed: the study seed; the same seed gives the same folds.

    Returns:
        ``n_folds`` folds whose validation parts are disjoint and together cover every sample.

    Raises:
        ValueError: ``n_folds`` < 2, or larger than the number of samples of every class.
    """
    labels = np.asarray(labels)
    if n_folds < 2:
        raise ValueError(f"'n_folds'={n_folds} is out of range; expected an integer >= 2.")
    classes, counts = np.unique(labels, return_counts=True)
    if counts.max() < n_folds:
        raise ValueError(
            f"'n_folds'={n_folds} is larger than the largest class ({counts.max()} samples); "
            f"use n_folds <= {counts.max()}."
        )
    if counts.min() < n_folds:
        small = classes[counts.argmin()]
        warnings.warn(
            f"class {small} has {counts.min()} samples, fewer than n_folds={n_folds}: "
            f"some validation folds will not contain it.",
            stacklevel=2,
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the small-class case is warned above
        splits = splitter.split(np.zeros(len(labels)), labels)
        return [Fold(i, np.sort(tr), np.sort(va)) for i, (tr, va) in enumerate(splits)]
