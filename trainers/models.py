"""Build a Keras model from a model name, its options and a recipe: the registry of architectures."""

from __future__ import annotations

from typing import Any, Callable

import keras

from trainers.augment import RandomAugment
from trainers.cnn import BUILDERS as cnn_builders
from trainers.recipe import Recipe
from trainers.regularization import Strengths, dropout, kernel_regularizer, mixing
from trainers.whitening import Whiten

Builder = Callable[..., keras.Model]


def build_mlp(
    input_shape: tuple[int, int, int],
    n_classes: int,
    recipe: Recipe,
    *,
    pixel_max: float = 255.0,
    augment_preset: str = "natural",
    hidden_layers: int = 5,
    units: int = 500,
    reusable: bool = False,
    zca_epsilon: float | None = None,
) -> keras.Model:
    """Return the reference MLP: ``hidden_layers`` dense ReLU layers of ``units``, softmax.

    Images are scaled to [0, 1] and augmented (training only) before they are flattened,
    so the augmentation magnitude means the same thing as for the CNNs (mixup and cutmix
    follow the augmentation). With ``reusable`` every penalty, dropout and mixing layer is
    present and reads its strength from a `Strengths` layer named "strengths" (see
    `trainers.reuse.Reuse`). ``zca_epsilon`` adds ZCA whitening after them
    (`trainers.whitening`; its statistics are set per fold by the trainer).
    """
    strengths = Strengths.of(recipe, name="strengths") if reusable else None
    reg = kernel_regularizer(recipe, strengths)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / pixel_max, name="rescale")(inputs)
    if strengths is not None:
        x = strengths(x)
    x = RandomAugment(recipe.augment, preset=augment_preset, name="augment")(x)
    mix = mixing(recipe, strengths)
    if mix is not None:
        x = mix(x)
    if zca_epsilon is not None:
        x = Whiten(zca_epsilon, name="zca")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in range(hidden_layers):
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"dense_{i}")(x)
        x = dropout(recipe, name=f"dropout_{i}", strengths=strengths)(x)
    # float32 softmax: stays exact when the rest of the model runs in bfloat16
    outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=reg,
                                 dtype="float32", name="softmax")(x)
    return keras.Model(inputs, outputs, name="mlp")


def builders() -> dict[str, Builder]:
    """Return every model builder by name."""
    return {"mlp": build_mlp, **cnn_builders}


def check_model_name(name: str) -> None:
    """Raise ValueError, listing the known models, unless ``name`` is one."""
    known = builders()
    if name not in known:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(known))}.")


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    n_classes: int,
    recipe: Recipe,
    **options: Any,
) -> keras.Model:
    """Return an uncompiled model ``name`` regularized by ``recipe``.

    Args:
        name: a key of `builders()`: ``mlp``, ``seed_cnn``, ``small_resnet``, ``efficientnet_b0``.
        input_shape: one image's shape, ``(height, width, channels)``.
        n_classes: width of the softmax.
        recipe: the regularization to build in (penalties, dropout, augmentation magnitude).
        **options: the builder's own options (``pixel_max``, ``augment_preset``, sizes, and
            ``reusable=True`` for a model whose strengths are variables, `trainers.reuse.Reuse`).

    Raises:
        ValueError: unknown model name or option; the message lists the valid ones.
    """
    check_model_name(name)
    try:
        return builders()[name](input_shape, n_classes, recipe, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ValueError(f"model {name!r}: {exc}") from None
        raise
