"""Train the k folds of one recipe as k copies of the model inside one compiled training step.

`cross_validate` trains fold after fold; `cross_validate_batched` gives the same result type
from one ``fit``: a `FoldCopies` model holds one copy of the network per fold, every training
batch goes through every copy, and copy j's loss counts only the samples of fold j's training
part (the others get weight 0), so copy j learns only from its own fold. Each copy has its own
weights, optimizer moments, strength variables and random streams (dropout, augmentation),
seeded as the sequential fold would be (``seed + fold.index``). Validation batches go through
every copy too, and copy j's validation metrics count only fold j's validation part.

How the batches differ from sequential folds. The stream is the union of the folds' training
parts (every sample, for a k-fold split), shuffled once per epoch; in a batch of B' samples a
copy's counting samples are those of its training part, about (k-1)/k of them, a number that
varies from batch to batch (hypergeometric: 64 with a standard deviation of about 3.6 for
k = 5 and B' = 80). B' is ``recipe.batch_size / f``, with f the mean share of the stream in a
fold's training part, so a copy sees ``recipe.batch_size`` counting samples per step on average
and takes about as many steps per epoch as the sequential fold; its loss is the mean over its counting samples, so the
gradient has the sequential scale and the kernel penalty its usual weight. Which samples share
a step, and how many, therefore differ from sequential folds: losses agree within fold noise,
not to the bit. With one fold there is no masking (the stream is that fold's training part):
the same computation as `cross_validate`.

Early stopping runs per copy, with Keras' rule (patience on the validation cross-entropy): a
copy that stops is frozen (the optimizer leaves its weights exactly as they are, no
recompiling) and its best epoch's metrics are kept, which is all a trial reports. Its batch-norm
statistics, if it has any, still move with the batches it no longer learns from, and its Adam
moments still update; neither changes anything it reports.

Several recipes in one step (`cross_validate_recipes`): B recipes x k folds become B x k copies
in one ``fit``, copy ``b * k + j`` training recipe b on fold j with recipe b's strengths and
patience. Every recipe's copies see the same stream, in the same order, with the same seeds as
when it trains alone, and the total loss is a sum whose gradient for a copy is that of its own
loss: recipe b's results are those of `cross_validate_batched` on recipe b alone, to float
rounding. What the recipes share is what one compiled step must: the batch size, the learning
rate and the epochs. A recipe the pruner stops, or whose loss diverges, has its copies frozen
while the others go on (they still pass through the step: their arithmetic is not saved
until the step ends).
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import ops

from spaces.strengths import SHARED_IN_STEP
from trainers.data import Dataset
from trainers.fit import (
    CROSS_ENTROPY,
    ClassWeight,
    CVResult,
    Diverged,
    EpochMetrics,
    FoldResult,
    OnBatch,
    OnEpoch,
    StuckAtChance,
    TrainingFailed,
    _at_chance,
    _batch_hooks,
    _FirstStep,
    cross_validate,
    resolve_class_weight,
)
from trainers.kfold import Fold
from trainers.recipe import Recipe
from trainers.regularization import assign_strengths, fixed_penalties, reseed_dropout
from trainers.reuse import (
    InitialStates,
    JitCompile,
    Models,
    Rebuild,
    Reuse,
    SeedAtTrainBegin,
    as_models,
)

__all__ = [
    "FoldCopies", "RebuiltCopies", "ReusedCopies", "batch_size_for", "copies_for",
    "cross_validate_batched", "cross_validate_recipes", "shared_settings",
]


# per-copy curves kept in each FoldResult's history (no "loss": the penalised loss of one copy
# is not tracked, only the total over copies)
_CURVES = (CROSS_ENTROPY, "accuracy", f"val_{CROSS_ENTROPY}", "val_accuracy")


def cross_validate_batched(
    data: Dataset,
    folds: Sequence[Fold],
    recipe: Recipe,
    models: Models | Callable[[Recipe], keras.Model],
    *,
    seed: int = 0,
    on_epoch: OnEpoch | None = None,
    on_fold: Callable[[FoldResult], None] | None = None,
    on_batch: OnBatch | None = None,
    class_weight: ClassWeight = None,
    fail_at_chance: bool = True,
) -> CVResult:
    """Train ``recipe`` on every fold at once and return each fold's best epoch.

    Arguments and result as `trainers.fit.cross_validate`; the module docstring says how the
    batches differ. ``models`` decides whether the k copies are built and compiled for every
    trial (`Rebuild`, or a plain ``build(recipe)``) or compiled once per worker and reset
    (`Reuse`: the compiled copies are kept with it, one set per number of copies). After every
    epoch ``on_epoch`` is called for each copy still training, in fold order, with the same
    ``step = fold * max_epochs + epoch`` as sequential folds; a copy that early stopping ends
    before the last epoch is reported once more at its fold's last step (``filled``), as
    sequential folds are. Returning True stops every copy: the result then holds every fold,
    each with the epochs it trained. ``on_fold`` is called for each fold, in fold order, when
    training ends; ``on_batch`` with fold 0 (all folds advance together). Each fold's
    ``fit_seconds`` is an equal share of the one ``fit``, and ``first_step_seconds`` that
    fit's time to its first step.

    Raises:
        Diverged: a copy's loss became NaN or infinite.
        StuckAtChance: a fold's best validation loss stayed at chance level (the first such
            fold is named).
    """
    outcome, = cross_validate_recipes(
        data, folds, [recipe], models, seed=seed, on_epoch=[on_epoch], on_batch=on_batch,
        class_weight=class_weight, fail_at_chance=fail_at_chance)
    if isinstance(outcome, BaseException):
        raise outcome
    for result in outcome.folds:
        if on_fold is not None:
            on_fold(result)
    return outcome


def cross_validate_recipes(
    data: Dataset,
    folds: Sequence[Fold],
    recipes: Sequence[Recipe],
    models: Models | Callable[[Recipe], keras.Model],
    *,
    seed: int = 0,
    on_epoch: Sequence[OnEpoch | None] | None = None,
    on_batch: OnBatch | None = None,
    class_weight: ClassWeight = None,
    fail_at_chance: bool = True,
) -> list[CVResult | TrainingFailed]:
    """Train every recipe on every fold in one ``fit``: ``len(recipes) * len(folds)`` copies.

    Recipe b's outcome is what `cross_validate_batched` gives for it alone (module docstring),
    returned rather than raised where it is a failure (`Diverged`, `StuckAtChance`) so that
    the others' results are kept. ``on_epoch[b]`` is recipe b's hook, called as
    `cross_validate_batched` calls it, recipe after recipe each epoch; returning True stops
    recipe b alone (its result ``stopped``). Each fold's ``fit_seconds`` is an equal share of
    the one ``fit`` among every recipe's folds. The recipes must agree on `SHARED_IN_STEP`.

    Raises:
        ValueError: no folds, no recipes, or recipes that differ in a `SHARED_IN_STEP` setting.
    """
    folds, recipes = list(folds), list(recipes)
    if not folds:
        raise ValueError("cross_validate_batched: 'folds' is empty; expected at least one Fold.")
    if not recipes:
        raise ValueError("cross_validate_recipes: 'recipes' is empty; expected at least one.")
    shared = shared_settings(recipes)
    on_epoch = list(on_epoch) if on_epoch is not None else [None] * len(recipes)
    if len(on_epoch) != len(recipes):
        raise ValueError(f"cross_validate_recipes: {len(on_epoch)} on_epoch hooks for "
                         f"{len(recipes)} recipes; expected one per recipe.")
    chance = math.log(data.n_classes)
    first_step = _FirstStep()
    k = len(folds)
    model = copies_for(models, k, len(recipes)).prepare(
        [r for r in recipes for _ in folds], [seed + f.index for _ in recipes for f in folds])
    stream = _Stream(data, folds, shared.batch_size, class_weight)
    tracker = _PerCopy(model, folds, recipes, on_epoch)
    start = time.perf_counter()
    history = model.fit(
        stream.x, stream.y, sample_weight=stream.weights,
        validation_data=(stream.val_x, stream.val_y, stream.val_weights),
        batch_size=stream.batch_size,
        epochs=shared.max_epochs,
        callbacks=[SeedAtTrainBegin(seed + folds[0].index), tracker, first_step,
                   *_batch_hooks(0, on_batch)],
        verbose=0,
    ).history
    seconds = time.perf_counter() - start
    outcomes: list[CVResult | TrainingFailed] = []
    for b in range(len(recipes)):
        if tracker.diverged[b] is not None:
            fold, epoch = tracker.diverged[b]
            outcomes.append(Diverged(f"fold {fold}, epoch {epoch}: loss is not finite"))
            continue
        results = []
        for j, fold in enumerate(folds):
            c = b * k + j
            n_epochs = tracker.n_epochs[c]
            curves = {key: [float(v) for v in history[_copy_key(key, c)][:n_epochs]]
                      for key in _CURVES}
            val_losses = curves[f"val_{CROSS_ENTROPY}"]
            best = int(np.argmin(val_losses))
            results.append(FoldResult(
                fold=fold.index,
                best_epoch=best,
                val_loss=val_losses[best],
                val_accuracy=curves["val_accuracy"][best],
                train_loss=curves[CROSS_ENTROPY][best],
                n_epochs=n_epochs,
                fit_seconds=seconds / (k * len(recipes)),
                history=curves,
                first_step_seconds=first_step.at - first_step.started,
            ))
        outcomes.append(CVResult(tuple(results), stopped=tracker.stopped[b]))
        if tracker.stopped[b] or not fail_at_chance:
            continue
        for result in results:
            if _at_chance(result.history[f"val_{CROSS_ENTROPY}"], chance):
                outcomes[-1] = StuckAtChance(
                    f"fold {result.fold}: best val_loss {result.val_loss:.4f} never left "
                    f"chance level ln({data.n_classes}) = {chance:.4f}"
                )
                break
    return outcomes


def shared_settings(recipes: Sequence[Recipe]) -> Recipe:
    """The first recipe, once every other agrees with it on `SHARED_IN_STEP` (what recipes trained
    in one step share).

    Raises:
        ValueError: naming the first setting that differs.
    """
    first = recipes[0]
    for other in recipes[1:]:
        for name in SHARED_IN_STEP:
            if getattr(other, name) != getattr(first, name):
                raise ValueError(
                    f"recipes trained in one step share {', '.join(SHARED_IN_STEP)}; these differ in "
                    f"{name} ({getattr(first, name)!r} and {getattr(other, name)!r}).")
    return first


def fold_trainer(fold_mode: str) -> Callable[..., CVResult]:
    """The function that cross-validates a recipe in ``fold_mode``: `cross_validate` for
    "sequential" (folds one after the other), `cross_validate_batched` for "batched" (a trial's
    folds as copies of the model in one compiled step). Both take the same arguments and
    return a `CVResult`."""
    return cross_validate_batched if fold_mode == "batched" else cross_validate


def batch_size_for(batch_size: int, n_stream: int, train_sizes: Sequence[int]) -> int:
    """The stream's batch size that gives each copy ``batch_size`` counting samples per step
    on average: ``batch_size`` divided by the mean share of the stream a copy trains on."""
    share = float(np.mean(train_sizes)) / n_stream
    return max(1, round(batch_size / share))


def _copy_key(key: str, copy: int) -> str:
    return f"{key}_{copy}"


class _Stream:
    """The arrays one ``fit`` of the copies trains and validates on.

    ``weights`` has 2k columns per sample: columns 0..k-1 say whether it is in copy j's
    training part (the loss divides by their sum; the metrics average over them), columns
    k..2k-1 its weight in copy j's loss (the fold's class weight, 0 outside the fold). ``val_weights``:
    whether it is in fold j's validation part, twice.
    """

    def __init__(self, data: Dataset, folds: list[Fold], batch_size: int,
                 class_weight: ClassWeight) -> None:
        train = np.unique(np.concatenate([f.train for f in folds]))
        val = np.unique(np.concatenate([f.val for f in folds]))
        stream, held = data.subset(train), data.subset(val)
        self.x, self.y, self.val_x, self.val_y = stream.x, stream.y, held.x, held.y
        masks = np.stack([np.isin(train, f.train) for f in folds], axis=1).astype("float32")
        weights = masks.copy()
        for j, fold in enumerate(folds):
            per_class = resolve_class_weight(class_weight, data.subset(fold.train))
            if per_class is not None:
                lookup = np.asarray([per_class.get(c, 1.0) for c in range(data.n_classes)],
                                    dtype="float32")
                weights[:, j] *= lookup[stream.y]
        self.weights = np.concatenate([masks, weights], axis=1)
        val_masks = np.stack([np.isin(val, f.val) for f in folds], axis=1).astype("float32")
        self.val_weights = np.concatenate([val_masks, val_masks], axis=1)
        self.batch_size = batch_size_for(batch_size, len(train), [len(f.train) for f in folds])


class FoldCopies(keras.Model):
    """k copies of one network side by side: one image batch in, k softmax outputs out.

    Train it with ``sample_weight`` of shape ``(n, 2k)`` (`_Stream`): the first k columns mark
    the samples each copy learns from, the last k weigh them. Copy j's loss is its weighted
    cross-entropy summed over its marked samples and divided by their number, plus its kernel
    penalties; the total loss is the sum over copies, and as the copies share no variable each
    copy's gradient is that of its own loss. The metrics ``cross_entropy_<j>`` and
    ``accuracy_<j>`` (``val_...`` in validation) are copy j's plain means over its marked
    samples (class weights do not enter them, as they do not enter a compiled model's
    ``metrics``).

    With several recipes (``n_folds`` < the number of copies), copy c trains on fold
    ``c % n_folds``: the stream's columns are per fold, shared by every recipe's copy of it.

    Args:
        copies: built models with one input and a softmax output, no variables shared.
        n_folds: the folds the stream's weights describe (default: one per copy).
        **kwargs: passed to `keras.Model` (name, ...).
    """

    def __init__(self, copies: Sequence[keras.Model], n_folds: int | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.copies = list(copies)
        self.n_copies = len(self.copies)
        self.n_folds = n_folds or self.n_copies
        if self.n_copies % self.n_folds:
            raise ValueError(f"FoldCopies: {self.n_copies} copies are not a whole number of "
                             f"sets of {self.n_folds} folds.")
        self.cross_entropies = [
            keras.metrics.SparseCategoricalCrossentropy(name=_copy_key(CROSS_ENTROPY, j))
            for j in range(self.n_copies)
        ]
        self.accuracies = [keras.metrics.SparseCategoricalAccuracy(name=_copy_key("accuracy", j))
                           for j in range(self.n_copies)]
        self.built = True  # the copies are built; this layer adds no variable of its own

    def call(self, inputs, training=None):
        return [copy(inputs, training=training) for copy in self.copies]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        k = self.n_folds
        losses = []
        for c, probabilities in enumerate(y_pred):
            j = c % k  # the copy's fold
            # Keras' own function: on TensorFlow it reads the logits cached on the softmax, as
            # the compiled loss of a single model does
            cross_entropy = keras.losses.sparse_categorical_crossentropy(y, probabilities)
            weight = ops.cast(sample_weight[:, k + j], cross_entropy.dtype)
            count = ops.cast(ops.sum(sample_weight[:, j]), cross_entropy.dtype)
            losses.append(ops.divide_no_nan(ops.sum(cross_entropy * weight), count))
        losses.extend(self._aggregate_additional_loss(loss) for loss in self.losses)
        return ops.sum(losses)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # each of the copy's samples counts once, unweighted, as in the compiled `metrics=` of
        # a single model (Keras gives sample weights to `weighted_metrics` only)
        for c, probabilities in enumerate(y_pred):
            weight = sample_weight[:, c % self.n_folds]
            self.cross_entropies[c].update_state(y, probabilities, sample_weight=weight)
            self.accuracies[c].update_state(y, probabilities, sample_weight=weight)
        return self.get_metrics_result()

    def freeze(self, copy: int) -> None:
        """Leave copy ``copy``'s weights as they are from the next training step on."""
        active = keras.ops.convert_to_numpy(self.optimizer.active).copy()
        active[copy] = 0.0
        self.optimizer.active.assign(active)

    @property
    def frozen(self) -> list[int]:
        """The copies `freeze` has frozen since the optimizer was last reset."""
        active = keras.ops.convert_to_numpy(self.optimizer.active)
        return [j for j in range(self.n_copies) if active[j] == 0.0]


