"""Jit-compatible image augmentation whose strength is one number, `magnitude` in [0, 1].

Keras 3.15's RandomRotation/RandomTranslation/RandomZoom set ``supports_jit = False``, which turns
XLA off for the whole model (see DESIGN.md). `RandomAugment` does flips, rotation, translation and
zoom as one random affine matrix per image through ``keras.ops.image.affine_transform``, and
brightness, contrast and saturation with plain ``keras.ops``, so a model containing it stays
jit-compiled on every backend.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import keras
from keras import ops

# "reflect" is the one non-trivial fill mode that every backend's affine_transform accepts
# (TensorFlow lacks "mirror"); it avoids the black borders "constant" would teach the model.
_FILL_MODE = "reflect"


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
        translation: largest shift, as a fraction of height and width, either way.
        zoom: largest change of scale, as a fraction, either way.
    """

    horizontal_flip: float = 0.0
    vertical_flip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    rotation: float = 0.0
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
            "translation": 1.0,
            "zoom": 1.0,
        }
        for name, high in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"AugmentPreset: {name!r} must be a float; got {type(value).__name__} {value!r}."
                )
            if not 0.0 <= value <= high:
                raise ValueError(
                    f"AugmentPreset: {name!r}={value!r} is out of range; "
                    f"expected a float in [0, {high:g}]."
                )

    @property
    def has_geometric(self) -> bool:
        """Whether any flip, rotation, translation or zoom is on (needs the affine transform)."""
        return any(
            (self.horizontal_flip, self.vertical_flip, self.rotation, self.translation, self.zoom)
        )


PRESETS: dict[str, AugmentPreset] = {
    # Tiny ImageNet references: flips, brightness 0.4, contrast 0.8-1.2, saturation 0.7-1.3,
    # plus the geometric part that the references could not afford without XLA.
    "natural": AugmentPreset(
        horizontal_flip=0.5,
        vertical_flip=0.5,
        brightness=0.4,
        contrast=0.2,
        saturation=0.3,
        rotation=15.0,
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
                f"AugmentPreset: unknown key {unknown[0]!r}. Valid keys: {', '.join(sorted(known))}."
            )
        return AugmentPreset(**dict(preset))
    raise TypeError(
        "RandomAugment: 'preset' must be a preset name, an AugmentPreset or a mapping; "
        f"got {type(preset).__name__}."
    )


@keras.saving.register_keras_serializable(package="regsearch")
class RandomAugment(keras.layers.Layer):
    """Random flips, rotation, translation, zoom, brightness, contrast and saturation.

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
        # Everything below is keras.ops / keras.random / ops.image.affine_transform, all of which
        # trace under XLA on TensorFlow and JAX (checked by tests/trainers/test_augment.py).
        self.supports_jit = True
        self.built = True

    def call(self, inputs, training=None):
        if training is not True:
            return inputs
        images = ops.cast(inputs, self.compute_dtype)
        magnitude = ops.cast(self.magnitude, self.compute_dtype)
        augmented = self._augment(images, magnitude)
        # Guarantees exact identity at magnitude 0 on every backend, whatever interpolation and
        # clipping do to the last bit; costs one elementwise select.
        return ops.where(magnitude > 0, augmented, images)

    def _augment(self, images, magnitude):
        preset = self.preset
        shape = ops.shape(images)
        batch, height, width, channels = shape[0], shape[1], shape[2], images.shape[-1]
        # One draw per image for every parameter; column k feeds parameter k below.
        noise = keras.random.uniform(
            (batch, 9), minval=-1.0, maxval=1.0, dtype=self.compute_dtype, seed=self.seed_generator
        )
        if preset.has_geometric:
            images = self._affine(images, noise[:, :6], magnitude, height, width)
        per_image = (-1, 1, 1, 1)
        if preset.brightness:
            delta = ops.reshape(noise[:, 6] * (preset.brightness * magnitude), per_image)
            images = images + delta
        if preset.contrast:
            # Written as x + (f - 1) * (x - mean) so that f == 1 leaves x bit-exact.
            factor = ops.reshape(noise[:, 7] * (preset.contrast * magnitude), per_image)
            mean = ops.mean(images, axis=(1, 2), keepdims=True)
            images = images + factor * (images - mean)
        if preset.saturation and channels == 3:
            # Blend with the luminance image (as torchvision does) instead of a trip through HSV.
            factor = ops.reshape(noise[:, 8] * (preset.saturation * magnitude), per_image)
            weights = ops.convert_to_tensor([0.299, 0.587, 0.114], dtype=images.dtype)
            gray = ops.sum(images * weights, axis=-1, keepdims=True)
            images = images + factor * (images - gray)
        return ops.clip(images, 0.0, 1.0)

    def _affine(self, images, noise, magnitude, height, width):
        """Apply one random flip/rotation/translation/zoom matrix per image."""
        preset = self.preset
        dtype = self.compute_dtype
        one = ops.ones_like(noise[:, 0])
        # Flips: the uniform noise in [-1, 1] maps to [0, 1], flipped with probability p.
        flip_x = ops.where((noise[:, 0] + 1.0) / 2.0 < preset.horizontal_flip * magnitude, -one, one)
        flip_y = ops.where((noise[:, 1] + 1.0) / 2.0 < preset.vertical_flip * magnitude, -one, one)
        angle = noise[:, 2] * (math.radians(preset.rotation) * magnitude)
        # The matrix maps output to input coordinates: scale < 1 samples a smaller patch (zoom in).
        scale = 1.0 + noise[:, 3] * (preset.zoom * magnitude)
        shift = noise[:, 4:6] * (preset.translation * magnitude)
        height_f = ops.cast(height, dtype)
        width_f = ops.cast(width, dtype)
        shift_x = shift[:, 0] * width_f
        shift_y = shift[:, 1] * height_f
        cos = ops.cos(angle) * scale
        sin = ops.sin(angle) * scale
        a0, a1 = cos * flip_x, -sin * flip_y
        b0, b1 = sin * flip_x, cos * flip_y
        center_x = (width_f - 1.0) / 2.0
        center_y = (height_f - 1.0) / 2.0
        # Rotate/scale/flip about the image centre, then shift; identity parameters give
        # a2 = b2 = 0 exactly.
        a2 = center_x - a0 * center_x - a1 * center_y - shift_x
        b2 = center_y - b0 * center_x - b1 * center_y - shift_y
        zero = ops.zeros_like(a0)
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)
        return ops.image.affine_transform(
            images,
            ops.cast(transform, "float32"),
            interpolation="bilinear",
            fill_mode=_FILL_MODE,
            data_format="channels_last",
        )

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
