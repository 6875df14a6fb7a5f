"""Tests for trainers/batched.py: the k folds of a trial as k copies in one compiled step.

With one fold there is no masking and the batched path is the sequential computation: losses
agree with rtol 1e-5 (float32 on CPU; on TensorFlow they agree to the last bit). With k folds
the batches differ (module docstring of trainers/batched.py), so per-fold losses are compared
with the fold noise: how much the same sequential folds move when only the seed changes.
"""

from __future__ import annotations

import functools
import re

import keras
import numpy as np
import pytest

from tests.trainers.test_reuse import _count_traces
from trainers.batched import (
    FoldCopies,
    RebuiltCopies,
    ReusedCopies,
    _PerCopy,
    _Stream,
    batch_size_for,
    copies_for,
    cross_validate_batched,
    cross_validate_recipes,
)
from trainers.data import Dataset, class_weights, load_digits
from trainers.fit import CROSS_ENTROPY, Diverged, EpochMetrics, StuckAtChance, cross_validate
from trainers.kfold import Fold, stratified_folds
from trainers.models import build_model
from trainers.recipe import Recipe
from trainers.reuse import Rebuild, Reuse

RTOL = 1e-5
MLP = {"pixel_max": 16.0, "augment_preset": "digits", "hidden_layers": 1, "units": 16}
# every regularizer on: penalties, dropout and augmentation draw random numbers per copy
RECIPE = Recipe(l2=1e-3, dropout=0.3, augment=0.5, learning_rate=1e-2, batch_size=32,
                max_epochs=3, patience=3)
CURVES = (CROSS_ENTROPY, "accuracy", f"val_{CROSS_ENTROPY}", "val_accuracy")


@functools.lru_cache(maxsize=2)
def _digits(n: int = 240) -> Dataset:
    return load_digits().subset(np.arange(n))


def _reuse(data: Dataset, jit_compile="auto", **mlp) -> Reuse:
    return Reuse(functools.partial(build_model, "mlp", data.image_shape, data.n_classes,
                                   Recipe(), reusable=True, **{**MLP, **mlp}),
                 jit_compile=jit_compile)


def _rebuild(data: Dataset, **mlp) -> Rebuild:
    return Rebuild(lambda r: build_model("mlp", data.image_shape, data.n_classes, r,
                                         **{**MLP, **mlp}))


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]


def _assert_same_curves(batched, sequential) -> None:
    for a, b in zip(batched.folds, sequential.folds):
        assert (a.fold, a.best_epoch, a.n_epochs) == (b.fold, b.best_epoch, b.n_epochs)
        for key in CURVES:
            np.testing.assert_allclose(a.history[key], b.history[key], rtol=RTOL, atol=1e-7,
                                       err_msg=key)


# ---- one copy, no masking: the sequential computation -----------------------------------

@pytest.mark.parametrize("kind", ["reuse", "rebuild"])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_one_fold_batched_equals_sequential(kind: str, class_weight) -> None:
    data = _digits()
    fold = stratified_folds(data.y, 3, seed=0)[1]
    models = _reuse(data) if kind == "reuse" else _rebuild(data)
    batched = cross_validate_batched(data, [fold], RECIPE, models, seed=3,
                                     class_weight=class_weight)
    sequential = cross_validate(data, [fold], RECIPE, models, seed=3, class_weight=class_weight)
    _assert_same_curves(batched, sequential)
    assert batched.val_loss == pytest.approx(sequential.val_loss, rel=RTOL)
    # and the run is not trivial: it learned
    assert batched.folds[0].history[f"val_{CROSS_ENTROPY}"][-1] < np.log(10) - 0.1


# ---- k copies: each fold within fold noise -------------------------------------------------

