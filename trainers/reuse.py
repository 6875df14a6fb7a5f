"""Hand the trainer a compiled model per (recipe, seed): rebuilt each time, or compiled once.

On a GPU a fresh model takes 8-30 s to compile while a trial trains in seconds (measured on an
H100 with JAX). `Reuse` builds and compiles one model per worker and, for every trial and fold, puts
back the initial weights of that seed, clears the optimizer and sets the recipe's strengths
(kernel penalties, dropout, augmentation, weight decay, learning rate) as variables, so the compiled train
step is traced once. `Rebuild` is the plain path, kept to compare against: build and compile
afresh every time. Both give the same losses for the same recipe and seed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator, Protocol, runtime_checkable

import keras
import numpy as np

from trainers.optimizer import VariableAdamW, set_weight_decay
from trainers.recipe import Recipe
from trainers.regularization import (
    CROSS_ENTROPY,
    assign_strengths,
    fixed_penalties,
    reseed_dropout,
    training_loss,
)

JitCompile = bool | str


def compile_model(
    model: keras.Model, recipe: Recipe, *, jit_compile: JitCompile = "auto"
) -> keras.Model:
    """Compile ``model`` with Adam at the recipe's learning rate and the metrics we report.

    The optimizer is `trainers.optimizer.VariableAdamW`: Adam plus the recipe's decoupled
    weight decay, held in a variable (at 0, exactly Adam). The loss is
    `trainers.regularization.training_loss` (label smoothing); the metrics are the plain
    cross-entropy and accuracy. ``jit_compile`` is passed to `keras.Model.compile` ("auto": XLA where Keras thinks it
    pays, which on the TensorFlow CPU backend means never).
    """
    model.compile(
        optimizer=VariableAdamW(learning_rate=recipe.learning_rate,
                                weight_decay=recipe.weight_decay),
        loss=training_loss(model, recipe),
        metrics=[
            keras.metrics.SparseCategoricalCrossentropy(name=CROSS_ENTROPY),
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        ],
        jit_compile=jit_compile,
    )
    return model


@runtime_checkable
class Models(Protocol):
    """Where the trainer gets its model: `Rebuild` or `Reuse`."""

    def prepare(self, recipe: Recipe, seed: int) -> keras.Model:
        """Return a compiled model with fresh weights for ``seed`` and the recipe's strengths.

        Afterwards Python's, NumPy's and the backend's global random state are as
        ``keras.utils.set_random_seed(seed)`` leaves them. Train it with
        ``callbacks=[SeedAtTrainBegin(seed), ...]`` so that what ``fit`` draws (the shuffling)
        is the same for every implementation.
        """
        ...


def as_models(models: Models | Callable[[Recipe], keras.Model]) -> Models:
    """Return ``models`` itself, or a `Rebuild` of a plain ``build(recipe)`` callable.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(models, Models):
        return models
    if callable(models):
        return Rebuild(models)
    raise TypeError(
        "expected a Models object (Rebuild, Reuse) or a callable build(recipe) -> keras.Model; "
        f"got {type(models).__name__}."
    )


