"""Tests for trainers/augment.py: identity, strength, jit compatibility, magnitude as a variable."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from trainers.augment import PRESETS, AugmentPreset, RandomAugment, _sample

SHAPES = {"natural": (16, 16, 3), "digits": (8, 8, 1)}


def _images(preset: str, n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPES[preset]), dtype=np.float32)


def _augmented(layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(layer(x, training=True))


def _model(augment: keras.layers.Layer, shape: tuple[int, int, int]) -> keras.Model:
    inputs = keras.Input(shape)
    hidden = keras.layers.Flatten()(augment(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    return model


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_random_augment_magnitude_zero_is_identity_in_training(preset, seed):
    x = _images(preset, seed=seed)
    layer = RandomAugment(0.0, preset=preset, seed=seed)
    np.testing.assert_array_equal(_augmented(layer, x), x)
    # Without the final select too: the arithmetic itself is exact at magnitude 0.
    raw = keras.ops.convert_to_numpy(layer._augment(keras.ops.convert_to_tensor(x)))
    np.testing.assert_array_equal(raw, x)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("magnitude", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("training", [None, False])
def test_random_augment_is_identity_in_inference(preset, magnitude, training):
    x = _images(preset)
    layer = RandomAugment(magnitude, preset=preset, seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=training)), x)
    model = _model(layer, SHAPES[preset])
    predicted = model.predict(x, verbose=0)
    np.testing.assert_allclose(predicted, keras.ops.convert_to_numpy(model(x, training=False)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("seed", [0, 7])
def test_random_augment_spread_grows_with_magnitude(preset, seed):
    x = _images(preset, n=64, seed=seed)
    spreads = []
    for magnitude in (0.0, 0.25, 0.5, 1.0):
        y = _augmented(RandomAugment(magnitude, preset=preset, seed=seed), x)
        assert y.shape == x.shape
        assert y.min() >= 0.0 and y.max() <= 1.0
        spreads.append(float(np.abs(y - x).mean()))
    assert spreads[0] == 0.0
    assert spreads == sorted(spreads) and len(set(spreads)) == 4, spreads


def test_random_augment_certain_horizontal_flip_mirrors_exactly():
    x = _images("natural", n=4)
    layer = RandomAugment(1.0, preset=AugmentPreset(horizontal_flip=1.0), seed=0)
    np.testing.assert_array_equal(_augmented(layer, x), x[:, :, ::-1, :])
    layer = RandomAugment(1.0, preset=AugmentPreset(vertical_flip=1.0), seed=0)
    np.testing.assert_array_equal(_augmented(layer, x), x[:, ::-1, :, :])


def test_random_augment_digits_preset_never_flips_or_saturates():
    digits = PRESETS["digits"]
    assert digits.horizontal_flip == digits.vertical_flip == digits.saturation == 0.0


@pytest.mark.parametrize(
    "matrix",
    [
        [1.0, 0.0, 2.5, 0.0, 1.0, -3.0],  # translation past the border
        [0.85, -0.2, 3.0, 0.2, 0.85, -2.0],  # rotation and zoom in
        [-1.1, 0.0, 16.0, 0.0, 1.1, -1.0],  # flip and zoom out
    ],
)
def test_sample_matches_scipy_map_coordinates_reflect(matrix):
    # scipy in float64 is the reference: keras.ops.image.affine_transform agrees to 1e-6 on
    # TensorFlow but only to ~1e-2 on JAX/GPU, whose einsum for the coordinates runs in TF32.
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images("natural", n=3)
    columns = [np.full((3,), value, np.float32) for value in matrix]
    ours = keras.ops.convert_to_numpy(_sample(keras.ops.convert_to_tensor(x), columns))
    a0, a1, a2, b0, b1, b2 = matrix
    rows, cols = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    points = [b0 * cols + b1 * rows + b2, a0 * cols + a1 * rows + a2]
    reference = np.empty_like(ours)
    for image in range(3):
        for channel in range(3):
            reference[image, ..., channel] = ndimage.map_coordinates(
                x[image, ..., channel].astype(np.float64), points, order=1, mode="reflect"
            )
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("magnitude", [0.0, 0.5, 1.0])
def test_random_augment_keeps_model_jit_compiled(preset, magnitude):
    model = _model(RandomAugment(magnitude, preset=preset, seed=0), SHAPES[preset])
    assert model.jit_compile is True


def test_keras_random_rotation_turns_jit_off():
    # The contrast that shows the test above can fail (DESIGN.md: Keras 3.15 sets
    # supports_jit=False on its geometric layers).
    with pytest.warns(UserWarning, match="jit_compile"):
        model = _model(keras.layers.RandomRotation(0.1), SHAPES["natural"])
    assert model.jit_compile is False


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_random_augment_fits_and_magnitude_assign_needs_no_recompile(preset):
    x = _images(preset)
    y = np.random.default_rng(1).integers(0, 3, size=len(x))
    layer = RandomAugment(0.0, preset=preset, seed=0)
    model = _model(layer, SHAPES[preset])
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    train_function = model.train_function
    np.testing.assert_array_equal(_augmented(layer, x), x)

    layer.magnitude.assign(0.5)
    assert not np.array_equal(_augmented(layer, x), x)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert model.train_function is train_function
    assert model.jit_compile is True
    assert float(keras.ops.convert_to_numpy(layer.magnitude)) == 0.5
    assert layer.magnitude in model.non_trainable_weights


@pytest.mark.parametrize(
    "preset", ["natural", "digits", AugmentPreset(brightness=0.1, rotation=5.0)]
)
def test_random_augment_get_config_round_trip(preset):
    layer = RandomAugment(0.3, preset=preset, seed=3, name="augment")
    layer.magnitude.assign(0.7)
    config = layer.get_config()
    clone = RandomAugment.from_config(config)
    assert clone.get_config() == config
    assert clone.preset == layer.preset
    assert float(keras.ops.convert_to_numpy(clone.magnitude)) == pytest.approx(0.7)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, RandomAugment) and restored.get_config() == config


@pytest.mark.parametrize("magnitude", [-0.1, 1.5])
def test_random_augment_rejects_magnitude_out_of_range(magnitude):
    with pytest.raises(ValueError, match="magnitude"):
        RandomAugment(magnitude)


def test_random_augment_rejects_unknown_preset():
    with pytest.raises(ValueError, match="preset 'imagenet'.*natural"):
        RandomAugment(0.5, preset="imagenet")


@pytest.mark.parametrize("field, value", [("rotation", -1.0), ("horizontal_flip", 1.5)])
def test_augment_preset_rejects_out_of_range(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentPreset(**{field: value})


def test_random_augment_trains_under_bfloat16_mixed_precision() -> None:
    """The layer computes in float32 whatever the policy: bfloat16 mixed precision trains."""
    import keras
    import numpy as np

    from trainers.models import build_model
    from trainers.recipe import Recipe

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("mlp", (8, 8, 1), 3, Recipe(augment=0.5, dropout=0.2), pixel_max=1.0,
                            augment_preset="digits", hidden_layers=1, units=8)
        assert model.get_layer("augment").compute_dtype == "float32"
        assert model.get_layer("dense_0").compute_dtype == "bfloat16"
        model.compile("adam", "sparse_categorical_crossentropy")
        x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype("float32")
        history = model.fit(x, np.arange(16) % 3, epochs=1, verbose=0).history
        assert np.isfinite(history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_shear_moves_rows_sideways_in_proportion_to_their_distance_from_the_centre():
    # 9 rows: the centre row (4) stays; row r moves by t * (r - 4) pixels, |t| <= tan(30 deg)
    x = np.zeros((16, 9, 33, 1), "float32")
    x[:, :, 16, :] = 1.0  # one bright vertical line in the middle column
    layer = RandomAugment(1.0, preset=AugmentPreset(shear=30.0), seed=3)
    y = _augmented(layer, x)
    np.testing.assert_allclose(y[:, 4], x[:, 4], atol=1e-6)  # the centre row is unmoved
    # where each row's line went: the brightness-weighted column
    columns = (y[..., 0] * np.arange(33)).sum(axis=2) / y[..., 0].sum(axis=2)
    shifts = columns - 16
    slopes = shifts[:, 0] / (0 - 4)  # the top row's shift per row from the centre
    assert np.all(np.abs(slopes) <= np.tan(np.radians(30)) + 1e-4)
    assert np.abs(slopes).max() > 0.1  # it really moves
    # a straight, sheared line: every row's shift is the same slope times its distance
    np.testing.assert_allclose(shifts, slopes[:, None] * (np.arange(9) - 4), atol=1e-3)


def test_shear_is_the_identity_at_magnitude_zero_and_keeps_jit():
    x = _images("natural")
    layer = RandomAugment(0.0, preset=AugmentPreset(shear=45.0), seed=0)
    np.testing.assert_array_equal(_augmented(layer, x), x)
    raw = keras.ops.convert_to_numpy(layer._augment(keras.ops.convert_to_tensor(x)))
    np.testing.assert_array_equal(raw, x)
    assert PRESETS["natural"].shear == 10.0
    model = _model(RandomAugment(1.0, preset=AugmentPreset(shear=20.0), seed=0),
                   SHAPES["natural"])
    model.fit(x, np.arange(len(x)) % 3, epochs=1, verbose=0)
    assert model.jit_compile is True