def test_k_copies_agree_with_sequential_folds_within_fold_noise() -> None:
    data = _digits(360)
    folds = stratified_folds(data.y, 3, seed=0)
    recipe = RECIPE.replace(max_epochs=8, patience=8, dropout=0.1, augment=0.2)
    models = _reuse(data, units=32)
    batched = cross_validate_batched(data, folds, recipe, models, seed=0)
    sequential = [cross_validate(data, folds, recipe, models, seed=s) for s in (0, 100, 200)]
    fold_losses = np.asarray([[f.val_loss for f in r.folds] for r in sequential])
    # fold noise: the largest move of a fold's best loss when only the seed changes
    noise = np.ptp(fold_losses, axis=0)
    got = np.asarray([f.val_loss for f in batched.folds])
    assert np.all(np.abs(got - fold_losses[0]) <= 2 * noise + 0.02), (got, fold_losses)
    assert abs(batched.val_loss - sequential[0].val_loss) <= 2 * noise.mean() + 0.02
    # not vacuous: every fold learned far below chance, and the batches did differ
    assert got.max() < 0.5 * np.log(10)
    assert not np.allclose(got, fold_losses[0], rtol=1e-4)


def test_every_copy_is_validated_on_its_own_folds_validation_part() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 3, seed=0)
    stream = _Stream(data, folds, 32, None)
    k = len(folds)
    for j, fold in enumerate(folds):
        val_mask = stream.val_weights[:, j].astype(bool)
        np.testing.assert_array_equal(np.flatnonzero(val_mask), fold.val)  # stream = all data
        train_mask = stream.weights[:, j].astype(bool)
        np.testing.assert_array_equal(np.flatnonzero(train_mask), fold.train)
        np.testing.assert_array_equal(stream.weights[:, k + j], train_mask.astype("float32"))
    assert stream.batch_size == batch_size_for(32, len(data), [len(f.train) for f in folds])


def test_class_weights_come_from_each_folds_training_part() -> None:
    y = np.repeat([0, 1, 2], [30, 50, 90])
    data = Dataset(np.zeros((len(y), 2, 2, 1), "float32"), y, ("a", "b", "c"), pixel_max=1.0)
    folds = stratified_folds(y, 2, seed=0)
    stream = _Stream(data, folds, 8, "balanced")
    for j, fold in enumerate(folds):
        own = class_weights(y[fold.train], 3)
        expected = np.zeros(len(y), "float32")
        expected[fold.train] = [own[c] for c in y[fold.train]]
        np.testing.assert_allclose(stream.weights[:, 2 + j], expected, rtol=1e-6)


@pytest.mark.parametrize(("batch", "n", "sizes", "expected"), [
    (64, 1000, [800] * 5, 80),   # 5 folds: 4/5 of a batch counts for each copy
    (64, 1000, [500] * 2, 128),  # 2 folds: half
    (32, 600, [600], 32),        # one fold: no masking
])
def test_batch_size_gives_each_copy_the_recipes_batch_on_average(batch, n, sizes, expected):
    assert batch_size_for(batch, n, sizes) == expected


# ---- a copy learns only from its fold; a stopped copy stays fixed --------------------------

def test_a_copy_learns_nothing_from_samples_outside_its_training_part() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)
    copies = ReusedCopies(_reuse(data).build, 2)
    recipe = RECIPE.replace(max_epochs=2)

    def trained(images: np.ndarray, labels: np.ndarray) -> list[list[np.ndarray]]:
        cross_validate_batched(Dataset(images, labels, data.class_names, data.pixel_max),
                               folds, recipe, copies, seed=1, fail_at_chance=False)
        return [_weights(c) for c in copies.model.copies]

    before = trained(data.x, data.y)
    # scramble the samples that only copy 1 trains on (fold 0's validation part)
    x, y = data.x.copy(), data.y.copy()
    rng = np.random.default_rng(0)
    x[folds[0].val] = rng.uniform(0, 16, size=x[folds[0].val].shape).astype("float32")
    y[folds[0].val] = rng.permutation(y[folds[0].val] + 1) % 10
    after = trained(x, y)
    for a, b in zip(before[0], after[0]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert max(np.abs(a - b).max() for a, b in zip(before[1], after[1])) > 1e-3


def test_a_frozen_copy_keeps_its_weights_while_the_others_train() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 3, seed=0)
    model = ReusedCopies(_reuse(data).build, 3).prepare(RECIPE, [0, 1, 2])
    stream = _Stream(data, folds, 32, None)
    model.fit(stream.x, stream.y, sample_weight=stream.weights, batch_size=stream.batch_size,
              epochs=1, verbose=0)
    model.freeze(1)
    assert model.frozen == [1]
    start = [_weights(c) for c in model.copies]
    model.fit(stream.x, stream.y, sample_weight=stream.weights, batch_size=stream.batch_size,
              epochs=2, verbose=0)
    end = [_weights(c) for c in model.copies]
    for a, b in zip(start[1], end[1]):
        np.testing.assert_array_equal(a, b)
    for j in (0, 2):
        assert max(np.abs(a - b).max() for a, b in zip(start[j], end[j])) > 1e-4


