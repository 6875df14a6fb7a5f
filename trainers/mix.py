"""Mixup and cutmix inside the compiled training step: blend pairs of images, weigh their labels.

Each training image is paired with its partner, the image at the mirrored position of the
batch (``ops.flip(x, 0)``, as timm's batch mode does: ``fit`` shuffles every epoch, so the
pairs are random). One weight ``w`` per batch is drawn from Beta(alpha, alpha), as in the
mixup and cutmix papers and timm's default:

- mixup: ``x' = w * x + (1 - w) * partner``;
- cutmix: one random box (area ``1 - w`` of the image, clipped at the borders) is pasted from
  the partner, and ``w`` becomes the fraction of the image that is still its own.

The label weight ``w`` is written to a variable of the layer that the training loss reads
(`trainers.loss.RecipeCrossEntropy`), so labels get exactly the weights the pixels got. With
both on, each batch uses cutmix or mixup with probability 1/2 (timm's ``switch_prob``).
Keras' ``keras.random.beta`` does not compile under XLA on TensorFlow (its gamma sampler has no
XLA kernel), so the Beta draw here is written in ``keras.ops`` (`symmetric_beta`).
"""

from __future__ import annotations

import zlib
from typing import Any

import keras
import numpy as np
from keras import ops

from trainers.augment import known_shape

# Candidates per gamma draw: Marsaglia and Tsang's method accepts more than 95% of them for a
# shape >= 1, so all 16 are rejected with probability below 1e-20.
_CANDIDATES = 16


def symmetric_beta(alpha, n: int, seed: keras.random.SeedGenerator):
    """Draw ``n`` samples of Beta(alpha, alpha) with keras.ops only (traces under XLA).

    Beta(a, a) is G1 / (G1 + G2) for independent Gamma(a) draws. Each gamma is Marsaglia and
    Tsang's squeeze-free method for Gamma(a + 1) (a fixed number of candidates, the first
    accepted one kept, so there is no loop), times U ** (1 / a); the ratio is taken in log
    space, which keeps small ``a`` (draws near 0 or 1) finite.

    Args:
        alpha: a positive scalar (float or tensor).
        n: number of samples.
        seed: the `keras.random.SeedGenerator` to draw from.

    Returns:
        A float32 tensor of shape ``(n,)``, in [0, 1].
    """
    alpha = ops.cast(alpha, "float32")
    d = alpha + 2.0 / 3.0  # (a + 1) - 1/3
    c = 1.0 / ops.sqrt(9.0 * d)
    normal = keras.random.normal((2, n, _CANDIDATES), seed=seed)
    uniform = keras.random.uniform((2, n, _CANDIDATES), minval=1e-12, maxval=1.0, seed=seed)
    boost = keras.random.uniform((2, n), minval=1e-12, maxval=1.0, seed=seed)
    v = (1.0 + c * normal) ** 3
    positive = v > 0
    safe_v = ops.where(positive, v, 1.0)
    accept = positive & (ops.log(uniform) < 0.5 * normal**2 + d - d * safe_v + d * ops.log(safe_v))
    first = ops.argmax(ops.cast(accept, "int32"), axis=-1)  # the first accepted candidate
    chosen = ops.squeeze(ops.take_along_axis(safe_v, ops.expand_dims(first, -1), axis=-1), -1)
    log_gamma = ops.log(d * chosen) + ops.log(boost) / alpha
    return ops.sigmoid(log_gamma[0] - log_gamma[1])


