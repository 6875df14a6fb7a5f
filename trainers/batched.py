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
    "cross_validate_batched",
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
    (`Reuse`: the compiled copies are kept with it, one set per number of folds). After every
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
    folds = list(folds)
    if not folds:
        raise ValueError("cross_validate_batched: 'folds' is empty; expected at least one Fold.")
    chance = math.log(data.n_classes)
    first_step = _FirstStep()
    model = copies_for(models, len(folds)).prepare(recipe, [seed + f.index for f in folds])
    stream = _Stream(data, folds, recipe.batch_size, class_weight)
    tracker = _PerCopy(model, folds, recipe, on_epoch)
    start = time.perf_counter()
    history = model.fit(
        stream.x, stream.y, sample_weight=stream.weights,
        validation_data=(stream.val_x, stream.val_y, stream.val_weights),
        batch_size=stream.batch_size,
        epochs=recipe.max_epochs,
        callbacks=[SeedAtTrainBegin(seed + folds[0].index), tracker, first_step,
                   *_batch_hooks(0, on_batch)],
        verbose=0,
    ).history
    seconds = time.perf_counter() - start
    if tracker.diverged is not None:
        fold, epoch = tracker.diverged
        raise Diverged(f"fold {fold}, epoch {epoch}: loss is not finite")
    results = []
    for j, fold in enumerate(folds):
        n_epochs = tracker.n_epochs[j]
        curves = {key: [float(v) for v in history[_copy_key(key, j)][:n_epochs]]
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
            fit_seconds=seconds / len(folds),
            history=curves,
            first_step_seconds=first_step.at - first_step.started,
        ))
    for result in results:
        if on_fold is not None:
            on_fold(result)
    if tracker.stopped:
        return CVResult(tuple(results), stopped=True)
    if fail_at_chance:
        for result in results:
            if _at_chance(result.history[f"val_{CROSS_ENTROPY}"], chance):
                raise StuckAtChance(
                    f"fold {result.fold}: best val_loss {result.val_loss:.4f} never left "
                    f"chance level ln({data.n_classes}) = {chance:.4f}"
                )
    return CVResult(tuple(results))


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

    Args:
        copies: built models with one input and a softmax output, no variables shared.
        **kwargs: passed to `keras.Model` (name, ...).
    """

    def __init__(self, copies: Sequence[keras.Model], **kwargs) -> None:
        super().__init__(**kwargs)
        self.copies = list(copies)
        self.n_copies = len(self.copies)
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
        k = self.n_copies
        losses = []
        for j, probabilities in enumerate(y_pred):
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
        for j, probabilities in enumerate(y_pred):
            weight = sample_weight[:, j]
            self.cross_entropies[j].update_state(y, probabilities, sample_weight=weight)
            self.accuracies[j].update_state(y, probabilities, sample_weight=weight)
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
        n_copies: one per fold.
        jit_compile: passed to ``compile``.
    """

    def __init__(self, build: Callable[[Recipe], keras.Model], n_copies: int, *,
                 jit_compile: JitCompile = "auto") -> None:
        self.build, self.n_copies, self.jit_compile = build, int(n_copies), jit_compile

    def prepare(self, recipe: Recipe, seeds: Sequence[int]) -> FoldCopies:
        """Copy j built seeded with ``seeds[j]``, as `Rebuild` builds fold j's model."""
        _check_seeds(seeds, self.n_copies)
        copies = []
        for j, seed in enumerate(seeds):
            keras.utils.set_random_seed(seed)
            copy = _build_copy(j, lambda: self.build(recipe))
            reseed_dropout(copy, seed)
            copies.append(copy)
        model = _compile(FoldCopies(copies, name="fold_copies"), recipe, self.jit_compile)
        keras.utils.set_random_seed(seeds[0])
        return model


class ReusedCopies:
    """Compile k copies once and reset them for every trial, as `Reuse` does for one model.

    ``prepare(recipe, seeds)`` gives copy j the state a fresh ``build()`` seeded with
    ``seeds[j]`` has (kept per seed), resets the optimizer (moments, step count, every copy
    learning) and assigns the recipe's strengths, learning rate and dropout streams. The
    compiled step is traced once as long as the batch shapes repeat.

    Args:
        build: returns an uncompiled model whose strengths are variables (``reusable=True``).
        n_copies: one per fold.
        jit_compile: passed to ``compile``.
        cache_size: how many seeds' initial states to keep.

    Raises:
        ValueError: (from ``prepare``) a model with fixed kernel penalties, or one whose
            variables differ between builds.
    """

    def __init__(self, build: Callable[[], keras.Model], n_copies: int, *,
                 jit_compile: JitCompile = "auto", cache_size: int = 8) -> None:
        self.build, self.n_copies, self.jit_compile = build, int(n_copies), jit_compile
        self.cache_size = max(int(cache_size), int(n_copies))
        self.model: FoldCopies | None = None
        self._initial = InitialStates(build, self.cache_size, "ReusedCopies")
        self._optimizer_initial: list[np.ndarray] = []

    def prepare(self, recipe: Recipe, seeds: Sequence[int]) -> FoldCopies:
        """Return the compiled copies, copy j reset for ``seeds[j]``, with the recipe's
        strengths."""
        _check_seeds(seeds, self.n_copies)
        if self.model is None:
            self.model = self._compile(recipe, seeds)
        else:
            for copy, seed in zip(self.model.copies, seeds):
                _assign(copy.variables, self._initial.get(seed, copy.variables))
            _assign(self.model.optimizer.variables, self._optimizer_initial)
        model = self.model
        for copy, seed in zip(model.copies, seeds):
            assign_strengths(copy, recipe)
            reseed_dropout(copy, seed)
        model.optimizer.learning_rate = np.asarray(recipe.learning_rate, dtype="float32")
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
        model = _compile(FoldCopies(copies, name="fold_copies"), recipe, self.jit_compile)
        self._optimizer_initial = [keras.ops.convert_to_numpy(v)
                                   for v in model.optimizer.variables]
        return model


