"""Turn a recipe's strengths into Keras regularization: kernel penalties, dropout, early stopping.

Two ways to build a model. The plain way bakes a recipe in: a penalty only when l1 or l2 > 0,
dropout and mixing layers only when their strength is > 0. The reusable way (``strengths=`` a
`Strengths` layer) always puts in every penalty, dropout and mixing layer and reads their
strengths from variables, so one compiled model serves every recipe: strength 0 is off, and
``Strengths.assign(recipe)`` changes them without rebuilding or recompiling (see
`trainers.reuse`). The training loss (label smoothing, mixed labels) is `training_loss`; the
weight decay belongs to the optimizer (`trainers.optimizer`).
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator

import keras
import numpy as np
from keras import ops

from trainers.augment import RandomAugment
from trainers.loss import RecipeCrossEntropy
from trainers.mix import MixBatch
from trainers.recipe import Recipe

# Keras 3 adds the L1/L2 penalty to `loss` *and* `val_loss`; judging recipes on that would
# punish regularization for its own penalty. Every loss the trainer reports, and the one early
# stopping watches, is the plain cross-entropy, tracked as a metric of this name.
CROSS_ENTROPY = "cross_entropy"


@keras.saving.register_keras_serializable(package="regsearch")
class VariableL1L2(keras.regularizers.Regularizer):
    """The L1/L2 penalty ``l1 * sum(|x|) + l2 * sum(x ** 2)`` with strengths held in variables.

    Give the same instance to every kernel of a model: one ``assign`` then changes the penalty of
    every layer, inside an already compiled train step. The variables must belong to a layer of
    the model (`Strengths` owns them) so that every backend passes them into the compiled step
    as state; JAX would otherwise freeze their values at trace time.

    Args:
        l1: a scalar float32 `keras.Variable` (or a float, for a fixed penalty).
        l2: likewise.
    """

    def __init__(self, l1: keras.Variable | float, l2: keras.Variable | float) -> None:
        self.l1 = l1
        self.l2 = l2

    def __call__(self, x):
        # Same terms and order as keras.regularizers.L1L2, so a strength set here gives the
        # same penalty as the plain regularizer built with that strength.
        l1 = ops.cast(self.l1, x.dtype)
        l2 = ops.cast(self.l2, x.dtype)
        return l1 * ops.sum(ops.absolute(x)) + l2 * ops.sum(ops.square(x))

    def get_config(self) -> dict[str, float]:
        # A saved model records the strengths it had; loading it gives a fixed penalty.
        return {"l1": _read(self.l1), "l2": _read(self.l2)}


@keras.saving.register_keras_serializable(package="regsearch")
class VariableDropout(keras.layers.Dropout):
    """Dropout whose rate is a variable, so it can change inside a compiled model.

    In training it zeroes each input with probability ``rate`` and scales the rest by
    ``1 / (1 - rate)``; at rate 0 it is exactly the identity (the random draw still happens, so
    the layer's random stream does not depend on the rate). It is the identity outside training.

    Unlike `keras.layers.Dropout`, a layer built without a seed does not draw one from Python's
    global random state: adding or removing dropout layers then leaves every other layer's
    initial weights unchanged, so the same seed gives the same network whatever the recipe.
    `reseed_dropout` sets the random streams from a trial's seed.

    Args:
        rate: a float in [0, 1) (the layer then owns a variable holding it), or a scalar float32
            `keras.Variable` shared with other layers (`Strengths.dropout`).
        seed: initial seed of the layer's `keras.random.SeedGenerator`; by default one derived
            from the layer name.
        **kwargs: passed to `keras.layers.Layer` (name, dtype, ...).

    Raises:
        ValueError: if a float rate is outside [0, 1).
    """

    def __init__(
        self, rate: keras.Variable | float, seed: int | None = None, **kwargs: Any
    ) -> None:
        # Skip Dropout.__init__: it wants a float rate and draws a global seed.
        keras.layers.Layer.__init__(self, **kwargs)
        if isinstance(rate, keras.Variable):
            if tuple(rate.shape) != ():
                raise ValueError(
                    f"VariableDropout: 'rate' must be a scalar variable; got shape {rate.shape}."
                )
            self._rate = rate
        else:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)):
                raise TypeError(
                    f"VariableDropout: 'rate' must be a float or a keras.Variable; "
                    f"got {type(rate).__name__}."
                )
            if not 0.0 <= rate < 1.0:
                raise ValueError(
                    f"VariableDropout: 'rate'={rate!r} is out of range; expected a float in [0, 1)."
                )
            self._rate = self.add_weight(
                name="rate", shape=(), initializer=keras.initializers.Constant(float(rate)),
                trainable=False, dtype="float32", autocast=False,
            )
        self.seed = seed
        self.noise_shape = None
        self.seed_generator = keras.random.SeedGenerator(
            seed if seed is not None else zlib.crc32(self.name.encode()) % 2**31
        )
        self.supports_masking = True
        self.built = True

    @property
    def rate(self) -> float:
        """The current rate, read back from its float32 variable."""
        return _read(self._rate)

    @property
    def rate_variable(self) -> keras.Variable:
        return self._rate

    def call(self, inputs, training=False):
        if not training:
            return inputs
        rate = ops.cast(self._rate, "float32")
        noise = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator)
        scale = ops.cast(1.0 / (1.0 - rate), inputs.dtype)
        dropped = ops.where(noise >= rate, inputs * scale, ops.zeros_like(inputs))
        # Exact identity at rate 0, whatever the select and the multiply by 1 do.
        return ops.where(rate > 0.0, dropped, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = keras.layers.Layer.get_config(self)
        config.update({"rate": self.rate, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="regsearch")
class Strengths(keras.layers.Layer):
    """The identity layer that owns a model's regularization strengths as variables.

    A reusable model passes its images through it once (right after rescaling), which makes its
    variables part of the model's state on every backend. Every kernel uses ``regularizer``,
    every hidden dropout layer reads ``dropout``, the training loss reads ``label_smoothing``
    (`trainers.loss.RecipeCrossEntropy`) and the `trainers.mix.MixBatch` layer ``mixup`` and
    ``cutmix``, so ``assign`` sets them all at once.

    Args:
        l1: initial L1 strength.
        l2: initial L2 strength.
        dropout: initial dropout rate, in [0, 1).
        label_smoothing: initial label smoothing, in [0, 1).
        mixup: initial mixup alpha, >= 0.
        cutmix: initial cutmix alpha, >= 0.
        **kwargs: passed to `keras.layers.Layer` (name, dtype, ...).
    """

    # the recipe fields this layer holds, in the order of its variables
    FIELDS = ("l1", "l2", "dropout", "label_smoothing", "mixup", "cutmix")

    def __init__(
        self, l1: float = 0.0, l2: float = 0.0, dropout: float = 0.0,
        label_smoothing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        values = {"l1": l1, "l2": l2, "dropout": dropout, "label_smoothing": label_smoothing,
                  "mixup": mixup, "cutmix": cutmix}
        for name in self.FIELDS:
            setattr(self, name, self.add_weight(
                name=name, shape=(), initializer=keras.initializers.Constant(float(values[name])),
                trainable=False, dtype="float32", autocast=False,
            ))
        self.regularizer = VariableL1L2(self.l1, self.l2)
        self.built = True

    @classmethod
    def of(cls, recipe: Recipe, **kwargs: Any) -> "Strengths":
        """Return a layer holding the recipe's values of `FIELDS`."""
        return cls(**{name: getattr(recipe, name) for name in cls.FIELDS}, **kwargs)

    def assign(self, recipe: Recipe) -> None:
        """Set every variable to the recipe's value."""
        for name in self.FIELDS:
            getattr(self, name).assign(np.asarray(getattr(recipe, name), dtype="float32"))

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({name: _read(getattr(self, name)) for name in self.FIELDS})
        return config


def kernel_regularizer(
    recipe: Recipe, strengths: Strengths | None = None
) -> keras.regularizers.Regularizer | None:
    """Return the L1/L2 kernel penalty of a recipe, or None when both strengths are 0.

    Use it as ``kernel_regularizer=`` on every Dense and Conv layer of a model. With
    ``strengths`` it always returns that layer's shared `VariableL1L2` (0 means off).
    """
    if strengths is not None:
        return strengths.regularizer
    if recipe.l1 == 0.0 and recipe.l2 == 0.0:
        return None
    return keras.regularizers.L1L2(l1=recipe.l1, l2=recipe.l2)


def dropout(
    recipe: Recipe, name: str | None = None, strengths: Strengths | None = None
) -> keras.layers.Layer:
    """Return the dropout layer placed after a hidden layer (the identity when the rate is 0).

    With ``strengths`` it always returns a `VariableDropout` reading ``strengths.dropout``.
    """
    if strengths is not None:
        return VariableDropout(strengths.dropout, name=name)
    if recipe.dropout == 0.0:
        return keras.layers.Identity(name=name)
    return VariableDropout(recipe.dropout, name=name)


def mixing(recipe: Recipe, strengths: Strengths | None = None) -> keras.layers.Layer | None:
    """Return the mixup/cutmix layer placed after the augmentation, or None when both are off.

    With ``strengths`` it always returns a `trainers.mix.MixBatch` reading
    ``strengths.mixup`` and ``strengths.cutmix`` (0 is off).
    """
    if strengths is not None:
        return MixBatch(strengths.mixup, strengths.cutmix, name="mix")
    if recipe.mixup == 0.0 and recipe.cutmix == 0.0:
        return None
    return MixBatch(recipe.mixup, recipe.cutmix, name="mix")


def training_loss(model: keras.Model, recipe: Recipe) -> keras.losses.Loss | str:
    """Return the loss the optimizer minimises for ``recipe`` on ``model``.

    The plain sparse cross-entropy for a model without a `Strengths` or `MixBatch` layer whose
    recipe has no label smoothing; otherwise a `trainers.loss.RecipeCrossEntropy` reading the
    smoothing from the model's `Strengths` (a variable, so `assign_strengths` changes it in a
    compiled model) or, in a plain model, from the recipe, and the label weight of the model's
    `MixBatch` layer.
    """
    layers = list(_layers(model))
    holders = [layer for layer in layers if isinstance(layer, Strengths)]
    mixes = [layer for layer in layers if isinstance(layer, MixBatch)]
    if len(mixes) > 1:
        raise ValueError(f"model {model.name!r} has {len(mixes)} MixBatch layers; expected one.")
    if not holders and not mixes and recipe.label_smoothing == 0.0:
        return "sparse_categorical_crossentropy"
    smoothing = holders[0].label_smoothing if holders else recipe.label_smoothing
    return RecipeCrossEntropy(smoothing, mixes[0].label_weight if mixes else None)


def early_stopping(recipe: Recipe) -> keras.callbacks.EarlyStopping:
    """Return early stopping that restores the best epoch's weights.

    It watches the validation cross-entropy (``val_cross_entropy``, the metric
    `trainers.fit.compile_model` adds), not ``val_loss``, which includes the kernel penalty.
    """
    return keras.callbacks.EarlyStopping(
        monitor=f"val_{CROSS_ENTROPY}",
        patience=recipe.patience,
        restore_best_weights=True,
    )


def reseed_dropout(model: keras.Model, seed: int) -> int:
    """Restart the random stream of every `VariableDropout` and `MixBatch` in ``model`` from
    ``seed``.

    The streams depend on the seed, the kind of layer and its position among the layers of
    that kind only, so a model built afresh and a reused one (which has dropout layers at
    rate 0) drop the same units and mix the same pairs. Returns the number of layers
    reseeded.
    """
    layers = list(_layers(model))
    count = 0
    for kind, salt in ((VariableDropout, 12_345), (MixBatch, 54_321)):
        for index, layer in enumerate(x for x in layers if isinstance(x, kind)):
            state = layer.seed_generator.state
            mixed = (int(seed) * 1_000_003 + index * 7_919 + salt) % (2**31 - 1)
            state.assign(
                np.asarray([mixed, 0], dtype=keras.backend.standardize_dtype(state.dtype))
            )
            count += 1
    return count


def assign_strengths(model: keras.Model, recipe: Recipe) -> None:
    """Set every strength variable of ``model`` to the recipe's: penalties, dropout, label
    smoothing, mixup, cutmix, augment (the weight decay is the optimizer's:
    `trainers.optimizer`).

    Raises:
        ValueError: if the recipe asks for a regularizer the model has no variable for
            (build the model with ``reusable=True``).
    """
    layers = list(_layers(model))
    holders = [layer for layer in layers if isinstance(layer, Strengths)]
    dropouts = [layer for layer in layers if isinstance(layer, VariableDropout)]
    augments = [layer for layer in layers if isinstance(layer, RandomAugment)]
    mixes = [layer for layer in layers if isinstance(layer, MixBatch)]
    missing = [
        f"{key}={getattr(recipe, key)!r} ({what})"
        for key, what, present in (
            ("l1", "no Strengths layer", holders),
            ("l2", "no Strengths layer", holders),
            ("dropout", "no VariableDropout layer", dropouts),
            ("label_smoothing", "no Strengths layer", holders),
            ("mixup", "no MixBatch layer", mixes),
            ("cutmix", "no MixBatch layer", mixes),
            ("augment", "no RandomAugment layer", augments),
        )
        if getattr(recipe, key) > 0 and not present
    ]
    if missing:
        raise ValueError(
            f"model {model.name!r} cannot apply {', '.join(missing)}. Build it with "
            "reusable=True so every strength is a variable."
        )
    for holder in holders:
        holder.assign(recipe)
    for layer in dropouts:  # shared variables are simply set more than once
        layer.rate_variable.assign(np.asarray(recipe.dropout, dtype="float32"))
    for layer in augments:
        layer.magnitude.assign(np.asarray(recipe.augment, dtype="float32"))
    for layer in mixes:
        layer.mixup.assign(np.asarray(recipe.mixup, dtype="float32"))
        layer.cutmix.assign(np.asarray(recipe.cutmix, dtype="float32"))


def fixed_penalties(model: keras.Model) -> list[str]:
    """Paths of the variables whose penalty is not a `VariableL1L2` (so cannot be switched)."""
    return [
        variable.path
        for variable in model.trainable_variables
        if getattr(variable, "regularizer", None) is not None
        and not isinstance(variable.regularizer, VariableL1L2)
    ]


def _layers(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``, nested models included, in order."""
    for layer in model._flatten_layers(include_self=False):
        yield layer


def _read(value: keras.Variable | float) -> float:
    return float(keras.ops.convert_to_numpy(value))