def test_early_stopping_freezes_each_copy_at_its_own_epoch() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 3, seed=0)
    # a learning rate far too high: validation losses jump about, and folds stop apart
    recipe = RECIPE.replace(learning_rate=0.3, patience=1, max_epochs=8, dropout=0.0)
    copies = ReusedCopies(_reuse(data).build, 3)
    snapshots: dict[tuple[int, int], list[np.ndarray]] = {}
    reports: list[EpochMetrics] = []

    def on_epoch(m: EpochMetrics) -> bool:
        reports.append(m)
        if not m.filled:
            snapshots[m.fold, m.epoch] = _weights(copies.model.copies[m.fold])
        return False

    result = cross_validate_batched(data, folds, recipe, copies, seed=0, on_epoch=on_epoch,
                                    fail_at_chance=False)
    n_epochs = [f.n_epochs for f in result.folds]
    assert min(n_epochs) < max(n_epochs), n_epochs  # they did stop at different epochs
    for fold, n in zip(result.folds, n_epochs):
        # the copy's weights at the end are those of its last epoch: nothing moved them since
        for a, b in zip(snapshots[fold.fold, n - 1], _weights(copies.model.copies[fold.fold])):
            np.testing.assert_array_equal(a, b)
        own = [m for m in reports if m.fold == fold.fold]
        assert [m.epoch for m in own if not m.filled] == list(range(n))
        assert len(fold.history[f"val_{CROSS_ENTROPY}"]) == n
        # the reported metrics are its own, and its best epoch is among them
        assert fold.history[f"val_{CROSS_ENTROPY}"] == [m.val_loss for m in own if not m.filled]
        assert fold.val_loss == min(fold.history[f"val_{CROSS_ENTROPY}"])
        if n < recipe.max_epochs:  # stopped early: reported once more at the fold's last step
            assert own[-1].filled and own[-1].step == fold.fold * 8 + 7
            assert own[-1].best_val_loss == fold.val_loss


# ---- the per-copy bookkeeping, replayed without Keras training ----------------------------

class _FakeCopies:
    def __init__(self) -> None:
        self.stop_training = False
        self.frozen: list[int] = []

    def freeze(self, copy: int) -> None:
        self.frozen.append(copy)


def _replay(val_losses: list[list[float]], patience: int, on_epoch=None):
    folds = [Fold(j, np.arange(1), np.arange(1)) for j in range(len(val_losses[0]))]
    fake = _FakeCopies()
    tracker = _PerCopy(fake, folds, [Recipe(patience=patience, max_epochs=len(val_losses))],
                       [on_epoch])
    tracker.set_model(fake)
    for epoch, losses in enumerate(val_losses):
        logs = {}
        for j, loss in enumerate(losses):
            logs[f"{CROSS_ENTROPY}_{j}"] = 1.0
            logs[f"val_{CROSS_ENTROPY}_{j}"] = loss
        tracker.on_epoch_end(epoch, logs)
        if fake.stop_training:
            break
    return tracker, fake