class _CopyAdam(keras.optimizers.Adam):
    """Adam that leaves the weights of frozen copies exactly as they were before the step.

    ``active`` (one float per copy, an optimizer variable so that every backend passes it into
    the compiled step) says which copies learn; 0 freezes a copy. Gating after the update,
    not zeroing the gradient, because Adam's momentum would move a copy with zero gradient.
    It costs a copy of the weights and an elementwise select per step.
    """

    def __init__(self, owners: dict[int, int], n_copies: int, **kwargs) -> None:
        kwargs.setdefault("name", "copy_adam")
        super().__init__(**kwargs)
        self._owners = owners  # id(variable) -> copy
        self._n_copies = n_copies

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._copy_of = [self._owners[id(v)] for v in variables]
        self.active = self.add_variable(shape=(self._n_copies,), initializer="ones",
                                        dtype="float32", name="active")

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(list(trainable_variables))
        # a copy, not a view: the PyTorch backend updates its parameters in place
        before = [ops.copy(v.value) for v in self._trainable_variables]
        super().apply(grads, trainable_variables)
        learning = ops.convert_to_tensor(self.active) > 0.0
        for variable, old, copy in zip(self._trainable_variables, before, self._copy_of):
            variable.assign(ops.where(learning[copy], variable.value, old))


