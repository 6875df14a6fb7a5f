"""Keras layers that the reference models need and Keras 3 lacks, in backend-agnostic keras.ops."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="regsearch")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalization across channels, as ``tf.nn.local_response_normalization``.

    For channels-last input, with ``sqr_sum[..., d] = sum(x[..., d - r : d + r + 1] ** 2)``
    (the window clipped at the first and last channel) the output is
    ``x / (bias + alpha * sqr_sum) ** beta``. The AlexNet-like reference CNN uses it after its
    first two convolutions with the defaults below.

    Args:
        depth_radius: half-width r of the channel window (the window holds 2r + 1 channels).
        bias: offset added before the power, usually > 0 to avoid dividing by zero.
        alpha: scale of the sum of squares.
        beta: exponent.
        **kwargs: passed to `keras.layers.Layer` (name, dtype, ...).

    Raises:
        ValueError: if depth_radius is negative.
    """

    def __init__(
        self,
        depth_radius: int = 5,
        bias: float = 2.0,
        alpha: float = 1e-4,
        beta: float = 0.75,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(depth_radius, bool) or int(depth_radius) != depth_radius:
            raise TypeError(
                f"LocalResponseNormalization: 'depth_radius' must be an int; got {depth_radius!r}."
            )
        if depth_radius < 0:
            raise ValueError(
                f"LocalResponseNormalization: 'depth_radius'={depth_radius!r} must be >= 0."
            )
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.built = True

    def call(self, inputs):
        channels = inputs.shape[-1]
        radius = self.depth_radius
        squares = ops.square(inputs)
        # Zero padding gives the clipped window at the edges. 2r + 1 shifted slices summed
        # exactly, rather than a band-matrix product that GPUs may run in TF32.
        pad = [(0, 0)] * (len(inputs.shape) - 1) + [(radius, radius)]
        padded = ops.pad(squares, pad)
        sqr_sum = padded[..., 0:channels]
        for offset in range(1, 2 * radius + 1):
            sqr_sum = sqr_sum + padded[..., offset : offset + channels]
        return inputs * ops.power(self.bias + self.alpha * sqr_sum, -self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "depth_radius": self.depth_radius,
                "bias": self.bias,
                "alpha": self.alpha,
                "beta": self.beta,
            }
        )
        return config
