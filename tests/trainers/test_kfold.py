"""Tests for trainers/kfold.py: seeded, stratified folds, tested as properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from trainers.kfold import Fold, stratified_folds


def make_labels(n_samples: int, n_classes: int, seed: int, imbalanced: bool = False) -> np.ndarray:
    """Random labels in which every class has at least 10 samples."""
    rng = np.random.default_rng(seed)
    base = np.repeat(np.arange(n_classes), 10)
    if imbalanced:
        weights = np.arange(1, n_classes + 1, dtype=float)
        extra = rng.choice(n_classes, n_samples - len(base), p=weights / weights.sum())
    else:
        extra = rng.integers(0, n_classes, n_samples - len(base))
    return rng.permutation(np.concatenate([base, extra]))


CASES = [
    # (n_samples, n_classes, n_folds, seed, imbalanced)
    (30, 3, 2, 0, False),
    (50, 2, 5, 1, True),
    (101, 4, 3, 2, False),
    (257, 5, 7, 3, True),
    (500, 10, 10, 4, False),
    (1000, 3, 4, 5, True),
]


@pytest.mark.parametrize(("n_samples", "n_classes", "n_folds", "seed", "imbalanced"), CASES)
def test_stratified_folds_val_parts_partition_indices(n_samples, n_classes, n_folds, seed,
                                                      imbalanced):
    labels = make_labels(n_samples, n_classes, seed, imbalanced)
    folds = stratified_folds(labels, n_folds, seed)
    assert len(folds) == n_folds
    assert [f.index for f in folds] == list(range(n_folds))
    all_val = np.concatenate([f.val for f in folds])
    assert len(all_val) == n_samples  # disjoint: no index counted twice
    assert np.array_equal(np.sort(all_val), np.arange(n_samples))


@pytest.mark.parametrize(("n_samples", "n_classes", "n_folds", "seed", "imbalanced"), CASES)
def test_stratified_folds_train_val_disjoint_and_cover(n_samples, n_classes, n_folds, seed,
                                                       imbalanced):
    labels = make_labels(n_samples, n_classes, seed, imbalanced)
    for fold in stratified_folds(labels, n_folds, seed):
        assert isinstance(fold, Fold)
        assert np.intersect1d(fold.train, fold.val).size == 0
        assert np.array_equal(np.union1d(fold.train, fold.val), np.arange(n_samples))
        assert len(fold.train) + len(fold.val) == n_samples
        assert np.array_equal(fold.train, np.sort(fold.train))
        assert np.array_equal(fold.val, np.sort(fold.val))
        assert np.issubdtype(fold.train.dtype, np.integer)


@pytest.mark.parametrize(("n_samples", "n_classes", "n_folds", "seed", "imbalanced"), CASES)
def test_stratified_folds_keep_class_ratios(n_samples, n_classes, n_folds, seed, imbalanced):
    labels = make_labels(n_samples, n_classes, seed, imbalanced)
    classes, counts = np.unique(labels, return_counts=True)
    for fold in stratified_folds(labels, n_folds, seed):
        val_counts = np.array([(labels[fold.val] == c).sum() for c in classes])
        # Each class is dealt out evenly: a fold holds floor or ceil of its share.
        assert np.all(np.abs(val_counts - counts / n_folds) < 1 + 1e-9), val_counts
        overall = counts / n_samples
        ratio = val_counts / len(fold.val)
        assert np.all(np.abs(ratio - overall) <= n_classes / len(fold.val) + 1e-9)
        # Folds are as even in size as the data allows.
        assert abs(len(fold.val) - n_samples / n_folds) <= n_classes


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_stratified_folds_same_seed_same_folds(seed):
    labels = make_labels(200, 4, seed=9)
    first = stratified_folds(labels, 5, seed)
    second = stratified_folds(labels.copy(), 5, seed)
    for a, b in zip(first, second, strict=True):
        assert a.index == b.index
        assert np.array_equal(a.train, b.train)
        assert np.array_equal(a.val, b.val)


@pytest.mark.parametrize(("seed_a", "seed_b"), [(0, 1), (1, 2), (0, 1000)])
def test_stratified_folds_different_seed_different_folds(seed_a, seed_b):
    labels = make_labels(200, 4, seed=9)
    a = stratified_folds(labels, 5, seed_a)
    b = stratified_folds(labels, 5, seed_b)
    assert any(not np.array_equal(x.val, y.val) for x, y in zip(a, b))


def test_stratified_folds_shuffle_is_not_contiguous():
    labels = np.repeat([0, 1], 50)
    first_val = stratified_folds(labels, 5, 0)[0].val
    assert not np.array_equal(first_val, np.r_[0:10, 50:60])


def test_stratified_folds_accepts_lists():
    folds = stratified_folds([0, 1] * 10, 2, 0)
    assert sorted(np.concatenate([f.val for f in folds]).tolist()) == list(range(20))


@pytest.mark.parametrize("n_folds", [1, 0, -2])
def test_stratified_folds_too_few_folds(n_folds):
    with pytest.raises(ValueError, match=f"'n_folds'={n_folds}"):
        stratified_folds(make_labels(50, 2, 0), n_folds, 0)


def test_stratified_folds_more_folds_than_largest_class():
    labels = np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="'n_folds'=4 is larger than the largest class"):
        stratified_folds(labels, 4, 0)


def test_stratified_folds_warns_for_small_class():
    labels = np.array([0] * 20 + [1] * 20 + [7] * 2)
    with pytest.warns(UserWarning, match="7.* has 2 samples, fewer than n_folds=3"):
        folds = stratified_folds(labels, 3, 0)
    # Still a partition; the small class lands in two of the three validation parts.
    all_val = np.concatenate([f.val for f in folds])
    assert np.array_equal(np.sort(all_val), np.arange(len(labels)))
    assert sum((labels[f.val] == 7).any() for f in folds) == 2


def test_stratified_folds_warning_names_class_plainly():
    labels = np.array([0] * 20 + [1] * 20 + [7] * 2)
    with pytest.warns(UserWarning, match=r"^class 7 has 2 samples"):
        stratified_folds(labels, 3, 0)


def test_stratified_folds_warns_once():
    labels = np.array([0] * 20 + [1] * 20 + [2] * 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stratified_folds(labels, 3, 0)
    assert len(caught) == 1
    assert caught[0].filename == __file__  # stacklevel points at the caller


def test_stratified_folds_no_warning_when_classes_large_enough():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stratified_folds(make_labels(60, 3, 0), 5, 0)