def _compile(model: FoldCopies, recipe: Recipe, jit_compile: JitCompile) -> FoldCopies:
    owners = {id(v): j for j, copy in enumerate(model.copies) for v in copy.trainable_variables}
    optimizer = _CopyAdam(owners, model.n_copies, learning_rate=recipe.learning_rate)
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    # Build the optimizer now (fit would on its first call) to keep its initial state.
    optimizer.build(model.trainable_variables)
    return model


class RebuiltCopies:
    """Build and compile k fresh copies for every trial: the plain path, as `Rebuild`.

    Args:
        build: ``build(recipe)`` returning an uncompiled model.
        n_copies: one per fold (times the recipes trained together).
        jit_compile: passed to ``compile``.
        n_folds: the folds (default: ``n_copies``); copy c trains on fold ``c % n_folds``.
    """

    def __init__(self, build: Callable[[Recipe], keras.Model], n_copies: int, *,
                 jit_compile: JitCompile = "auto", n_folds: int | None = None) -> None:
        self.build, self.n_copies, self.jit_compile = build, int(n_copies), jit_compile
        self.n_folds = int(n_folds or n_copies)

    def prepare(self, recipe: Recipe | Sequence[Recipe], seeds: Sequence[int]) -> FoldCopies:
        """Copy j built with its recipe (``recipe``, or ``recipe[j]``: one per copy) seeded
        with ``seeds[j]``, as `Rebuild` builds fold j's model."""
        _check_seeds(seeds, self.n_copies)
        recipes = _per_copy(recipe, self.n_copies)
        copies = []
        for j, (seed, own) in enumerate(zip(seeds, recipes)):
            keras.utils.set_random_seed(seed)
            copy = _build_copy(j, lambda: self.build(own))
            reseed_dropout(copy, seed)
            copies.append(copy)
        model = _compile(FoldCopies(copies, self.n_folds, name="fold_copies"),
                         shared_settings(recipes), self.jit_compile)
        keras.utils.set_random_seed(seeds[0])
        return model


