"""Image-classifier builders whose regularization comes from one `Recipe`.

Every builder returns an uncompiled functional model::

    Input -> Rescaling(1 / pixel_max) -> RandomAugment(recipe.augment) -> [MixBatch] -> backbone
          -> Dense softmax

with ``kernel_regularizer(recipe)`` on every Dense and Conv kernel and ``dropout(recipe)`` after
every dense hidden layer. Layer names are stable ("augment", "conv1", "dense1", "predictions",
...), so trainers can find the augmentation layer (``model.get_layer("augment").magnitude``).

``reusable=True`` builds the same network for `trainers.reuse.Reuse`: a `Strengths` layer named
"strengths" follows the rescaling, and every penalty, dropout and mixing layer is present
whatever the recipe, reading its strength from that layer's variables (0 is off). The softmax is float32.
"""

from __future__ import annotations

from typing import Any, Callable

import keras

from trainers.augment import RandomAugment
from trainers.layers import LocalResponseNormalization
from trainers.recipe import Recipe
from trainers.regularization import Strengths, dropout, kernel_regularizer, mixing
from trainers.whitening import Whiten


def _check(name: str, input_shape: tuple[int, int, int], n_classes: int, **ranges: Any) -> None:
    """Reject arguments no model could be built from, naming the argument."""
    if len(tuple(input_shape)) != 3 or not all(int(size) > 0 for size in input_shape):
        raise ValueError(
            f"{name}: 'input_shape'={input_shape!r} must be (height, width, channels) of "
            "positive ints, channels last."
        )
    if int(n_classes) < 2:
        raise ValueError(f"{name}: 'n_classes'={n_classes!r} must be >= 2.")
    if "width" in ranges and not ranges["width"] > 0:
        raise ValueError(f"{name}: 'width'={ranges['width']!r} must be > 0.")
    if "conv_dropout" in ranges and not 0.0 <= ranges["conv_dropout"] < 1.0:
        raise ValueError(f"{name}: 'conv_dropout'={ranges['conv_dropout']!r} must be in [0, 1).")


def _torch_cpu_convolutions() -> None:
    """On PyTorch without a GPU, train convolutions with PyTorch's own kernels, not oneDNN's
    (for the whole process, once, as this module is imported).

    PyTorch 2.14's oneDNN backward of a 1x1 convolution (its AVX2 kernel, as in the small
    ResNet's shortcuts and EfficientNet) hung in an OpenMP barrier from the second such model a
    process trained, and crashed with one OpenMP thread. PyTorch's own kernels train the same
    models, slower on the CPU only; a GPU does not use oneDNN.
    """
    if keras.backend.backend() != "torch":
        return
    import torch

    if not torch.cuda.is_available():
        torch.backends.mkldnn.enabled = False


# a setting of the process, as the backend and its devices are: once, where the builders are
_torch_cpu_convolutions()


def _scaled(units: int, width: float) -> int:
    return max(1, round(units * width))