class SeedAtTrainBegin(keras.callbacks.Callback):
    """Set the global random seed when ``fit`` starts training, after its one-off setup.

    The first ``fit`` of a new model draws one batch to build its metrics, which on JAX costs
    a draw from NumPy's global generator (the shuffling), and a reused model skips that. Seeding
    again here gives both the same shuffles. Pass it to every ``fit`` of a prepared model.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = int(seed)

    def on_train_begin(self, logs: dict | None = None) -> None:
        keras.utils.set_random_seed(self.seed)


class Rebuild:
    """Build and compile a new model for every trial and fold: today's plain path.

    Args:
        build: returns an uncompiled model for a recipe (`trainers.models.build_model` with
            the model name and options bound).
        jit_compile: passed to `compile_model`.
    """

    def __init__(
        self, build: Callable[[Recipe], keras.Model], *, jit_compile: JitCompile = "auto"
    ) -> None:
        self.build = build
        self.jit_compile = jit_compile

    def prepare(self, recipe: Recipe, seed: int) -> keras.Model:
        """Build ``build(recipe)`` seeded with ``seed``, compile it and return it."""
        keras.utils.set_random_seed(seed)
        model = compile_model(self.build(recipe), recipe, jit_compile=self.jit_compile)
        reseed_dropout(model, seed)
        keras.utils.set_random_seed(seed)
        return model


class Reuse:
    """Compile one model and reuse it for every trial and fold.

    ``prepare(recipe, seed)`` gives the model the weights, batch-norm statistics and random
    states a fresh ``build()`` seeded with ``seed`` would have (kept per seed, so each seed is
    built once), zeroes the optimizer state (iterations, moments), and assigns the learning
    rate, weight decay, l1, l2, dropout rate and augmentation magnitude. The model is compiled
    once, on the first call, and its compiled train step is reused: nothing is traced again as
    long as the batch shapes repeat.

    Use it in a worker that runs many trials of one architecture. ``build`` must make every
    strength a variable: ``functools.partial(build_model, name, shape, n_classes, Recipe(),
    reusable=True, **options)``.

    Args:
        build: returns an uncompiled model whose strengths are variables; called with no
            arguments.
        jit_compile: passed to `compile_model`.
        cache_size: how many seeds' initial weights to keep in host memory (a study needs
            ``n_folds`` of them, plus one for the final retraining).

    Raises:
        ValueError: (from ``prepare``) if the model has a fixed kernel penalty, or lacks a
            variable for a strength the recipe sets.
    """

    def __init__(
        self,
        build: Callable[[], keras.Model],
        *,
        jit_compile: JitCompile = "auto",
        cache_size: int = 8,
    ) -> None:
        if int(cache_size) < 1:
            raise ValueError(f"Reuse: 'cache_size'={cache_size!r} must be >= 1.")
        self.build = build
        self.jit_compile = jit_compile
        self.cache_size = int(cache_size)
        self.model: keras.Model | None = None
        self._initial = InitialStates(build, self.cache_size, "Reuse")
        self._optimizer_initial: list[np.ndarray] = []

    def prepare(self, recipe: Recipe, seed: int) -> keras.Model:
        """Return the compiled model reset for ``seed`` with the recipe's strengths."""
        if self.model is None:
            self.model = self._compile(recipe, seed)
        else:
            _assign(_state(self.model), self._initial.get(seed, _state(self.model)))
            _assign(self.model.optimizer.variables, self._optimizer_initial)
        model = self.model
        assign_strengths(model, recipe)
        model.optimizer.learning_rate = np.asarray(recipe.learning_rate, dtype="float32")
        set_weight_decay(model.optimizer, recipe.weight_decay)
        reseed_dropout(model, seed)
        keras.utils.set_random_seed(seed)
        return model

    def _compile(self, recipe: Recipe, seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)
        model = self.build()
        fixed = fixed_penalties(model)
        if fixed:
            raise ValueError(
                f"Reuse: model {model.name!r} has fixed kernel penalties ({fixed[0]}, ...) that "
                "a recipe cannot switch off. Build it with reusable=True."
            )
        self._initial.remember(seed, _state(model))
        compile_model(model, recipe, jit_compile=self.jit_compile)
        # Build the optimizer now (fit would on its first call) to keep its zero state.
        model.optimizer.build(model.trainable_variables)
        self._optimizer_initial = _snapshot(model.optimizer.variables)
        return model


class InitialStates:
    """The state of a fresh model for each seed: built once with ``build``, the ``size`` most
    recently used kept in host memory. `Reuse` resets its model from it, `trainers.batched`
    each copy."""

    def __init__(self, build: Callable[[], keras.Model], size: int, owner: str) -> None:
        self.build, self.size, self.owner = build, int(size), owner
        self._kept: OrderedDict[int, list[np.ndarray]] = OrderedDict()

    def __iter__(self) -> Iterator[int]:
        return iter(self._kept)

    def remember(self, seed: int, variables: list[keras.Variable]) -> None:
        self._kept[seed] = _snapshot(variables)
        self._evict()

    def get(self, seed: int, like: list[keras.Variable]) -> list[np.ndarray]:
        """The state for ``seed``, in the order of ``like`` (the variables it will go into)."""
        if seed in self._kept:
            self._kept.move_to_end(seed)
            return self._kept[seed]
        keras.utils.set_random_seed(seed)
        fresh = self.build()  # cheap: building without compiling
        values = _snapshot(_state(fresh))
        del fresh
        expected = [(tuple(v.shape), _dtype(v.dtype)) for v in like]
        if expected != [(tuple(v.shape), _dtype(v.dtype)) for v in values]:
            raise ValueError(
                f"{self.owner}: build() returned a model with different variables than the "
                "first one; it must build the same architecture every time."
            )
        self._kept[seed] = values
        self._evict()
        return values

    def _evict(self) -> None:
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)


def _state(model: keras.Model) -> list[keras.Variable]:
    """Weights, batch-norm statistics, strengths and random-generator states (no metrics)."""
    return model.variables


def _dtype(dtype) -> str:
    return keras.backend.standardize_dtype(dtype)


def _snapshot(variables: list[keras.Variable]) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _assign(variables: list[keras.Variable], values: list[np.ndarray]) -> None:
    assert len(variables) == len(values), (len(variables), len(values))
    for variable, value in zip(variables, values):
        variable.assign(value)
