"""Tests for trainers/whitening.py: ZCA statistics, and that they come from training images only."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

from trainers import whitening
from trainers.data import load_digits
from trainers.fit import cross_validate, train_final
from trainers.kfold import stratified_folds
from trainers.models import build_model
from trainers.recipe import Recipe
from trainers.reuse import Rebuild, Reuse
from trainers.whitening import Whiten, fit_whitening, zca_statistics

MLP = {"pixel_max": 16.0, "augment_preset": "digits", "hidden_layers": 1, "units": 16,
       "zca_epsilon": 0.1}


def _correlated(n: int = 3000, d: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(d, d))
    return (rng.normal(size=(n, d)) @ mixing + 3.0).reshape(n, 2, 2, 3).astype("float32")


def test_zca_statistics_whiten_the_training_images():
    x = _correlated()
    mean, matrix = zca_statistics(x, epsilon=1e-6)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-5)  # ZCA: symmetric
    white = (x.reshape(len(x), -1) - mean) @ matrix
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(12), atol=1e-3)
    # a larger epsilon shrinks the low-variance directions instead of inflating them
    _, damped = zca_statistics(x, epsilon=10.0)
    assert np.linalg.norm(damped) < np.linalg.norm(matrix)


def test_whiten_layer_is_the_identity_until_fitted_then_applies_the_statistics():
    x = _correlated(64)
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, Whiten(0.5, name="zca")(inputs))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), x)
    assert fit_whitening(model, x * 4.0, pixel_max=4.0) == 1  # the layer sees x / pixel_max
    mean, matrix = zca_statistics(x, epsilon=0.5)
    expected = ((x.reshape(64, -1) - mean) @ matrix).reshape(x.shape)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, atol=1e-4)
    plain = keras.Model(inputs, keras.layers.Identity()(inputs))
    assert fit_whitening(plain, x, pixel_max=1.0) == 0
    with pytest.raises(ValueError, match="epsilon"):
        Whiten(0.0)


def _zca_state(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    layer = model.get_layer("zca")
    return (keras.ops.convert_to_numpy(layer.mean), keras.ops.convert_to_numpy(layer.matrix))


def test_whitening_statistics_are_computed_once_per_set_of_images(monkeypatch):
    calls = []
    monkeypatch.setattr(whitening, "zca_statistics",
                        lambda x, epsilon: calls.append(1) or zca_statistics(x, epsilon))
    x = _correlated(64)
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, Whiten(0.5, name="zca")(inputs))
    for images in (x, x[:32], x, x[:32]):
        fit_whitening(model, images, pixel_max=1.0)
        np.testing.assert_allclose(_zca_state(model)[0], images.reshape(len(images), -1).mean(0),
                                   atol=1e-5)
    assert len(calls) == 2


def test_cross_validation_fits_whitening_on_each_folds_training_part_only():
    data = load_digits().subset(np.arange(300))
    folds = stratified_folds(data.y, 3, seed=0)
    shape, k = data.image_shape, data.n_classes
    reuse = Reuse(functools.partial(build_model, "mlp", shape, k, Recipe(), reusable=True, **MLP))
    recipe = Recipe(max_epochs=2, batch_size=32)
    seen = []
    result = cross_validate(data, folds, recipe, reuse, on_fold=lambda _: seen.append(
        _zca_state(reuse.model)))
    for fold, (mean, matrix) in zip(folds, seen):
        want_mean, want_matrix = zca_statistics(data.x[fold.train] / 16.0, 0.1)
        np.testing.assert_allclose(mean, want_mean, atol=1e-6)
        np.testing.assert_allclose(matrix, want_matrix, atol=1e-5)
        # not the statistics of the whole data, which include the validation part
        assert not np.allclose(mean, zca_statistics(data.x / 16.0, 0.1)[0], atol=1e-4)
    # a fresh model per fold trains the same
    fresh = cross_validate(data, folds, recipe, Rebuild(
        lambda r: build_model("mlp", shape, k, r, **MLP)))
    assert fresh.val_loss == pytest.approx(result.val_loss, rel=1e-5)


def test_final_training_fits_whitening_on_the_training_split_never_the_heldout():
    data = load_digits()
    train, heldout = data.subset(np.arange(200)), data.subset(np.arange(200, 260))
    shape, k = data.image_shape, data.n_classes
    rebuild = Rebuild(lambda r: build_model("mlp", shape, k, r, **MLP))
    models = []

    def build_and_keep(recipe, seed):
        models.append(Rebuild.prepare(rebuild, recipe, seed))
        return models[-1]

    rebuild.prepare = build_and_keep
    train_final(train, heldout, Recipe(batch_size=32), rebuild, epochs=1)
    mean, _ = _zca_state(models[-1])
    np.testing.assert_allclose(mean, zca_statistics(train.x / 16.0, 0.1)[0], atol=1e-6)