class ReusedCopies:
    """Compile k copies once and reset them for every trial, as `Reuse` does for one model.

    ``prepare(recipe, seeds)`` (``recipe``: one for every copy, or one per copy) gives copy j
    the state a fresh ``build()`` seeded with
    ``seeds[j]`` has (kept per seed), resets the optimizer (moments, step count, every copy
    learning) and assigns the recipe's strengths, learning rate and dropout streams. The
    compiled step is traced once as long as the batch shapes repeat.

    Args:
        build: returns an uncompiled model whose strengths are variables (``reusable=True``).
        n_copies: one per fold (times the recipes trained together).
        jit_compile: passed to ``compile``.
        cache_size: how many seeds' initial states to keep.
        n_folds: the folds (default: ``n_copies``); copy c trains on fold ``c % n_folds``.

    Raises:
        ValueError: (from ``prepare``) a model with fixed kernel penalties, or one whose
            variables differ between builds.
    """

    def __init__(self, build: Callable[[], keras.Model], n_copies: int, *,
                 jit_compile: JitCompile = "auto", cache_size: int = 8,
                 n_folds: int | None = None) -> None:
        self.build, self.n_copies, self.jit_compile = build, int(n_copies), jit_compile
        self.n_folds = int(n_folds or n_copies)
        self.cache_size = max(int(cache_size), int(n_copies))
        self.model: FoldCopies | None = None
        self._initial = InitialStates(build, self.cache_size, "ReusedCopies")
        self._optimizer_initial: list[np.ndarray] = []

    def prepare(self, recipe: Recipe | Sequence[Recipe], seeds: Sequence[int]) -> FoldCopies:
        """Return the compiled copies, copy j reset for ``seeds[j]``, with its recipe's
        strengths."""
        _check_seeds(seeds, self.n_copies)
        recipes = _per_copy(recipe, self.n_copies)
        shared = shared_settings(recipes)
        if self.model is None:
            self.model = self._compile(shared, seeds)
        else:
            for copy, seed in zip(self.model.copies, seeds):
                _assign(copy.variables, self._initial.get(seed, copy.variables))
            _assign(self.model.optimizer.variables, self._optimizer_initial)
        model = self.model
        for copy, seed, own in zip(model.copies, seeds, recipes):
            assign_strengths(copy, own)
            reseed_dropout(copy, seed)
        model.optimizer.learning_rate = np.asarray(shared.learning_rate, dtype="float32")
        keras.utils.set_random_seed(seeds[0])
        return model

    def _compile(self, recipe: Recipe, seeds: Sequence[int]) -> FoldCopies:
        copies = []
        for j, seed in enumerate(seeds):
            keras.utils.set_random_seed(seed)
            copy = _build_copy(j, self.build)
            fixed = fixed_penalties(copy)
            if fixed:
                raise ValueError(
                    f"ReusedCopies: model {copy.name!r} has fixed kernel penalties "
                    f"({fixed[0]}, ...) that a recipe cannot switch off. Build it with "
                    "reusable=True."
                )
            self._initial.remember(seed, copy.variables)
            copies.append(copy)
        model = _compile(FoldCopies(copies, self.n_folds, name="fold_copies"), recipe,
                         self.jit_compile)
        self._optimizer_initial = [keras.ops.convert_to_numpy(v)
                                   for v in model.optimizer.variables]
        return model