@keras.saving.register_keras_serializable(package="regsearch")
class MixBatch(keras.layers.Layer):
    """Mixup and/or cutmix of a batch of channels-last images, in training only.

    Put it after the augmentation. Outside training it is the identity and sets the label
    weight to 1, and it is exactly the identity with both strengths 0.

    Args:
        mixup: mixup's alpha, >= 0 (0: off): a float (the layer then owns a variable holding
            it) or a scalar float32 `keras.Variable` shared with other layers
            (`trainers.regularization.Strengths.mixup`).
        cutmix: cutmix's alpha, likewise.
        seed: initial seed of the layer's `keras.random.SeedGenerator`; by default one derived
            from the layer name, so building it draws nothing from global random state.
        **kwargs: passed to `keras.layers.Layer` (name, dtype, ...).

    Attributes:
        label_weight: scalar variable: the weight of each image's own label in the last batch
            (1 when nothing was mixed); its partner's label has ``1 - label_weight``.

    Raises:
        ValueError: if a float alpha is negative or not finite.
    """

    def __init__(self, mixup: keras.Variable | float = 0.0, cutmix: keras.Variable | float = 0.0,
                 seed: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")  # pixel blending stays float32, as augmentation
        super().__init__(**kwargs)
        self.mixup = self._strength("mixup", mixup)
        self.cutmix = self._strength("cutmix", cutmix)
        self.label_weight = self.add_weight(
            name="label_weight", shape=(), initializer="ones", trainable=False,
            dtype="float32", autocast=False,
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(
            seed if seed is not None else zlib.crc32(self.name.encode()) % 2**31
        )
        self.built = True

    def _strength(self, name: str, value: keras.Variable | float) -> keras.Variable:
        if isinstance(value, keras.Variable):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not np.isfinite(value) or value < 0:
            raise ValueError(f"MixBatch: {name!r}={value!r} must be a finite float >= 0.")
        return self.add_weight(
            name=name, shape=(), initializer=keras.initializers.Constant(float(value)),
            trainable=False, dtype="float32", autocast=False,
        )

    def call(self, inputs, training=None):
        if training is not True:
            self.label_weight.assign(ops.ones((), "float32"))
            return inputs
        images = known_shape(ops.cast(inputs, self.compute_dtype), "MixBatch")
        mixup = ops.cast(self.mixup, "float32")
        cutmix = ops.cast(self.cutmix, "float32")
        # alpha 1 stands in for an alpha that is off, so the unused draw stays finite
        mix_weight = symmetric_beta(ops.where(mixup > 0, mixup, 1.0), 1, self.seed_generator)[0]
        cut_weight = symmetric_beta(ops.where(cutmix > 0, cutmix, 1.0), 1, self.seed_generator)[0]
        coin, box_y, box_x = ops.unstack(
            keras.random.uniform((3,), seed=self.seed_generator), 3
        )
        partner = ops.flip(images, 0)
        mixed = mix_weight * images + (1.0 - mix_weight) * partner
        pasted, cut_weight = _cutmix(images, partner, cut_weight, box_y, box_x)
        use_cutmix = (cutmix > 0) & ((mixup <= 0) | (coin < 0.5))
        use_mixup = (mixup > 0) & ops.logical_not(use_cutmix)
        self.label_weight.assign(
            ops.where(use_cutmix, cut_weight, ops.where(use_mixup, mix_weight, 1.0))
        )
        return ops.where(use_cutmix, pasted, ops.where(use_mixup, mixed, images))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"mixup": float(ops.convert_to_numpy(self.mixup)),
                       "cutmix": float(ops.convert_to_numpy(self.cutmix)), "seed": self.seed})
        return config


def _cutmix(images, partner, weight, centre_y, centre_x):
    """Paste a box of area about ``1 - weight`` from ``partner`` into every image.

    The box is centred at (``centre_y``, ``centre_x``), fractions of the height and width, and
    clipped at the borders, as in the cutmix paper. Returns the images and the fraction of
    each image that is still its own (the label weight).
    """
    height, width = images.shape[1], images.shape[2]
    side = ops.sqrt(1.0 - weight)
    half_h, half_w = side * height / 2.0, side * width / 2.0
    top = ops.clip(ops.round(centre_y * height - half_h), 0, height)
    bottom = ops.clip(ops.round(centre_y * height + half_h), 0, height)
    left = ops.clip(ops.round(centre_x * width - half_w), 0, width)
    right = ops.clip(ops.round(centre_x * width + half_w), 0, width)
    rows = ops.arange(height, dtype="float32")[:, None]
    cols = ops.arange(width, dtype="float32")[None, :]
    box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    pasted = ops.where(box[None, :, :, None], partner, images)
    kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return pasted, kept