def test_per_copy_early_stopping_follows_keras_rule_and_reports_in_fold_order() -> None:
    reports: list[EpochMetrics] = []
    # fold 0 improves every epoch; fold 1 stops after 2 epochs without improvement
    losses = [[1.0, 1.0], [0.9, 1.1], [0.8, 1.2], [0.7, 0.5], [0.6, 0.4]]
    tracker, fake = _replay(losses, patience=2, on_epoch=lambda m: reports.append(m) and False)
    assert fake.frozen == [1] and tracker.n_epochs == [5, 3]
    assert [(m.fold, m.epoch, m.step, m.filled) for m in reports] == [
        (0, 0, 0, False), (1, 0, 5, False),
        (0, 1, 1, False), (1, 1, 6, False),
        (0, 2, 2, False), (1, 2, 7, False), (1, 4, 9, True),
        (0, 3, 3, False), (0, 4, 4, False),
    ]
    assert reports[6].best_val_loss == 1.0
    assert not fake.stop_training or tracker.n_epochs == [5, 3]


def test_training_ends_when_every_copy_has_stopped() -> None:
    tracker, fake = _replay([[1.0, 1.0], [1.1, 1.1], [1.2, 1.2], [0.1, 0.1]], patience=1)
    assert fake.stop_training and sorted(fake.frozen) == [0, 1]
    assert tracker.n_epochs == [2, 2]


def test_on_epoch_true_stops_every_copy() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 3, seed=0)
    reuse = _reuse(data)
    result = cross_validate_batched(data, folds, RECIPE.replace(max_epochs=5), reuse,
                                    on_epoch=lambda m: m.fold == 1 and m.epoch == 1)
    assert result.stopped and len(result.folds) == 3
    # every copy trained epochs 0 and 1 (fold 2's epoch 1 was trained, though not reported)
    assert [f.n_epochs for f in result.folds] == [2, 2, 2]
    # stopped at the first report: every fold still has its first epoch
    first = cross_validate_batched(data, folds, RECIPE.replace(max_epochs=5), reuse,
                                   on_epoch=lambda m: True)
    assert first.stopped and [f.n_epochs for f in first.folds] == [1, 1, 1]


def test_on_fold_sees_every_fold_in_order_and_on_batch_reports_fold_0() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 3, seed=0)
    seen, batches = [], []
    result = cross_validate_batched(data, folds, RECIPE.replace(max_epochs=2), _reuse(data),
                                    on_fold=seen.append, on_batch=lambda *b: batches.append(b))
    assert [f.fold for f in seen] == [0, 1, 2] and tuple(seen) == result.folds
    assert {b[0] for b in batches} == {0} and {b[1] for b in batches} == {0, 1}


# ---- failures, as sequential folds report them ---------------------------------------------

def _tiny(scale: float):
    def build(recipe: Recipe) -> keras.Model:
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(8, activation="relu")(x)
        x = keras.layers.Rescaling(scale)(x)
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    return build


def test_a_diverged_copy_raises_diverged() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)
    with pytest.raises(Diverged, match="fold 0, epoch 0: loss is not finite"):
        cross_validate_batched(data, folds, RECIPE, _tiny(float("nan")))


def test_a_fold_at_chance_raises_stuck_at_chance() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)
    with pytest.raises(StuckAtChance, match=r"fold 0: .*ln\(10\)"):
        cross_validate_batched(data, folds, RECIPE.replace(max_epochs=2), _tiny(0.0))


def test_copies_for_keeps_one_compiled_set_per_reuse_and_rejects_other_things() -> None:
    data = _digits()
    reuse = _reuse(data)
    assert copies_for(reuse, 3) is copies_for(reuse, 3)
    assert copies_for(reuse, 2) is not copies_for(reuse, 3)
    assert isinstance(copies_for(_rebuild(data), 2), RebuiltCopies)
    with pytest.raises(TypeError, match="build"):
        copies_for(42, 2)
    with pytest.raises(ValueError, match="folds need 3"):
        copies_for(ReusedCopies(reuse.build, 2), 3)
    with pytest.raises(ValueError, match="'folds' is empty"):
        cross_validate_batched(data, [], RECIPE, reuse)


# ---- one compile per worker ----------------------------------------------------------------