# The compiled copies of a worker's `Reuse`, per (folds, recipes): kept as long as it is.
_REUSED: weakref.WeakKeyDictionary[Reuse, dict[tuple[int, int], ReusedCopies]] = (
    weakref.WeakKeyDictionary())


def copies_for(models: Models | Callable[[Recipe], keras.Model],
               n_folds: int, n_recipes: int = 1) -> RebuiltCopies | ReusedCopies:
    """The copies that ``models`` stands for, ``n_folds * n_recipes`` of them: `ReusedCopies`
    for a `Reuse` (one per `Reuse`, number of folds and of recipes, so a worker compiles once
    for each), `RebuiltCopies` for a `Rebuild` or a plain ``build(recipe)``, or ``models``
    itself if it is already one of them.

    Raises:
        TypeError: for anything else.
    """
    n_copies = n_folds * n_recipes
    if isinstance(models, (RebuiltCopies, ReusedCopies)):
        if models.n_copies != n_copies or models.n_folds != n_folds:
            raise ValueError(f"copies_for: {type(models).__name__} holds {models.n_copies} "
                             f"copies of {models.n_folds} folds; {n_recipes} recipe(s) on "
                             f"{n_folds} folds need {n_copies}.")
        return models
    models = as_models(models)
    if isinstance(models, Reuse):
        per_size = _REUSED.setdefault(models, {})
        if (n_folds, n_recipes) not in per_size:
            per_size[n_folds, n_recipes] = ReusedCopies(
                models.build, n_copies, jit_compile=models.jit_compile,
                cache_size=models.cache_size, n_folds=n_folds)
        return per_size[n_folds, n_recipes]
    if isinstance(models, Rebuild):
        return RebuiltCopies(models.build, n_copies, jit_compile=models.jit_compile,
                             n_folds=n_folds)
    raise TypeError(
        f"cross_validate_batched: cannot make fold copies from {type(models).__name__}; "
        "expected Reuse, Rebuild or a callable build(recipe) -> keras.Model."
    )


