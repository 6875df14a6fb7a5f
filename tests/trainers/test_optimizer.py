"""Tests for trainers/optimizer.py: decoupled weight decay held in an optimizer variable."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from trainers.optimizer import VariableAdamW, set_weight_decay
from trainers.recipe import Recipe
from trainers.regularization import CROSS_ENTROPY
from trainers.reuse import compile_model

LR = 1e-2


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", bias_initializer="ones")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _data(n: int = 24):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), np.arange(n) % 3


def _numpy(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("decay", [0.05, 0.5])
def test_one_step_shrinks_kernels_by_lr_times_decay_and_leaves_biases(decay):
    """AdamW's rule: w <- w - lr * wd * w, then the Adam step the same gradient gives."""
    x, y = _data()
    initial = _numpy(_model().trainable_variables)
    after = {}
    for wd in (0.0, decay):
        model = compile_model(_model(), Recipe(learning_rate=LR, weight_decay=wd))
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        after[wd] = _numpy(model.trainable_variables)
    for w0, plain, decayed in zip(initial, after[0.0], after[decay]):
        if w0.ndim >= 2:  # kernels: exactly the decay term apart
            np.testing.assert_allclose(plain - decayed, LR * decay * w0, rtol=1e-4, atol=1e-8)
            assert np.abs(plain - decayed).max() > 0
        else:  # biases do not decay
            np.testing.assert_array_equal(plain, decayed)


def test_weight_decay_shrinks_weights_without_adding_to_the_loss():
    x, y = _data(96)
    norms = {}
    for wd in (0.0, 1.0):
        model = compile_model(_model(), Recipe(learning_rate=LR, weight_decay=wd))
        history = model.fit(x, y, batch_size=24, epochs=15, shuffle=False, verbose=0).history
        norms[wd] = sum(float(np.square(k).sum()) for k in _numpy(model.trainable_variables)
                        if k.ndim >= 2)
        # the loss the optimizer minimises is the plain cross-entropy: no penalty term
        np.testing.assert_allclose(history["loss"], history[CROSS_ENTROPY], rtol=1e-5)
        scores = model.evaluate(x, y, return_dict=True, verbose=0)
        assert scores["loss"] == pytest.approx(scores[CROSS_ENTROPY], rel=1e-6)
    assert norms[1.0] < 0.95 * norms[0.0]


def test_weight_decay_is_a_variable_that_survives_get_config():
    optimizer = VariableAdamW(learning_rate=1e-3, weight_decay=0.05)
    assert optimizer.decoupled_weight_decay == pytest.approx(0.05)
    assert any(v is optimizer.decay_variable for v in optimizer.variables)
    set_weight_decay(optimizer, 0.2)
    assert optimizer.decoupled_weight_decay == pytest.approx(0.2)
    again = VariableAdamW.from_config(optimizer.get_config())
    assert again.decoupled_weight_decay == pytest.approx(0.2)
    assert again.weight_decay is None  # Keras' own float decay stays off


def test_weight_decay_errors_name_the_value():
    with pytest.raises(ValueError, match="weight_decay"):
        VariableAdamW(weight_decay=-0.1)
    set_weight_decay(keras.optimizers.Adam(), 0.0)  # off needs no variable
    with pytest.raises(ValueError, match=r"weight_decay=0\.1"):
        set_weight_decay(keras.optimizers.Adam(), 0.1)
