"""Tests for trainers/layers.py: LocalResponseNormalization against a direct numpy loop."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from trainers.layers import LocalResponseNormalization


def _lrn_loop(x: np.ndarray, depth_radius: int, bias: float, alpha: float, beta: float):
    """tf.nn.local_response_normalization, written out one channel at a time."""
    x = x.astype(np.float64)
    out = np.empty_like(x)
    channels = x.shape[-1]
    for d in range(channels):
        low, high = max(0, d - depth_radius), min(channels, d + depth_radius + 1)
        sqr_sum = np.sum(x[..., low:high] ** 2, axis=-1)
        out[..., d] = x[..., d] / (bias + alpha * sqr_sum) ** beta
    return out


@pytest.mark.parametrize(
    "depth_radius, channels",
    [(0, 4), (1, 5), (2, 3), (5, 4), (5, 16), (5, 64)],  # (2, 3), (5, 4): channels < window
)
@pytest.mark.parametrize(
    "bias, alpha, beta", [(2.0, 1e-4, 0.75), (1.0, 0.5, 0.5)]  # reference values; strong effect
)
def test_local_response_normalization_matches_numpy_loop(depth_radius, channels, bias, alpha, beta):
    x = np.random.default_rng(channels + depth_radius).normal(0, 3, (2, 5, 6, channels))
    x = x.astype(np.float32)
    layer = LocalResponseNormalization(depth_radius, bias=bias, alpha=alpha, beta=beta)
    got = keras.ops.convert_to_numpy(layer(x))
    expected = _lrn_loop(x, depth_radius, bias, alpha, beta)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_local_response_normalization_works_in_jit_compiled_model():
    x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 3, size=16)
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    hidden = LocalResponseNormalization(depth_radius=2, alpha=0.1)(hidden)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    assert model.jit_compile is True
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.jit_compile is True


def test_local_response_normalization_get_config_round_trip():
    layer = LocalResponseNormalization(3, bias=1.5, alpha=2e-4, beta=0.5, name="lrn")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, LocalResponseNormalization)
    assert clone.get_config() == layer.get_config()


def test_local_response_normalization_rejects_negative_radius():
    with pytest.raises(ValueError, match="depth_radius"):
        LocalResponseNormalization(-1)