def _stem(
    input_shape: tuple[int, int, int],
    recipe: Recipe,
    pixel_max: float,
    augment_preset: str,
    seed: int | None,
    strengths: Strengths | None,
    zca_epsilon: float | None = None,
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Input, rescaled to [0, 1], augmented and mixed (mixup, cutmix; only while training),
    then ZCA-whitened when ``zca_epsilon`` is given (`trainers.whitening`)."""
    inputs = keras.Input(tuple(input_shape), name="images")
    x = keras.layers.Rescaling(1.0 / pixel_max, name="rescaling")(inputs)
    if strengths is not None:
        x = strengths(x)
    x = RandomAugment(recipe.augment, preset=augment_preset, seed=seed, name="augment")(x)
    mix = mixing(recipe, strengths)
    if mix is not None:
        x = mix(x)
    if zca_epsilon is not None:
        x = Whiten(zca_epsilon, name="zca")(x)
    return inputs, x


def _strengths(recipe: Recipe, reusable: bool) -> Strengths | None:
    return Strengths.of(recipe, name="strengths") if reusable else None


def _head(
    x: keras.KerasTensor, n_classes: int, recipe: Recipe, strengths: Strengths | None
) -> keras.KerasTensor:
    return keras.layers.Dense(
        n_classes,
        activation="softmax",
        kernel_regularizer=kernel_regularizer(recipe, strengths),
        # float32 softmax: stays exact when the rest of the model runs in bfloat16
        dtype="float32",
        name="predictions",
    )(x)


def build_seed_cnn(
    input_shape: tuple[int, int, int],
    n_classes: int,
    recipe: Recipe,
    *,
    pixel_max: float = 255.0,
    augment_preset: str = "natural",
    conv_dropout: float = 0.0,
    width: float = 1.0,
    seed: int | None = None,
    reusable: bool = False,
    zca_epsilon: float | None = None,
) -> keras.Model:
    """Build the AlexNet-like reference CNN the hand-picked baselines were measured on.

    Convolutions 11x11x64, 5x5x192, 3x3x384, 3x3x384, 3x3x256 (stride 1, "same", ReLU), local
    response normalization after the first two, 3x3/2 max pooling ("valid", as AlexNet's
    overlapping pooling) after convolutions 1, 2 and 5, then two dense 1024 ReLU layers each
    followed by the recipe's dropout (the reference report's network).

    Args:
        input_shape: (height, width, channels) of the raw images.
        n_classes: number of classes of the softmax output.
        recipe: kernel penalties, dropout rate and augmentation magnitude.
        pixel_max: the raw pixel value that maps to 1.0.
        augment_preset: `trainers.augment.PRESETS` name for `RandomAugment`.
        conv_dropout: rate of a SpatialDropout2D after each pooling layer; 0 adds none.
        width: multiplier on every filter and unit count (tests use a tiny network).
        seed: seed of the augmentation layer.
        reusable: build every penalty and dropout layer with variable strengths (module doc).
        zca_epsilon: ZCA whitening after the augmentation with this epsilon
            (`trainers.whitening`); None: none.

    Returns:
        An uncompiled `keras.Model`.

    Raises:
        ValueError: for an impossible shape, class count, width or conv_dropout.
    """
    _check("build_seed_cnn", input_shape, n_classes, width=width, conv_dropout=conv_dropout)
    strengths = _strengths(recipe, reusable)
    inputs, x = _stem(input_shape, recipe, pixel_max, augment_preset, seed, strengths,
                      zca_epsilon)
    convolutions = [  # filters, kernel size, LRN after, pooling after
        (64, 11, True, True),
        (192, 5, True, True),
        (384, 3, False, False),
        (384, 3, False, False),
        (256, 3, False, True),
    ]
    for index, (filters, size, lrn, pool) in enumerate(convolutions, start=1):
        x = keras.layers.Conv2D(
            _scaled(filters, width),
            size,
            padding="same",
            activation="relu",
            kernel_regularizer=kernel_regularizer(recipe, strengths),
            name=f"conv{index}",
        )(x)
        if lrn:
            x = LocalResponseNormalization(
                depth_radius=5, bias=2.0, alpha=1e-4, beta=0.75, name=f"lrn{index}"
            )(x)
        if pool:
            x = keras.layers.MaxPooling2D(3, strides=2, name=f"pool{index}")(x)
            if conv_dropout > 0:
                x = keras.layers.SpatialDropout2D(conv_dropout, name=f"conv_dropout{index}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index in (1, 2):
        x = keras.layers.Dense(
            _scaled(1024, width),
            activation="relu",
            kernel_regularizer=kernel_regularizer(recipe, strengths),
            name=f"dense{index}",
        )(x)
        x = dropout(recipe, name=f"dropout{index}", strengths=strengths)(x)
    return keras.Model(inputs, _head(x, n_classes, recipe, strengths), name="seed_cnn")


def _residual_block(
    x: keras.KerasTensor,
    filters: int,
    strides: int,
    regularizer: keras.regularizers.Regularizer | None,
    name: str,
) -> keras.KerasTensor:
    """Basic block: two 3x3 conv-BN, identity shortcut (1x1 projection when the shape changes)."""

    def conv(tensor, size, stride, suffix):
        return keras.layers.Conv2D(
            filters,
            size,
            strides=stride,
            padding="same",
            use_bias=False,  # the batch norm that follows has its own offset
            kernel_regularizer=regularizer,
            name=f"{name}_{suffix}",
        )(tensor)

    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(x, 1, strides, "shortcut")
        shortcut = keras.layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    y = conv(x, 3, strides, "conv1")
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.Activation("relu", name=f"{name}_relu1")(y)
    y = conv(y, 3, 1, "conv2")
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def build_small_resnet(
    input_shape: tuple[int, int, int],
    n_classes: int,
    recipe: Recipe,
    *,
    pixel_max: float = 255.0,
    augment_preset: str = "natural",
    width: float = 1.0,
    seed: int | None = None,
    reusable: bool = False,
    zca_epsilon: float | None = None,
) -> keras.Model:
    """Build a small ResNet for 64x64 images: about 0.7M parameters at width 1.

    A 3x3x32 stem, three stages of two basic residual blocks with 32, 64 and 128 filters
    (stages 2 and 3 halve the resolution), batch norm, global average pooling, then the recipe's
    dropout and the softmax. Arguments as `build_seed_cnn`.

    Returns:
        An uncompiled `keras.Model`.
    """
    _check("build_small_resnet", input_shape, n_classes, width=width)
    strengths = _strengths(recipe, reusable)
    inputs, x = _stem(input_shape, recipe, pixel_max, augment_preset, seed, strengths,
                      zca_epsilon)
    x = keras.layers.Conv2D(
        _scaled(32, width),
        3,
        padding="same",
        use_bias=False,
        kernel_regularizer=kernel_regularizer(recipe, strengths),
        name="stem_conv",
    )(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    for stage, filters in enumerate((32, 64, 128), start=1):
        for block in (1, 2):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _residual_block(
                x,
                _scaled(filters, width),
                strides,
                kernel_regularizer(recipe, strengths),
                name=f"stage{stage}_block{block}",
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = dropout(recipe, name="dropout1", strengths=strengths)(x)
    return keras.Model(inputs, _head(x, n_classes, recipe, strengths), name="small_resnet")


def _regularize_kernels(
    model: keras.Model, regularizer: keras.regularizers.Regularizer | None
) -> int:
    """Put ``regularizer`` on every conv, depthwise-conv and dense kernel of a built model.

    Keras 3 reads the penalty from ``variable.regularizer`` when it collects ``model.losses``,
    so setting it after construction works; the layer attribute is set too so that
    ``get_config`` (and a saved model) records it. Returns the number of kernels changed.
    """
    if regularizer is None:
        return 0
    changed = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            changed += _regularize_kernels(layer, regularizer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            layer.depthwise_regularizer = regularizer
            layer.kernel.regularizer = regularizer
            changed += 1
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            layer.kernel_regularizer = regularizer
            layer.kernel.regularizer = regularizer
            changed += 1
    return changed


def build_efficientnet_b0(
    input_shape: tuple[int, int, int],
    n_classes: int,
    recipe: Recipe,
    *,
    pixel_max: float = 255.0,
    augment_preset: str = "natural",
    seed: int | None = None,
    reusable: bool = False,
    zca_epsilon: float | None = None,
) -> keras.Model:
    """Build EfficientNet-B0 from scratch (``weights=None``, nothing downloaded).

    Keras 3's EfficientNetB0 (v1) has no ``include_preprocessing`` switch: it always starts with
    ``Rescaling(1/255)`` and an identity ``Normalization``. So the augmented [0, 1] images are
    scaled back to [0, 255] before the backbone, which then sees what it expects. The recipe's
    kernel penalty goes on every conv, depthwise-conv and dense kernel of the backbone too. The
    backbone keeps its own stochastic-depth dropout (rate up to 0.2, "block*_drop" layers); the
    recipe's dropout sits between the pooled features and the softmax. Arguments as
    `build_seed_cnn` (needs height and width >= 32).

    Returns:
        An uncompiled `keras.Model`.
    """
    _check("build_efficientnet_b0", input_shape, n_classes)
    if min(input_shape[:2]) < 32:
        raise ValueError(
            f"build_efficientnet_b0: 'input_shape'={input_shape!r} is too small; "
            "EfficientNet needs height and width >= 32."
        )
    strengths = _strengths(recipe, reusable)
    inputs, x = _stem(input_shape, recipe, pixel_max, augment_preset, seed, strengths,
                      zca_epsilon)
    x = keras.layers.Rescaling(255.0, name="efficientnet_scale")(x)
    backbone = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=tuple(input_shape), pooling="avg"
    )
    _regularize_kernels(backbone, kernel_regularizer(recipe, strengths))
    x = backbone(x)
    x = dropout(recipe, name="dropout1", strengths=strengths)(x)
    return keras.Model(inputs, _head(x, n_classes, recipe, strengths), name="efficientnet_b0")


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "seed_cnn": build_seed_cnn,
    "small_resnet": build_small_resnet,
    "efficientnet_b0": build_efficientnet_b0,
}
