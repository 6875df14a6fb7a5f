"""Tests for trainers/cnn.py: shapes, regularization wiring, jit compilation, the reference CNN."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from trainers.augment import RandomAugment
from trainers.cnn import BUILDERS, build_efficientnet_b0, build_seed_cnn
from trainers.recipe import Recipe

TINY_SHAPE = (32, 32, 3)
N_CLASSES = 3
# EfficientNet-B0 has a fixed size; the other two shrink to a few thousand parameters.
TINY_OPTIONS = {
    "seed_cnn": {"width": 0.125},
    "small_resnet": {"width": 0.125},
    "efficientnet_b0": {},
}
N_HIDDEN_DROPOUTS = {"seed_cnn": 2, "small_resnet": 1, "efficientnet_b0": 1}


def _tiny(name: str, recipe: Recipe, **options) -> keras.Model:
    return BUILDERS[name](TINY_SHAPE, N_CLASSES, recipe, seed=0, **TINY_OPTIONS[name], **options)


def _data(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, *TINY_SHAPE)).astype(np.float32)
    return x, rng.integers(0, N_CLASSES, size=n)


def _kernel_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every Conv/DepthwiseConv/Dense layer, nested models included."""
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _kernel_layers(layer)
        elif isinstance(layer, kinds):
            found.append(layer)
    return found


def _has_gpu() -> bool:
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False  # TensorFlow here is tensorflow-cpu


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize(
    "recipe",
    [Recipe(), Recipe(l2=1e-4), Recipe(l1=1e-5, dropout=0.3, augment=0.5)],
    ids=["none", "l2", "l1-dropout-augment"],
)
def test_builder_wires_the_recipe(name, recipe):
    model = _tiny(name, recipe)
    assert model.output_shape == (None, N_CLASSES)
    assert model.get_layer("rescaling").scale == pytest.approx(1 / 255.0)
    augment = model.get_layer("augment")
    assert isinstance(augment, RandomAugment)
    assert float(keras.ops.convert_to_numpy(augment.magnitude)) == pytest.approx(recipe.augment)

    # One penalty per kernel (backbone kernels included) iff the recipe has one.
    kernels = _kernel_layers(model)
    regularized = recipe.l1 > 0 or recipe.l2 > 0
    assert len(model.losses) == (len(kernels) if regularized else 0)

    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == (N_HIDDEN_DROPOUTS[name] if recipe.dropout > 0 else 0)
    # the rate lives in a float32 variable (VariableDropout), so it reads back rounded
    assert all(layer.rate == pytest.approx(recipe.dropout) for layer in dropouts)