@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="Keras on PyTorch runs eagerly under jit_compile='auto' and "
                           "torch.compile guards on the counting wrapper itself; there is no "
                           "traced step to count")
def test_reused_copies_compile_once_and_never_retrace() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 3, seed=0)
    reuse = _reuse(data, jit_compile=True)
    copies = copies_for(reuse, 3)
    model = copies.prepare(RECIPE, [0, 1, 2])
    traces = []
    train_step = model.train_step

    def counted(*args, **kwargs):  # runs once per trace of the compiled step
        traces.append(1)
        return train_step(*args, **kwargs)

    model.train_step = counted
    recipes = [RECIPE, RECIPE.replace(l2=0.0, l1=1e-4, dropout=0.0),
               RECIPE.replace(augment=1.0, learning_rate=3e-3), RECIPE]
    results = [cross_validate_batched(data, folds, r, reuse, fail_at_chance=False)
               for r in recipes[:1]]
    function, n_traces = model.train_function, len(traces)
    assert n_traces >= 1 and model.jit_compile is True
    results += [cross_validate_batched(data, folds, r, reuse, fail_at_chance=False)
                for r in recipes[1:]]
    assert copies.model is model and model.train_function is function
    assert len(traces) == n_traces
    # the same recipe again trains as the first time: the reset is complete
    for a, b in zip(results[0].folds, results[3].folds):
        np.testing.assert_allclose(a.history[f"val_{CROSS_ENTROPY}"],
                                   b.history[f"val_{CROSS_ENTROPY}"], rtol=RTOL)
    assert results[1].val_loss != pytest.approx(results[0].val_loss, rel=1e-3)


def test_fold_copies_share_no_variable() -> None:
    data = _digits()
    model = RebuiltCopies(_rebuild(data).build, 2).prepare(RECIPE, [0, 1])
    assert isinstance(model, FoldCopies)
    ids = [{id(v) for v in c.variables} for c in model.copies]
    assert not ids[0] & ids[1]
    # unique paths too: PyTorch registers parameters by path, so shared paths share gradients
    paths = [v.path for v in model.variables]
    assert len(set(paths)) == len(paths) and paths[0].startswith("copy_0/")
    # seeded apart: different initial weights
    assert not np.allclose(_weights(model.copies[0])[0], _weights(model.copies[1])[0])


# ---- several recipes in one step ------------------------------------------------------------

# three recipes that differ in every strength the MLP has, and in patience
RECIPES = [RECIPE.replace(max_epochs=4, patience=1),
           RECIPE.replace(l2=0.0, l1=1e-3, dropout=0.0, augment=1.0, max_epochs=4, patience=2),
           RECIPE.replace(l2=1e-2, dropout=0.6, augment=0.0, max_epochs=4, patience=4)]


@pytest.mark.parametrize("kind", ["reuse", "rebuild"])
def test_each_recipe_of_a_step_trains_as_it_would_alone(kind: str) -> None:
    # the same stream, order and seeds, and a sum of losses whose gradient for each copy is
    # its own: recipe b's curves are those of its own batched folds, to float rounding
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)
    models = _reuse(data) if kind == "reuse" else _rebuild(data)
    together = cross_validate_recipes(data, folds, RECIPES, models, seed=3,
                                      fail_at_chance=False)
    alone = [cross_validate_batched(data, folds, r, models, seed=3, fail_at_chance=False)
             for r in RECIPES]
    for got, want in zip(together, alone):
        _assert_same_curves(got, want)
        assert not got.stopped
    # the recipes really differ, so the equalities are not vacuous
    losses = [r.val_loss for r in alone]
    assert len({round(v, 4) for v in losses}) == 3, losses
    # each fold's fit seconds are its share of the one fit
    assert together[0].folds[0].fit_seconds == pytest.approx(together[2].folds[1].fit_seconds)


