"""The k-fold trainer: step arithmetic, pruning stop, NaN and chance-level failures, objective."""

from __future__ import annotations

import math
import types

import keras
import numpy as np
import pytest

from trainers.data import Dataset, class_weights
from trainers.fit import (
    CROSS_ENTROPY,
    Diverged,
    StuckAtChance,
    _Reporter,
    cross_validate,
    train_final,
)
from trainers.kfold import stratified_folds
from trainers.recipe import Recipe


def _replay(reporter: _Reporter, val_losses: list[float], patience: int | None = None) -> int:
    """Feed a list of validation losses through a reporter like Keras would; return epochs run."""
    model = types.SimpleNamespace(stop_training=False)
    reporter.set_model(model)
    best, wait = math.inf, 0
    epochs = 0
    for epoch, loss in enumerate(val_losses):
        epochs += 1
        reporter.on_epoch_end(epoch, {CROSS_ENTROPY: 1.0, f"val_{CROSS_ENTROPY}": loss,
                                      "val_accuracy": 0.5, "loss": 1.0})
        if model.stop_training:
            break
        if patience is not None:  # mimic EarlyStopping
            best, wait = (loss, 0) if loss < best else (best, wait + 1)
            if wait >= patience:
                break
    reporter.on_train_end()
    return epochs


@pytest.mark.parametrize("fold,max_epochs", [(0, 5), (1, 5), (3, 7)])
def test_reporter_steps_count_across_folds(fold: int, max_epochs: int) -> None:
    seen = []
    reporter = _Reporter(fold, max_epochs, lambda m: seen.append(m) and False)
    _replay(reporter, [1.0 - 0.1 * e for e in range(max_epochs)])
    assert [m.step for m in seen] == [fold * max_epochs + e for e in range(max_epochs)]
    assert not any(m.filled for m in seen)


def test_reporter_reports_best_so_far_and_fills_the_epochs_early_stopping_skipped() -> None:
    seen = []
    reporter = _Reporter(fold=1, max_epochs=10, on_epoch=lambda m: seen.append(m) and False)
    epochs = _replay(reporter, [0.9, 0.5, 0.7, 0.8, 0.95, 0.99], patience=2)
    assert epochs == 4
    assert [m.best_val_loss for m in seen[:4]] == [0.9, 0.5, 0.5, 0.5]
    # the stand-in report sits at the fold's last step and carries the fold's best value
    assert seen[-1].filled and seen[-1].step == 1 * 10 + 9 and seen[-1].best_val_loss == 0.5
    assert len(seen) == 5


def test_reporter_stops_when_asked() -> None:
    seen = []
    reporter = _Reporter(0, 10, lambda m: seen.append(m) or m.epoch == 2)
    assert _replay(reporter, [1.0] * 10) == 3
    assert reporter.stopped and reporter.model.stop_training
    assert not any(m.filled for m in seen)  # a pruned fold gets no stand-in report


def test_reporter_flags_nan_and_does_not_report_it() -> None:
    seen = []
    reporter = _Reporter(0, 10, seen.append)
    assert _replay(reporter, [1.0, float("nan"), 0.5]) == 2
    assert reporter.diverged and reporter.diverged_epoch == 1
    assert len(seen) == 1


# ---- real Keras on a few images ------------------------------------------------------------

