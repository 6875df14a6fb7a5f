"""Jit-compatible image augmentation whose strength is one number, `magnitude` in [0, 1].

Keras 3.15's RandomRotation/RandomTranslation/RandomZoom/RandomShear set ``supports_jit = False``,
which turns XLA off for the whole model (`model.jit_compile` reads False). `RandomAugment` does
flips, rotation, shear, translation and zoom as one random affine matrix per image, resampled bilinearly with reflected borders by plain
``keras.ops`` gathers, and brightness, contrast and saturation with ``keras.ops`` too, so a model
containing it stays jit-compiled on every backend.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import keras
from keras import ops


@dataclass(frozen=True)
class AugmentPreset:
    """The strength of each augmentation at magnitude 1; each scales linearly with magnitude.

    Attributes:
        horizontal_flip: probability of a left-right flip, in [0, 1].
        vertical_flip: probability of an up-down flip, in [0, 1].
        brightness: largest absolute delta added to every pixel (images are in [0, 1]).
        contrast: the contrast factor is drawn from [1 - contrast, 1 + contrast].
        saturation: the saturation factor is drawn from [1 - saturation, 1 + saturation];
            applied to 3-channel images only.
        rotation: largest rotation, in degrees, either way.
        shear: largest shear angle, in degrees, either way: rows move sideways by
            ``tan(angle)`` pixels per pixel from the centre row (``ImageDataGenerator``'s
            ``shear_range``, which is in degrees too).
        translation: largest shift, as a fraction of height and width, either way.
        zoom: largest change of scale, as a fraction, either way.
    """

    horizontal_flip: float = 0.0
    vertical_flip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    rotation: float = 0.0
    shear: float = 0.0
    translation: float = 0.0
    zoom: float = 0.0

    def __post_init__(self) -> None:
        bounds = {
            "horizontal_flip": 1.0,
            "vertical_flip": 1.0,
            "brightness": 1.0,
            "contrast": 1.0,
            "saturation": 1.0,
            "rotation": 180.0,
            "shear": 45.0,
            "translation": 1.0,
            "zoom": 1.0,
        }
        for name, high in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"AugmentPreset: {name!r} must be a float; "
                    f"got {type(value).__name__} {value!r}."
                )
            if not 0.0 <= value <= high:
                raise ValueError(
                    f"AugmentPreset: {name!r}={value!r} is out of range; "
                    f"expected a float in [0, {high:g}]."
                )

    @property
    def has_geometric(self) -> bool:
        """Whether any flip, rotation, shear, translation or zoom is on (needs the affine
        transform)."""
        return any((self.horizontal_flip, self.vertical_flip, self.rotation, self.shear,
                    self.translation, self.zoom))


PRESETS: dict[str, AugmentPreset] = {
    # Tiny ImageNet references: flips, brightness 0.4, contrast 0.8-1.2, saturation 0.7-1.3,
    # plus the geometric part that the references could not afford without XLA. Shear 10
    # degrees (a factor tan 10 = 0.18) is the intent of the tutorials' ImageDataGenerator
    # shear_range=0.2.
    "natural": AugmentPreset(
        horizontal_flip=0.5,
        vertical_flip=0.5,
        brightness=0.4,
        contrast=0.2,
        saturation=0.3,
        rotation=15.0,
        shear=10.0,
        translation=0.1,
        zoom=0.1,
    ),
    # 8x8 grayscale digits: flips change the class (2 vs 5, 6 vs 9); one pixel is 12.5%.
    "digits": AugmentPreset(
        brightness=0.2,
        contrast=0.2,
        rotation=15.0,
        translation=0.125,
        zoom=0.1,
    ),
}


def get_preset(preset: str | AugmentPreset | Mapping[str, float]) -> AugmentPreset:
    """Return a preset given its name, itself, or a mapping of its fields.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or unknown field.
        TypeError: for anything else.
    """
    if isinstance(preset, AugmentPreset):
        return preset
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(
                f"RandomAugment: unknown preset {preset!r}. Valid presets: {', '.join(PRESETS)}."
            )
        return PRESETS[preset]
    if isinstance(preset, Mapping):
        known = {f.name for f in dataclasses.fields(AugmentPreset)}
        unknown = sorted(set(preset) - known)
        if unknown:
            raise ValueError(
                f"AugmentPreset: unknown key {unknown[0]!r}. "
                f"Valid keys: {', '.join(sorted(known))}."
            )
        return AugmentPreset(**dict(preset))
    raise TypeError(
        "RandomAugment: 'preset' must be a preset name, an AugmentPreset or a mapping; "
        f"got {type(preset).__name__}."
    )


@keras.saving.register_keras_serializable(package="regsearch")
class RandomAugment(keras.layers.Layer):
    """Random flips, rotation, shear, translation, zoom, brightness, contrast and saturation.

    Put it right after the input rescaling of a model: it expects channels-last images in
    [0, 1], shape ``(batch, height, width, channels)``, and clips its output to [0, 1]. It is
    the identity unless called with ``training=True``, and exactly the identity at magnitude 0.
    The magnitude is a non-trainable variable, so ``layer.magnitude.assign(0.3)`` changes the
    strength of a compiled model without rebuilding or recompiling it.

    Args:
        magnitude: strength in [0, 1]; every maximum of the preset is multiplied by it.
        preset: a name from `PRESETS` ("natural", "digits"), an `AugmentPreset`, or a mapping
            of its fields (how a custom preset comes back from `get_config`).
        seed: seed of the layer's `keras.random.SeedGenerator`.
        **kwargs: passed to `keras.layers.Layer` (name, dtype, ...).

    Raises:
        ValueError: if magnitude is outside [0, 1] or the preset is unknown.
    """

    def __init__(
        self,
        magnitude: float,
        *,
        preset: str | AugmentPreset | Mapping[str, float] = "natural",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        # Pixel arithmetic and resampling stay in float32 under a mixed-precision policy (with
        # bfloat16 the comparisons mix dtypes and fail); the next layer casts to its own dtype.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)):
            raise TypeError(
                f"RandomAugment: 'magnitude' must be a float; got {type(magnitude).__name__}."
            )
        if not 0.0 <= magnitude <= 1.0:
            raise ValueError(
                f"RandomAugment: 'magnitude'={magnitude!r} is out of range; "
                "expected a float in [0, 1]."
            )
        self.preset = get_preset(preset)
        self._preset_arg = preset if isinstance(preset, str) else dataclasses.asdict(self.preset)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.magnitude = self.add_weight(
            name="magnitude",
            shape=(),
            initializer=keras.initializers.Constant(float(magnitude)),
            trainable=False,
            dtype="float32",
        )
        # Everything below is keras.ops and keras.random, which trace under XLA on TensorFlow and
        # JAX (a jit-compiled fit is in tests/trainers/test_augment.py).
        self.supports_jit = True
        self.built = True

    def call(self, inputs, training=None):
        if training is not True:
            return inputs
        images = known_shape(ops.cast(inputs, self.compute_dtype), "RandomAugment")
        augmented = self._augment(images)
        # Guarantees exact identity at magnitude 0 on every backend, whatever resampling and
        # clipping do to the last bit; costs one elementwise select.
        return ops.where(self.magnitude > 0, augmented, images)

    def _augment(self, images):
        preset = self.preset
        magnitude = ops.convert_to_tensor(self.magnitude)
        # One float32 draw per image for every parameter; columns 0-5 feed the affine matrix.
        noise = keras.random.uniform(
            (ops.shape(images)[0], 9), minval=-1.0, maxval=1.0, seed=self.seed_generator
        )

        def per_image(column, strength):
            """Column of noise times strength * magnitude, shaped to broadcast over pixels."""
            value = noise[:, column] * (strength * magnitude)
            return ops.reshape(ops.cast(value, images.dtype), (-1, 1, 1, 1))

        if preset.has_geometric:
            # shear draws its own column, so presets without it keep their random stream
            shear = (keras.random.uniform((ops.shape(images)[0],), minval=-1.0, maxval=1.0,
                                          seed=self.seed_generator)
                     if preset.shear else None)
            images = self._affine(images, noise, magnitude, shear)
        if preset.brightness:
            images = images + per_image(6, preset.brightness)
        if preset.contrast:
            # x + (f - 1) * (x - mean), not f * (x - mean) + mean: f == 1 leaves x bit-exact.
            mean = ops.mean(images, axis=(1, 2), keepdims=True)
            images = images + per_image(7, preset.contrast) * (images - mean)
        if preset.saturation and images.shape[-1] == 3:
            # Blend with the luminance image (as torchvision does) instead of a trip through HSV.
            weights = ops.convert_to_tensor([0.299, 0.587, 0.114], dtype=images.dtype)
            gray = ops.sum(images * weights, axis=-1, keepdims=True)
            images = images + per_image(8, preset.saturation) * (images - gray)
        return ops.clip(images, 0.0, 1.0)

    def _affine(self, images, noise, magnitude, shear=None):
        """Apply one random flip/rotation/shear/translation/zoom matrix per image."""
        preset = self.preset
        height, width = images.shape[1], images.shape[2]
        one = ops.ones_like(noise[:, 0])
        # Noise is uniform in [-1, 1), so noise < 2q - 1 has probability q = p * magnitude.
        flip_x = ops.where(noise[:, 0] < 2.0 * preset.horizontal_flip * magnitude - 1.0, -one, one)
        flip_y = ops.where(noise[:, 1] < 2.0 * preset.vertical_flip * magnitude - 1.0, -one, one)
        angle = noise[:, 2] * (math.radians(preset.rotation) * magnitude)
        # The matrix maps output to input points: scale < 1 samples a smaller patch (zoom in).
        scale = 1.0 + noise[:, 3] * (preset.zoom * magnitude)
        shift_x = noise[:, 4] * (preset.translation * magnitude * width)
        shift_y = noise[:, 5] * (preset.translation * magnitude * height)
        cos = ops.cos(angle) * scale
        sin = ops.sin(angle) * scale
        a0, a1 = cos * flip_x, -sin * flip_y
        b0, b1 = sin * flip_x, cos * flip_y
        if shear is not None:
            # then x-shear: the input point of (x, y) is (x + t y, y) before the rest; t = 0
            # leaves the matrix exact
            t = ops.tan(shear * (math.radians(preset.shear) * magnitude))
            a1, b1 = a0 * t + a1, b0 * t + b1
        # Flip, shear, rotate and scale about the image centre, then shift; the identity gives
        # a2 = b2 = 0 exactly.
        center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
        a2 = center_x - a0 * center_x - a1 * center_y - shift_x
        b2 = center_y - b0 * center_x - b1 * center_y - shift_y
        return _sample(images, (a0, a1, a2, b0, b1, b2))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "magnitude": float(keras.ops.convert_to_numpy(self.magnitude)),
                "preset": self._preset_arg,
                "seed": self.seed,
            }
        )
        return config


def known_shape(images, layer: str):
    """``images``, once its height, width and channels are known (a layer that draws per-pixel
    or per-box randomness needs them when the model is built)."""
    if None in images.shape[1:]:
        raise ValueError(
            f"{layer}: height, width and channels must be known when the model is built; got "
            f"input shape {images.shape}. Give keras.Input a full image shape."
        )
    return images


def _reflect(coordinate, size: int):
    """Fold a pixel coordinate into [-0.5, size - 0.5] by mirroring at the outer pixel edges.

    The same rule as affine_transform's fill_mode "reflect" (d c b a | a b c d | d c b a).
    """
    period = 2.0 * size
    coordinate = ops.mod(coordinate + 0.5, period)
    coordinate = ops.where(coordinate >= size, period - coordinate, coordinate)
    return coordinate - 0.5


def _sample(images, matrix):
    """Bilinearly resample each image at ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``.

    ``keras.ops.image.affine_transform`` does this too, but on TensorFlow it lowers to
    ImageProjectiveTransformV3, which has no XLA kernel, so a jit-compiled ``fit`` fails. Four
    gathers written in keras.ops trace under XLA on every backend.

    Args:
        images: ``(batch, height, width, channels)`` with static height, width and channels.
        matrix: six ``(batch,)`` tensors a0, a1, a2, b0, b1, b2 mapping output pixel (x, y) to
            the input point it samples.
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    batch = ops.shape(images)[0]
    a0, a1, a2, b0, b1, b2 = (ops.reshape(ops.cast(m, "float32"), (-1, 1, 1)) for m in matrix)
    rows, cols = ops.meshgrid(
        ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"), indexing="ij"
    )
    x = _reflect(a0 * cols + a1 * rows + a2, width)
    y = _reflect(b0 * cols + b1 * rows + b2, height)
    x0 = ops.floor(x)
    y0 = ops.floor(y)
    wx = ops.expand_dims(ops.cast(x - x0, images.dtype), -1)
    wy = ops.expand_dims(ops.cast(y - y0, images.dtype), -1)

    def index(value, size):
        return ops.cast(ops.clip(value, 0, size - 1), "int32")

    x0, x1 = index(x0, width), index(x0 + 1.0, width)
    y0, y1 = index(y0, height), index(y0 + 1.0, height)
    pixels = ops.reshape(images, (-1, channels))
    offset = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))

    def gather(row, col):
        return ops.take(pixels, offset + row * width + col, axis=0)

    top = gather(y0, x0) + wx * (gather(y0, x1) - gather(y0, x0))
    bottom = gather(y1, x0) + wx * (gather(y1, x1) - gather(y1, x0))
    return top + wy * (bottom - top)
