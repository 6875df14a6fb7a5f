"""Tests for trainers/loss.py: the training loss smooths labels; what is reported does not."""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import pytest

from trainers.loss import RecipeCrossEntropy
from trainers.models import build_model
from trainers.recipe import Recipe
from trainers.regularization import CROSS_ENTROPY, training_loss
from trainers.reuse import Rebuild, Reuse, SeedAtTrainBegin

MLP = {"pixel_max": 1.0, "augment_preset": "digits", "hidden_layers": 1, "units": 32}


def _probabilities(n: int = 12, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(n, k)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return p.astype("float32"), (np.arange(n) % k).astype("int64")


@pytest.mark.parametrize("smoothing", [0.05, 0.1, 0.4])
def test_smoothed_loss_equals_keras_label_smoothing_on_one_hot_labels(smoothing):
    p, y = _probabilities()
    ours = RecipeCrossEntropy(keras.Variable(smoothing, dtype="float32", trainable=False))
    keras_own = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    one_hot = np.eye(p.shape[1], dtype="float32")[y]
    assert float(ours(y, p)) == pytest.approx(float(keras_own(one_hot, p)), rel=1e-5)
    plain = float(keras.losses.SparseCategoricalCrossentropy()(y, p))
    assert float(ours(y, p)) != pytest.approx(plain, rel=1e-3)


def test_unsmoothed_loss_is_exactly_the_sparse_cross_entropy():
    p, y = _probabilities()
    plain = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, p))
    ours = RecipeCrossEntropy(0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours.call(y, p)), plain)


def _separable(n: int = 60, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated clusters as 4x4 one-channel images: easy to fit exactly."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    centres = rng.uniform(0, 1, size=(k, 4, 4, 1))
    x = centres[y] + rng.normal(scale=0.02, size=(n, 4, 4, 1))
    return x.astype("float32"), y.astype("int64")


def test_smoothing_raises_the_training_cross_entropy_floor_but_not_what_is_reported():
    x, y = _separable()
    k, smoothing = 3, 0.3
    # the best a smoothed model can do puts 1 - e + e / K on the true class
    floor = -math.log(1 - smoothing + smoothing / k)
    final = {}
    for value in (0.0, smoothing):
        recipe = Recipe(label_smoothing=value, learning_rate=1e-2, batch_size=20)
        model = Rebuild(lambda r: build_model("mlp", (4, 4, 1), k, r, **MLP)).prepare(recipe, 0)
        history = model.fit(x, y, validation_data=(x[:30], y[:30]), batch_size=20, epochs=60,
                            callbacks=[SeedAtTrainBegin(0)], verbose=0).history
        final[value] = history[CROSS_ENTROPY][-1]
        # the validation loss that early stopping and the study use is the plain one
        p = keras.ops.convert_to_numpy(model.predict(x[:30], verbose=0))
        plain = float(np.mean(-np.log(p[np.arange(30), y[:30]])))
        assert history[f"val_{CROSS_ENTROPY}"][-1] == pytest.approx(plain, rel=1e-4)
        if value:
            # the optimizer's loss is the smoothed one, above the plain cross-entropy
            assert history["loss"][-1] > history[CROSS_ENTROPY][-1] + 0.1
    assert final[0.0] < 0.5 * floor  # without smoothing the fit gets well below the floor
    assert final[smoothing] > 0.9 * floor  # with it, the plain cross-entropy stays near it
    assert final[smoothing] == pytest.approx(floor, rel=0.5)


def test_training_loss_reads_the_smoothing_variable_of_a_reusable_model():
    build = functools.partial(build_model, "mlp", (4, 4, 1), 3, Recipe(), reusable=True, **MLP)
    model = Reuse(build).prepare(Recipe(label_smoothing=0.2), 0)
    loss = model.loss
    assert isinstance(loss, RecipeCrossEntropy)
    assert loss.label_smoothing is model.get_layer("strengths").label_smoothing
    assert float(keras.ops.convert_to_numpy(loss.label_smoothing)) == pytest.approx(0.2)
    plain = build_model("mlp", (4, 4, 1), 3, Recipe(), **MLP)
    assert training_loss(plain, Recipe()) == "sparse_categorical_crossentropy"
    assert training_loss(plain, Recipe(label_smoothing=0.1)).label_smoothing == 0.1