def test_a_recipe_the_pruner_stops_is_frozen_while_the_others_train_on() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)
    copies = copies_for(_reuse(data), 2, 3)
    snapshots = {}

    def prune_at_epoch_1(m: EpochMetrics) -> bool:
        if m.epoch == 1 and m.fold == 0:
            snapshots.update({c: _weights(copies.model.copies[c]) for c in (2, 3)})
            return True
        return False

    recipes = [r.replace(patience=4) for r in RECIPES]
    outcomes = cross_validate_recipes(data, folds, recipes, copies, seed=0,
                                      on_epoch=[None, prune_at_epoch_1, None],
                                      fail_at_chance=False)
    assert outcomes[1].stopped and [f.n_epochs for f in outcomes[1].folds] == [2, 2]
    for c in (2, 3):  # recipe 1's copies did not move after the epoch it was stopped at
        for a, b in zip(snapshots[c], _weights(copies.model.copies[c])):
            np.testing.assert_array_equal(a, b)
    for b in (0, 2):  # the others trained every epoch, as they do alone
        assert not outcomes[b].stopped and [f.n_epochs for f in outcomes[b].folds] == [4, 4]
        _assert_same_curves(outcomes[b], cross_validate_batched(
            data, folds, recipes[b], _reuse(data), seed=0, fail_at_chance=False))


def test_a_recipe_that_diverges_fails_alone() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)

    def build(recipe: Recipe) -> keras.Model:  # recipe with l1 gets a network that NaNs
        return _tiny(float("nan") if recipe.l1 else 1.0)(recipe)

    recipes = [RECIPE, RECIPE.replace(l1=1e-4), RECIPE.replace(l2=0.0)]
    outcomes = cross_validate_recipes(data, folds, recipes, build, fail_at_chance=False)
    assert isinstance(outcomes[1], Diverged)
    assert str(outcomes[1]) == "fold 0, epoch 0: loss is not finite"
    for b in (0, 2):
        assert [f.n_epochs for f in outcomes[b].folds] == [3, 3]
        assert np.isfinite(outcomes[b].val_loss)
    # at chance: the failure is returned, the others kept
    at_chance = cross_validate_recipes(
        data, folds, [RECIPE, RECIPE.replace(l1=1e-4)],
        lambda r: _tiny(0.0 if r.l1 else 1.0)(r), fail_at_chance=True)
    assert isinstance(at_chance[1], StuckAtChance) and not isinstance(at_chance[0], Exception)


def test_recipes_of_one_step_must_share_batch_size_learning_rate_and_epochs() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)
    for change, words in [({"batch_size": 16}, "batch_size (32 and 16)"),
                          ({"learning_rate": 1e-3}, "learning_rate (0.01 and 0.001)"),
                          ({"max_epochs": 5}, "max_epochs (3 and 5)")]:
        with pytest.raises(ValueError, match=f"these differ in {re.escape(words)}"):
            cross_validate_recipes(data, folds, [RECIPE, RECIPE.replace(**change)],
                                   _reuse(data))
    with pytest.raises(ValueError, match="2 on_epoch hooks for 3 recipes"):
        cross_validate_recipes(data, folds, RECIPES[:1] * 3, _reuse(data),
                               on_epoch=[None, None])


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="no traced step to count on PyTorch (see above)")
def test_steps_of_several_recipes_compile_once_and_never_retrace() -> None:
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)
    reuse = _reuse(data, jit_compile=True)
    copies = copies_for(reuse, 2, 2)
    model = copies.prepare(RECIPE, [0, 1, 0, 1])
    traces = _count_traces(model)
    first = cross_validate_recipes(data, folds, RECIPES[:2], reuse, fail_at_chance=False)
    function, n_traces = model.train_function, len(traces)
    assert n_traces >= 1
    later = cross_validate_recipes(data, folds, RECIPES[1:], reuse, fail_at_chance=False)
    again = cross_validate_recipes(data, folds, RECIPES[:2], reuse, fail_at_chance=False)
    assert copies.model is model and model.train_function is function
    assert len(traces) == n_traces
    _assert_same_curves(later[0], first[1])  # recipe 1 in the other slot: the same curves
    for a, b in zip(first, again):
        _assert_same_curves(a, b)
