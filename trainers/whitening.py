"""ZCA whitening fitted on training images only: its statistics, and the layer that applies them.

``ImageDataGenerator(zca_whitening=True)`` fitted its statistics once, on whatever images it was
given. Here the `Whiten` layer holds them in variables, and `fit_whitening` sets them from the
training part of each fold (and, for the final model, from the whole training split), so no
validation or held-out image shapes the transform a recipe is scored with. The layer sits after
the augmentation and mixing, as ``ImageDataGenerator`` standardised after its random
transforms, and applies to every image, in training and at inference.
"""

from __future__ import annotations

import hashlib
from typing import Any

import keras
import numpy as np
from keras import ops


# statistics kept per layer: a study's folds plus the final training split, with room to spare
_CACHE_SIZE = 12


def zca_statistics(x: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and the ZCA matrix of images ``x`` (flattened, float64 arithmetic).

    With ``C = U diag(s) U^T`` the covariance of the centred images, the matrix is
    ``U diag(1 / sqrt(s + epsilon)) U^T``: symmetric, so whitened images stay as close to the
    originals as whitening allows (ZCA), and ``epsilon`` keeps directions of near-zero
    variance from being blown up.

    Returns:
        ``(mean, matrix)`` as float32, shapes ``(d,)`` and ``(d, d)`` with ``d`` pixels.
    """
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    mean = flat.mean(axis=0)
    centred = flat - mean
    covariance = centred.T @ centred / len(flat)
    values, vectors = np.linalg.eigh(covariance)
    values = np.clip(values, 0.0, None)  # rounding can make the smallest ones slightly negative
    matrix = (vectors / np.sqrt(values + epsilon)) @ vectors.T
    return mean.astype("float32"), matrix.astype("float32")


@keras.saving.register_keras_serializable(package="regsearch")
class Whiten(keras.layers.Layer):
    """Apply ZCA whitening, ``(x - mean) @ matrix``, with statistics held in variables.

    It is the identity until `fit_whitening` sets the statistics (mean 0, identity matrix).
    The matrix has (height * width * channels)^2 entries: 16 KB for 8x8 digits, 38 MB at
    32x32x3, 600 MB at 64x64x3, which is why whitening suits small images.

    Args:
        epsilon: added to every variance before the inverse square root, > 0.
        **kwargs: passed to `keras.layers.Layer` (name, dtype, ...).

    Raises:
        ValueError: if epsilon is not a positive finite float.
    """

    def __init__(self, epsilon: float = 0.01, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) \
                or not np.isfinite(epsilon) or epsilon <= 0:
            raise ValueError(f"Whiten: 'epsilon'={epsilon!r} must be a finite float > 0.")
        self.epsilon = float(epsilon)
        self._statistics: dict[tuple[bytes, float], tuple[np.ndarray, np.ndarray]] = {}

    def build(self, input_shape) -> None:
        size = int(np.prod(input_shape[1:]))
        self.mean = self.add_weight(name="mean", shape=(size,), initializer="zeros",
                                    trainable=False, autocast=False)
        self.matrix = self.add_weight(name="matrix", shape=(size, size), initializer="identity",
                                      trainable=False, autocast=False)

    def call(self, inputs):
        flat = ops.reshape(ops.cast(inputs, "float32"), (-1, self.mean.shape[0]))
        whitened = ops.matmul(flat - self.mean, self.matrix)
        return ops.reshape(whitened, ops.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        # the statistics are weights, saved with the model; the config holds the epsilon
        return {**super().get_config(), "epsilon": self.epsilon}


def fit_whitening(model: keras.Model, x: np.ndarray, pixel_max: float) -> int:
    """Set every `Whiten` layer of ``model`` from images ``x`` (in [0, pixel_max]).

    Call it with the images the model is about to train on, and only those: `trainers.fit`
    does, with each fold's training part. The layer sees images scaled to [0, 1] (after the
    model's rescaling), so the statistics are taken of ``x / pixel_max``.

    Returns:
        The number of layers set (0 for a model without whitening; ``x`` is then not read).
    """
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, Whiten)]
    if not layers:
        return 0
    images = np.ascontiguousarray(x, dtype=np.float32) / np.float32(pixel_max)
    # Every trial trains the same folds: a reused model keeps each fold's statistics instead
    # of decomposing its covariance again (seconds at 32x32x3).
    key = hashlib.blake2b(images.tobytes(), digest_size=16).digest() + images.shape[0].to_bytes(8)
    for layer in layers:
        cache = layer._statistics
        if (key, layer.epsilon) not in cache:
            cache[key, layer.epsilon] = zca_statistics(images, layer.epsilon)
            while len(cache) > _CACHE_SIZE:
                cache.pop(next(iter(cache)))
        mean, matrix = cache[key, layer.epsilon]
        layer.mean.assign(mean)
        layer.matrix.assign(matrix)
    return len(layers)