def _build_copy(index: int, build: Callable[[], keras.Model]) -> keras.Model:
    """``build()`` with its variables named ``copy_<index>/...``: the copies' layers share
    names, and on PyTorch a model registers its parameters by variable path, so copies with
    the same paths would share one gradient slot."""
    with keras.name_scope(f"copy_{index}"):
        return build()


def _check_seeds(seeds: Sequence[int], n_copies: int) -> None:
    if len(seeds) != n_copies:
        raise ValueError(f"expected one seed per copy ({n_copies}); got {len(seeds)}.")


def _per_copy(recipe: Recipe | Sequence[Recipe], n_copies: int) -> list[Recipe]:
    if isinstance(recipe, Recipe):
        return [recipe] * n_copies
    recipes = list(recipe)
    if len(recipes) != n_copies:
        raise ValueError(f"expected one recipe per copy ({n_copies}); got {len(recipes)}.")
    return recipes


def _assign(variables: list[keras.Variable], values: list[np.ndarray]) -> None:
    assert len(variables) == len(values), (len(variables), len(values))
    for variable, value in zip(variables, values):
        variable.assign(value)


class _PerCopy(keras.callbacks.Callback):
    """Per-copy reporting and early stopping for a `FoldCopies` fit of one or more recipes.

    After every epoch, recipe after recipe (copy ``b * k + j`` is recipe b's fold j), for each
    of its copies still training, in fold order: a non-finite loss ends the recipe (every copy
    of it frozen, `diverged` set); report `EpochMetrics` (``on_epoch[b]`` returning True ends
    the recipe, `stopped` set); apply Keras' `EarlyStopping` rule (patience on the validation
    cross-entropy, no min_delta) and freeze the copy when it fires, reporting its best value
    once more at its fold's last step. Training ends when every copy has stopped.
    """

    def __init__(self, model: FoldCopies, folds: list[Fold], recipes: Sequence[Recipe],
                 on_epoch: Sequence[OnEpoch | None]) -> None:
        super().__init__()
        self.copies, self.folds, self.on_epoch = model, folds, list(on_epoch)
        self.recipes = list(recipes)
        self.max_epochs = shared_settings(self.recipes).max_epochs
        n = len(folds) * len(self.recipes)
        self.best = [math.inf] * n
        self.wait = [0] * n
        self.active = [True] * n
        self.n_epochs = [0] * n
        self.stopped = [False] * len(self.recipes)  # on_epoch asked to stop the recipe
        self.diverged: list[tuple[int, int] | None] = [None] * len(self.recipes)  # (fold, epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        k = len(self.folds)
        for b, recipe in enumerate(self.recipes):
            training = [c for c in range(b * k, (b + 1) * k) if self.active[c]]
            for c in training:
                if not all(math.isfinite(float(logs.get(key, math.nan))) for key in (
                        _copy_key(CROSS_ENTROPY, c), f"val_{_copy_key(CROSS_ENTROPY, c)}")):
                    self.diverged[b] = (self.folds[c % k].index, epoch)
                    self._end(b)
                    break
                # every copy still training has trained this epoch, reported or not (a stop
                # asked for at an earlier fold's report cuts the reports, not the epoch)
                self.n_epochs[c] = epoch + 1
            if self.diverged[b] is None:
                self._report_recipe(b, recipe, training, epoch, logs)
        if not any(self.active):
            self.model.stop_training = True

    def _report_recipe(self, b: int, recipe: Recipe, training: list[int], epoch: int,
                       logs: dict) -> None:
        for c in training:
            fold = self.folds[c % len(self.folds)]
            train_loss = float(logs[_copy_key(CROSS_ENTROPY, c)])
            val_loss = float(logs[f"val_{_copy_key(CROSS_ENTROPY, c)}"])
            improved = val_loss < self.best[c]
            self.best[c] = min(self.best[c], val_loss)
            metrics = EpochMetrics(
                fold=fold.index, epoch=epoch, step=fold.index * self.max_epochs + epoch,
                train_loss=train_loss, val_loss=val_loss,
                val_accuracy=float(logs.get(f"val_{_copy_key('accuracy', c)}", math.nan)),
                best_val_loss=self.best[c],
            )
            if self._report(b, metrics):
                return
            # keras.callbacks.EarlyStopping's rule (no min_delta), per copy
            self.wait[c] = 0 if improved else self.wait[c] + 1
            if not improved and self.wait[c] >= recipe.patience and epoch > 0:
                self.active[c] = False
                self.copies.freeze(c)
                if epoch < self.max_epochs - 1 and self._report(b, dataclasses.replace(
                        metrics, epoch=self.max_epochs - 1,
                        step=fold.index * self.max_epochs + self.max_epochs - 1, filled=True)):
                    return

    def _report(self, b: int, metrics: EpochMetrics) -> bool:
        if self.on_epoch[b] is not None and self.on_epoch[b](metrics):
            self.stopped[b] = True
            self._end(b)
        return self.stopped[b]

    def _end(self, b: int) -> None:
        """Freeze every copy of recipe ``b`` still training."""
        k = len(self.folds)
        for c in range(b * k, (b + 1) * k):
            if self.active[c]:
                self.active[c] = False
                self.copies.freeze(c)