def _blobs(n: int = 48, n_classes: int = 3, seed: int = 0) -> Dataset:
    """Separable 4x4x1 images: class k is bright in quadrant k."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.uniform(0, 0.2, size=(n, 4, 4, 1)).astype("float32")
    for i, label in enumerate(y):
        x[i, (label // 2) * 2:(label // 2) * 2 + 2, (label % 2) * 2:(label % 2) * 2 + 2] += 0.8
    return Dataset(x, y.astype("int64"), tuple("abc"[:n_classes]), pixel_max=1.0)


def _tiny(scale: float = 1.0):
    def build(recipe: Recipe) -> keras.Model:
        inputs = keras.Input((4, 4, 1))
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(16, activation="relu")(x)
        x = keras.layers.Rescaling(scale)(x)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    return build


def test_cross_validate_reports_every_fold_and_averages_best_epochs() -> None:
    data = _blobs()
    folds = stratified_folds(data.y, 2, seed=0)
    recipe = Recipe(max_epochs=4, patience=4, learning_rate=1e-2, batch_size=8)
    steps, fold_results = [], []
    result = cross_validate(data, folds, recipe, _tiny(), seed=1,
                            on_epoch=lambda m: steps.append(m.step) and False,
                            on_fold=fold_results.append)
    assert [f.fold for f in result.folds] == [0, 1] == [f.fold for f in fold_results]
    assert steps == sorted(steps) and steps[0] == 0 and max(steps) == 7
    assert result.val_loss == pytest.approx(np.mean([f.val_loss for f in result.folds]))
    for f in result.folds:
        assert f.val_loss == min(f.history[f"val_{CROSS_ENTROPY}"])
    assert not result.stopped


def test_cross_validate_reports_each_training_batch_before_it_runs() -> None:
    data = _blobs()  # 48 images, 2 folds: 24 training images = 3 batches of 8
    folds = stratified_folds(data.y, 2, seed=0)
    recipe = Recipe(max_epochs=2, patience=2, learning_rate=1e-2, batch_size=8)
    batches: list[tuple[int, int, float]] = []
    cross_validate(data, folds, recipe, _tiny(), seed=1, on_batch=lambda *b: batches.append(b),
                   fail_at_chance=False)
    expected = [(fold, epoch, f) for fold in (0, 1) for epoch in (0, 1) for f in (0, 1 / 3, 2 / 3)]
    assert [b[:2] for b in batches] == [e[:2] for e in expected]
    assert [b[2] for b in batches] == pytest.approx([e[2] for e in expected])


def test_train_final_reports_its_batches_as_fold_0() -> None:
    data = _blobs(n=16)  # 16 images, batch 8: 2 batches an epoch
    batches: list[tuple[int, int, float]] = []
    result = train_final(data, _blobs(n=6, seed=1), Recipe(batch_size=8, learning_rate=1e-2),
                         _tiny(), epochs=3, on_batch=lambda *b: batches.append(b))
    assert batches == [(0, epoch, f) for epoch in range(3) for f in (0.0, 0.5)]
    assert result.epochs == 3


@pytest.mark.parametrize("batch_size", [8, 64], ids=["3 batches", "1 batch"])
def test_every_fold_records_its_time_to_the_first_step(batch_size: int) -> None:
    data = _blobs()
    folds = stratified_folds(data.y, 2, seed=0)
    recipe = Recipe(max_epochs=2, patience=2, learning_rate=1e-2, batch_size=batch_size)
    result = cross_validate(data, folds, recipe, _tiny(), seed=1, fail_at_chance=False)
    for fold in result.folds:
        # a fresh model per fold (Rebuild): each first step includes its compilation
        assert 0 < fold.first_step_seconds < fold.fit_seconds + 1.0
    assert result.later_folds_first_step_seconds == result.folds[1].first_step_seconds


def test_balanced_class_weights_come_from_each_folds_training_part_only() -> None:
    # imbalanced 9/15/27: the training part of each fold is imbalanced differently from the
    # whole split, so weights computed from the whole split would train differently
    y = np.repeat([0, 1, 2], [9, 15, 27])
    data = _blobs(n=len(y))
    data = Dataset(data.x, y, data.class_names, pixel_max=1.0)
    folds = stratified_folds(y, 2, seed=0)
    recipe = Recipe(max_epochs=2, patience=2, learning_rate=1e-2, batch_size=8)
    balanced = cross_validate(data, folds, recipe, _tiny(), seed=3, class_weight="balanced",
                              fail_at_chance=False)
    whole = class_weights(y, 3)

    def weighted_loss(fold, weights) -> list[float]:
        return cross_validate(data, [fold], recipe, _tiny(), seed=3, class_weight=weights,
                              fail_at_chance=False).folds[0].history["loss"]

    for fold, result in zip(folds, balanced.folds):
        assert result.history["loss"] == pytest.approx(
            weighted_loss(fold, class_weights(y[fold.train], 3)), rel=1e-6)
        assert result.history["loss"] != pytest.approx(weighted_loss(fold, whole), rel=1e-6)
    with pytest.raises(ValueError, match="'balanced' or None"):
        cross_validate(data, folds, recipe, _tiny(), class_weight="auto")


def test_cross_validate_losses_exclude_the_l2_penalty() -> None:
    """Keras adds kernel penalties to val_loss; the objective must be plain cross-entropy."""
    data = _blobs()
    folds = stratified_folds(data.y, 2, seed=0)
    recipe = Recipe(l2=10.0, max_epochs=1, patience=1, learning_rate=1e-3, batch_size=8)

    def build(r: Recipe) -> keras.Model:
        inputs = keras.Input((4, 4, 1))
        x = keras.layers.Flatten()(inputs)
        out = keras.layers.Dense(3, activation="softmax",
                                 kernel_regularizer=keras.regularizers.L2(r.l2))(x)
        return keras.Model(inputs, out)

    result = cross_validate(data, folds, recipe, build, seed=0, fail_at_chance=False)
    fold = result.folds[0]
    assert fold.history["val_loss"][0] > fold.history[f"val_{CROSS_ENTROPY}"][0] + 0.5
    assert fold.val_loss == fold.history[f"val_{CROSS_ENTROPY}"][0]


def test_cross_validate_stops_the_whole_trial_when_on_epoch_says_so() -> None:
    data = _blobs()
    folds = stratified_folds(data.y, 3, seed=0)
    result = cross_validate(data, folds, Recipe(max_epochs=5, batch_size=8), _tiny(),
                            on_epoch=lambda m: m.step >= 1)
    assert result.stopped and len(result.folds) == 1 and result.folds[0].n_epochs == 2


def test_cross_validate_same_seed_same_losses() -> None:
    data = _blobs()
    folds = stratified_folds(data.y, 2, seed=0)
    recipe = Recipe(max_epochs=2, batch_size=8, dropout=0.3)
    a = cross_validate(data, folds, recipe, _tiny(), seed=5, fail_at_chance=False)
    b = cross_validate(data, folds, recipe, _tiny(), seed=5, fail_at_chance=False)
    assert [f.history for f in a.folds] == [f.history for f in b.folds]


def test_cross_validate_raises_diverged_on_nan_loss() -> None:
    data = _blobs()
    folds = stratified_folds(data.y, 2, seed=0)
    with pytest.raises(Diverged, match="not finite"):
        cross_validate(data, folds, Recipe(max_epochs=3, batch_size=8), _tiny(scale=float("nan")))


def test_cross_validate_raises_stuck_at_chance_when_val_loss_stays_at_ln_k() -> None:
    data = _blobs()
    folds = stratified_folds(data.y, 2, seed=0)
    # scale 0 makes the softmax uniform whatever the weights: loss is exactly ln 3
    with pytest.raises(StuckAtChance, match=r"ln\(3\)"):
        cross_validate(data, folds, Recipe(max_epochs=2, batch_size=8), _tiny(scale=0.0))


def test_cross_validate_keeps_a_loss_far_above_chance_as_a_score() -> None:
    """Confident and wrong is a bad recipe, not a failed one: the sampler must see its score."""
    data = _blobs()
    folds = stratified_folds(data.y, 2, seed=0)
    result = cross_validate(data, folds, Recipe(max_epochs=2, batch_size=8, learning_rate=1e-9),
                            _confidently_wrong, seed=3)
    assert result.val_loss > 1.5 * math.log(3)


def _confidently_wrong(recipe: Recipe) -> keras.Model:
    """Put every image of class k in class k + 1 with logit margin ~40.

    A learning rate too small to move (1e-9) leaves it there on every backend, whatever the
    initial weights: the right class gets a probability of about 1e-17, below Keras' epsilon.
    """
    inputs = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(3, use_bias=False, activation="softmax")
    outputs = dense(keras.layers.Flatten()(inputs))
    kernel = np.zeros((16, 3), "float32")
    for label in range(3):
        quadrant = np.zeros((4, 4), "float32")
        quadrant[(label // 2) * 2:(label // 2) * 2 + 2, (label % 2) * 2:(label % 2) * 2 + 2] = 1
        kernel[:, (label + 1) % 3] += 12.5 * quadrant.ravel()
    dense.set_weights([kernel])
    return keras.Model(inputs, outputs)


def _penalised(recipe: Recipe) -> keras.Model:
    """A hidden layer with a strong L2 penalty, so Keras' val_loss is far from cross-entropy."""
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(1.0))(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_train_final_scores_every_heldout_image_and_the_means_are_the_reported_figures() -> None:
    heldout = _blobs(n=30, seed=1)
    result = train_final(_blobs(), heldout, Recipe(batch_size=8, learning_rate=1e-2),
                         _penalised, epochs=3, seed=2)
    assert result.heldout_losses.shape == (30,) and result.heldout_correct.shape == (30,)
    assert result.heldout_correct.dtype == bool
    assert np.all(result.heldout_losses > 0) and np.ptp(result.heldout_losses) > 1e-3
    # plain cross-entropy: the mean is val_cross_entropy, not the penalised val_loss
    assert result.heldout_losses.mean() == pytest.approx(result.heldout_loss, abs=1e-4)
    assert result.history["val_loss"][-1] > result.heldout_loss + 0.1
    assert result.heldout_correct.mean() == pytest.approx(result.heldout_accuracy, abs=1e-6)


def test_train_final_per_image_losses_clip_as_keras_does_when_confidently_wrong() -> None:
    result = train_final(_blobs(), _blobs(n=12, seed=1),
                         Recipe(batch_size=8, learning_rate=1e-9), _confidently_wrong, epochs=1)
    assert not result.heldout_correct.any() and result.heldout_accuracy == 0.0
    # the right class sits below epsilon = 1e-7: 16.1 where Keras clips, ~40 on TensorFlow
    assert result.heldout_losses.min() > -math.log(1e-7) - 1e-3
    assert result.heldout_losses.mean() == pytest.approx(result.heldout_loss, abs=1e-4)


def test_early_stopping_watches_the_cross_entropy_that_compile_model_adds() -> None:
    """Exported recipes stop on the penalty-free loss, like the trials that selected them."""
    from trainers.fit import compile_model
    from trainers.regularization import early_stopping

    data = _blobs()
    recipe = Recipe(l2=10.0, patience=2, max_epochs=2, batch_size=8)
    model = compile_model(_tiny()(recipe), recipe)
    stopper = early_stopping(recipe)
    history = model.fit(data.x, data.y, validation_data=(data.x, data.y), epochs=2, verbose=0,
                        callbacks=[stopper]).history
    assert stopper.monitor == f"val_{CROSS_ENTROPY}" and stopper.monitor in history
    assert stopper.patience == 2 and stopper.restore_best_weights