# The compiled copies of a worker's `Reuse`, per number of folds: kept as long as it is.
_REUSED: weakref.WeakKeyDictionary[Reuse, dict[int, ReusedCopies]] = weakref.WeakKeyDictionary()


def copies_for(models: Models | Callable[[Recipe], keras.Model],
               n_copies: int) -> RebuiltCopies | ReusedCopies:
    """The copies that ``models`` stands for: `ReusedCopies` for a `Reuse` (one per `Reuse`
    and number of folds, so a worker compiles once), `RebuiltCopies` for a `Rebuild` or a
    plain ``build(recipe)``, or ``models`` itself if it is already one of them.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(models, (RebuiltCopies, ReusedCopies)):
        if models.n_copies != n_copies:
            raise ValueError(f"copies_for: {type(models).__name__} holds {models.n_copies} "
                             f"copies; the folds need {n_copies}.")
        return models
    models = as_models(models)
    if isinstance(models, Reuse):
        per_size = _REUSED.setdefault(models, {})
        if n_copies not in per_size:
            per_size[n_copies] = ReusedCopies(models.build, n_copies,
                                              jit_compile=models.jit_compile,
                                              cache_size=models.cache_size)
        return per_size[n_copies]
    if isinstance(models, Rebuild):
        return RebuiltCopies(models.build, n_copies, jit_compile=models.jit_compile)
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


def _assign(variables: list[keras.Variable], values: list[np.ndarray]) -> None:
    assert len(variables) == len(values), (len(variables), len(values))
    for variable, value in zip(variables, values):
        variable.assign(value)


class _PerCopy(keras.callbacks.Callback):
    """Per-copy reporting and early stopping for a `FoldCopies` fit.

    After every epoch, for each copy still training, in fold order: stop everything on a
    non-finite loss; report `EpochMetrics` (stop everything if ``on_epoch`` says so); apply
    Keras' `EarlyStopping` rule (patience on the validation cross-entropy, no min_delta) and
    freeze the copy when it fires, reporting its best value once more at its fold's last step.
    Training ends when every copy has stopped.
    """

    def __init__(self, model: FoldCopies, folds: list[Fold], recipe: Recipe,
                 on_epoch: OnEpoch | None) -> None:
        super().__init__()
        self.copies, self.folds, self.on_epoch = model, folds, on_epoch
        self.max_epochs, self.patience = recipe.max_epochs, recipe.patience
        k = len(folds)
        self.best = [math.inf] * k
        self.wait = [0] * k
        self.active = [True] * k
        self.n_epochs = [0] * k
        self.stopped = False  # on_epoch asked to stop
        self.diverged: tuple[int, int] | None = None  # (fold, epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        training = [j for j in range(len(self.folds)) if self.active[j]]
        for j in training:
            if not all(math.isfinite(float(logs.get(key, math.nan))) for key in (
                    _copy_key(CROSS_ENTROPY, j), f"val_{_copy_key(CROSS_ENTROPY, j)}")):
                self.diverged = (self.folds[j].index, epoch)
                self.model.stop_training = True
                return
            # every copy still training has trained this epoch, reported or not (a stop asked
            # for at an earlier fold's report cuts the reports, not the epoch)
            self.n_epochs[j] = epoch + 1
        for j in training:
            fold = self.folds[j]
            train_loss = float(logs[_copy_key(CROSS_ENTROPY, j)])
            val_loss = float(logs[f"val_{_copy_key(CROSS_ENTROPY, j)}"])
            improved = val_loss < self.best[j]
            self.best[j] = min(self.best[j], val_loss)
            metrics = EpochMetrics(
                fold=fold.index, epoch=epoch, step=fold.index * self.max_epochs + epoch,
                train_loss=train_loss, val_loss=val_loss,
                val_accuracy=float(logs.get(f"val_{_copy_key('accuracy', j)}", math.nan)),
                best_val_loss=self.best[j],
            )
            if self._report(metrics):
                return
            # keras.callbacks.EarlyStopping's rule (no min_delta), per copy
            self.wait[j] = 0 if improved else self.wait[j] + 1
            if not improved and self.wait[j] >= self.patience and epoch > 0:
                self.active[j] = False
                self.copies.freeze(j)
                if epoch < self.max_epochs - 1 and self._report(dataclasses.replace(
                        metrics, epoch=self.max_epochs - 1,
                        step=fold.index * self.max_epochs + self.max_epochs - 1, filled=True)):
                    return
        if not any(self.active):
            self.model.stop_training = True

    def _report(self, metrics: EpochMetrics) -> bool:
        if self.on_epoch is not None and self.on_epoch(metrics):
            self.stopped = True
            self.model.stop_training = True
        return self.stopped