@pytest.mark.parametrize("name", ["seed_cnn", "small_resnet"])
def test_builder_fits_one_step_jit_compiled(name):
    # XLA on TensorFlow and JAX. On PyTorch regsearch compiles as Keras's "auto" does, eagerly
    # (Keras's own default there); `jit_compile=True` would be torch.compile, which regsearch
    # never uses
    jit = keras.backend.backend() != "torch"
    model = _tiny(name, Recipe(l2=1e-4, dropout=0.2, augment=0.5))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=jit)
    assert model.jit_compile is jit
    x, y = _data()
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.jit_compile is jit
    probabilities = keras.ops.convert_to_numpy(model(x[:4]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_small_resnets_train_one_after_another():
    # on PyTorch's CPU, oneDNN's 1x1 convolution backward hung from the second small ResNet a
    # process trained (`trainers.cnn._torch_cpu_convolutions`); the backend tests run this there
    if keras.backend.backend() != "torch":
        pytest.skip("PyTorch's CPU kernels hung here; on this backend it is 60 s of compiling")
    x, y = _data()
    for seed in range(3):
        model = BUILDERS["small_resnet"](TINY_SHAPE, N_CLASSES, Recipe(l2=1e-4), seed=seed,
                                         width=0.125)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        assert np.isfinite(history.history["loss"][0])


def test_efficientnet_b0_fits_one_step():
    model = _tiny("efficientnet_b0", Recipe(l2=1e-4, dropout=0.2, augment=0.5))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    assert model.jit_compile is True
    if not _has_gpu():
        # XLA needs about 100 s to compile EfficientNet-B0 on 2 CPU cores, and TensorFlow's
        # graph tracing 25 s: one eager step is enough to show the model trains.
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    x, y = _data()
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.jit_compile is _has_gpu()


def test_efficientnet_b0_sees_pixels_in_0_255():
    # The backbone starts with its own Rescaling(1/255): undo our [0, 1] scaling before it.
    model = build_efficientnet_b0((32, 32, 3), N_CLASSES, Recipe(), pixel_max=1.0)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    scaled = keras.Model(model.input, model.get_layer("efficientnet_scale").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scaled(x)), 255.0 * x, rtol=1e-6)


def test_seed_cnn_conv_dropout_adds_spatial_dropout():
    model = _tiny("seed_cnn", Recipe(), conv_dropout=0.1)
    spatial = [layer for layer in model.layers if isinstance(layer, keras.layers.SpatialDropout2D)]
    assert [layer.name for layer in spatial] == ["conv_dropout1", "conv_dropout2", "conv_dropout5"]


def test_seed_cnn_full_width_matches_the_reference():
    model = build_seed_cnn((64, 64, 3), 25, Recipe(l2=1e-4, dropout=0.25))
    summary = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            summary.append(("conv", layer.filters, layer.kernel_size, layer.strides, layer.padding))
        elif isinstance(layer, keras.layers.MaxPooling2D):
            summary.append(("pool", layer.pool_size, layer.strides))
        elif isinstance(layer, keras.layers.Dense):
            summary.append(("dense", layer.units, layer.activation.__name__))
        elif isinstance(layer, keras.layers.Dropout):  # VariableDropout included
            summary.append(("Dropout",))
        elif type(layer).__name__ in ("LocalResponseNormalization", "Flatten"):
            summary.append((type(layer).__name__,))

    def conv(filters, size):
        return ("conv", filters, (size, size), (1, 1), "same")

    pool = ("pool", (3, 3), (2, 2))
    assert summary == [
        conv(64, 11), ("LocalResponseNormalization",), pool,
        conv(192, 5), ("LocalResponseNormalization",), pool,
        conv(384, 3), conv(384, 3), conv(256, 3), pool,
        ("Flatten",),
        ("dense", 1024, "relu"), ("Dropout",),
        ("dense", 1024, "relu"), ("Dropout",),
        ("dense", 25, "softmax"),
    ]  # fmt: skip
    lrn = model.get_layer("lrn1").get_config()
    assert (lrn["depth_radius"], lrn["bias"], lrn["alpha"], lrn["beta"]) == (5, 2.0, 1e-4, 0.75)
    # 64 -> 31 -> 15 -> 7 after three valid 3x3/2 poolings.
    conv_params = (11 * 11 * 3 + 1) * 64 + (5 * 5 * 64 + 1) * 192 + (9 * 192 + 1) * 384
    conv_params += (9 * 384 + 1) * 384 + (9 * 384 + 1) * 256
    dense_params = (7 * 7 * 256 + 1) * 1024 + (1024 + 1) * 1024 + (1024 + 1) * 25
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == conv_params + dense_params == 17_128_409


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"width": 0.0}, "width"),
        ({"conv_dropout": 1.0}, "conv_dropout"),
    ],
)
def test_seed_cnn_rejects_bad_options(kwargs, key):
    with pytest.raises(ValueError, match=key):
        build_seed_cnn(TINY_SHAPE, N_CLASSES, Recipe(), **kwargs)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builders_reject_bad_shapes(name):
    with pytest.raises(ValueError, match="n_classes"):
        BUILDERS[name](TINY_SHAPE, 1, Recipe())
    with pytest.raises(ValueError, match="input_shape"):
        BUILDERS[name]((32, 32), N_CLASSES, Recipe())


def test_efficientnet_b0_rejects_small_images():
    with pytest.raises(ValueError, match="input_shape"):
        build_efficientnet_b0((16, 16, 3), N_CLASSES, Recipe())
