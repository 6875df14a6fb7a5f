"""Train one recipe over k folds and report every epoch through a plain callable."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import keras
import numpy as np

from trainers.data import Dataset, class_weights
from trainers.kfold import Fold
from trainers.recipe import Recipe
from trainers.regularization import early_stopping
from trainers.reuse import CROSS_ENTROPY, Models, SeedAtTrainBegin, as_models, compile_model
from trainers.whitening import fit_whitening

__all__ = [
    "CHANCE_TOLERANCE", "CROSS_ENTROPY", "CVResult", "Diverged", "EpochMetrics", "FinalResult",
    "ClassWeight", "FoldResult", "Models", "OnBatch", "OnEpoch", "StuckAtChance", "TrainingFailed",
    "compile_model", "cross_validate", "resolve_class_weight", "train_final",
]

# A fold whose validation loss stays within this fraction of ln(n_classes) at every epoch never
# left chance level (measured: Adam at 1e-3 holds the reference CNN at ln 25 for every epoch).
# A loss far *above* ln(n_classes) did move: it is a bad score, not a failure, and the sampler
# should see it.
CHANCE_TOLERANCE = 0.01


@dataclass(frozen=True)
class EpochMetrics:
    """What the trainer reports after every epoch. ``step`` counts across folds."""

    fold: int
    epoch: int
    step: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    best_val_loss: float  # lowest val_loss of this fold so far
    # True for the report that stands in for the epochs early stopping skipped (see _Reporter)
    filled: bool = False


@dataclass(frozen=True)
class FoldResult:
    """One fold's outcome at its best epoch (the weights early stopping restores)."""

    fold: int
    best_epoch: int
    val_loss: float
    val_accuracy: float
    train_loss: float
    n_epochs: int
    fit_seconds: float
    history: dict[str, list[float]] = field(repr=False)
    # from the fold's start (model prepared, data split) to its first training step: the
    # per-fold overhead, compilation included where there is one (`_FirstStep`)
    first_step_seconds: float = math.nan


@dataclass(frozen=True)
class CVResult:
    """All folds of one trial. ``stopped`` is True when ``on_epoch`` asked to stop."""

    folds: tuple[FoldResult, ...]
    stopped: bool = False

    @property
    def val_loss(self) -> float:
        """Mean over folds of the best-epoch validation loss: the study's objective."""
        return float(np.mean([f.val_loss for f in self.folds]))

    @property
    def val_loss_std(self) -> float:
        return float(np.std([f.val_loss for f in self.folds]))

    @property
    def val_accuracy(self) -> float:
        return float(np.mean([f.val_accuracy for f in self.folds]))

    @property
    def train_loss(self) -> float:
        return float(np.mean([f.train_loss for f in self.folds]))

    @property
    def generalization_gap(self) -> float:
        """Mean validation minus training cross-entropy at the best epochs."""
        return self.val_loss - self.train_loss

    @property
    def fit_seconds(self) -> float:
        return float(sum(f.fit_seconds for f in self.folds))

    @property
    def later_folds_first_step_seconds(self) -> float:
        """Mean time from a fold's start to its first step, over the folds after the first."""
        later = [f.first_step_seconds for f in self.folds[1:]]
        return float(np.mean(later)) if later else math.nan


class TrainingFailed(RuntimeError):
    """A recipe that cannot be scored: the loss diverged or never left chance level."""


class Diverged(TrainingFailed):
    """The training or validation loss became NaN or infinite."""


class StuckAtChance(TrainingFailed):
    """The validation loss never fell below chance level, ln(n_classes)."""


OnEpoch = Callable[[EpochMetrics], bool | None]
# Keras class_weight, or "balanced": computed from the labels of the data being trained on
ClassWeight = dict[int, float] | str | None
# (fold, epoch, fraction of the epoch's training batches started); for progress displays only
OnBatch = Callable[[int, int, float], None]


def cross_validate(
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
    """Train ``recipe`` once per fold and return each fold's best epoch.

    Every fold starts from fresh weights seeded with ``seed + fold``: the same seed for every
    trial, so trials differ by recipe, not by luck. ``models`` decides whether that is a new
    model (`Rebuild`) or the worker's one compiled model reset (`Reuse`); both give the same
    losses. Early stopping watches the validation cross-entropy and restores the best weights.

    Args:
        data: the training split; folds index into it.
        folds: the study's folds (`trainers.kfold.stratified_folds`).
        recipe: regularization and training settings.
        models: `trainers.reuse.Rebuild` or `Reuse`; a plain callable ``build(recipe)``
            returning an uncompiled model is wrapped in `Rebuild`.
        seed: base seed of weight initialisation, dropout and augmentation.
        on_epoch: called after every epoch; returning True stops the whole trial (pruning).
        on_fold: called with each fold's result as soon as the fold ends.
        on_batch: called before every training batch with ``(fold, epoch, fraction of the
            epoch done)``, for progress displays: it sees no logs, so it never waits for the
            device.
        class_weight: optional per-class loss weights; ``"balanced"`` computes them for each
            fold from its training part only, so no validation label leaks into them.
        fail_at_chance: raise `StuckAtChance` for a fold that never left chance level.

    Returns:
        The folds trained so far; ``stopped`` tells whether ``on_epoch`` cut the trial short.

    Raises:
        Diverged: a loss became NaN or infinite.
        StuckAtChance: a fold's best validation loss stayed at chance level.
    """
    models = as_models(models)
    chance = math.log(data.n_classes)
    results: list[FoldResult] = []
    for fold in folds:
        first_step = _FirstStep()
        model = models.prepare(recipe, seed + fold.index)
        reporter = _Reporter(fold.index, recipe.max_epochs, on_epoch)
        stopper = early_stopping(recipe)
        train, val = data.subset(fold.train), data.subset(fold.val)
        fit_whitening(model, train.x, train.pixel_max)  # from the training part only
        start = time.perf_counter()
        history = model.fit(
            train.x, train.y,
            validation_data=(val.x, val.y),
            batch_size=recipe.batch_size,
            epochs=recipe.max_epochs,
            class_weight=resolve_class_weight(class_weight, train),
            callbacks=[SeedAtTrainBegin(seed + fold.index), reporter, stopper, first_step,
                       *_batch_hooks(fold.index, on_batch)],
            verbose=0,
        ).history
        seconds = time.perf_counter() - start
        if reporter.diverged:
            raise Diverged(f"fold {fold.index}, epoch {reporter.diverged_epoch}: loss is not finite")
        val_losses = history[f"val_{CROSS_ENTROPY}"]
        best = int(np.argmin(val_losses))
        result = FoldResult(
            fold=fold.index,
            best_epoch=best,
            val_loss=float(val_losses[best]),
            val_accuracy=float(history["val_accuracy"][best]),
            train_loss=float(history[CROSS_ENTROPY][best]),
            n_epochs=len(val_losses),
            fit_seconds=seconds,
            history={k: [float(v) for v in vs] for k, vs in history.items()},
            first_step_seconds=first_step.at - first_step.started,
        )
        results.append(result)
        if on_fold is not None:
            on_fold(result)
        if reporter.stopped:
            return CVResult(tuple(results), stopped=True)
        if fail_at_chance and _at_chance(val_losses, chance):
            raise StuckAtChance(
                f"fold {fold.index}: best val_loss {val_losses[best]:.4f} never left chance "
                f"level ln({data.n_classes}) = {chance:.4f}"
            )
    return CVResult(tuple(results))


def resolve_class_weight(class_weight: ClassWeight, train: Dataset) -> dict[int, float] | None:
    """Keras ``class_weight`` for training on ``train``; ``"balanced"``: from its labels."""
    if class_weight == "balanced":
        return class_weights(train.y, train.n_classes)
    if isinstance(class_weight, str):
        raise ValueError(f"class_weight={class_weight!r}; expected a dict, 'balanced' or None.")
    return class_weight


def _at_chance(val_losses: Sequence[float], chance: float) -> bool:
    return max(abs(v - chance) for v in val_losses) <= CHANCE_TOLERANCE * chance


class _FirstStep(keras.callbacks.Callback):
    """When the first training step of a fit has run, counted from this callback's creation.

    That is when the second batch begins (the first step has been traced, compiled if needed,
    and launched), or when the first epoch ends if it has one batch. No batch-end hook, so
    nothing waits for the device: on an asynchronous backend the step may still be finishing,
    which is a few milliseconds beside the overhead this measures.
    """

    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()
        self.at = math.nan

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if batch == 1 and math.isnan(self.at):
            self.at = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if math.isnan(self.at):
            self.at = time.perf_counter()


class _BatchHook(keras.callbacks.Callback):
    """Call ``on_batch(fold, epoch, fraction done)`` before every training batch.

    ``on_train_batch_begin`` gets no logs: a batch-*end* hook would make Keras fetch every
    batch's metrics from the device and turn off its asynchronous callback dispatch on JAX.
    """

    def __init__(self, fold: int, on_batch: OnBatch) -> None:
        super().__init__()
        self.fold, self.on_batch, self.epoch = fold, on_batch, 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        steps = self.params.get("steps") or 0
        self.on_batch(self.fold, self.epoch, batch / steps if steps else 0.0)


def _batch_hooks(fold: int, on_batch: OnBatch | None) -> list[keras.callbacks.Callback]:
    return [] if on_batch is None else [_BatchHook(fold, on_batch)]


class _Reporter(keras.callbacks.Callback):
    """Turn Keras epoch logs into `EpochMetrics`, stop on a non-finite loss or when asked."""

    def __init__(self, fold: int, max_epochs: int, on_epoch: OnEpoch | None) -> None:
        super().__init__()
        self.fold, self.max_epochs, self.on_epoch = fold, max_epochs, on_epoch
        self.best = math.inf
        self.stopped = False
        self.diverged = False
        self.diverged_epoch = -1
        self.last: EpochMetrics | None = None

    def on_train_end(self, logs: dict | None = None) -> None:
        # A fold that early stopping ended at epoch e < max_epochs would leave its later
        # steps empty, and the pruner would then judge it at its *next* fold's first epoch
        # against other trials' late epochs. Reporting the fold's best value (the weights it
        # keeps) at the fold's last step compares like with like.
        if self.stopped or self.diverged or self.on_epoch is None or self.last is None:
            return
        if self.last.epoch < self.max_epochs - 1:
            filled = dataclasses.replace(
                self.last, epoch=self.max_epochs - 1,
                step=self.fold * self.max_epochs + self.max_epochs - 1, filled=True,
            )
            if self.on_epoch(filled):
                self.stopped = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        train_loss = float(logs.get(CROSS_ENTROPY, math.nan))
        val_loss = float(logs.get(f"val_{CROSS_ENTROPY}", math.nan))
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)
                and math.isfinite(float(logs.get("loss", 0.0)))):
            self.diverged, self.diverged_epoch = True, epoch
            self.model.stop_training = True
            return
        self.best = min(self.best, val_loss)
        if self.on_epoch is None:
            return
        metrics = EpochMetrics(
            fold=self.fold,
            epoch=epoch,
            # steps count across folds so the pruner sees one increasing sequence
            step=self.fold * self.max_epochs + epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=float(logs.get("val_accuracy", math.nan)),
            best_val_loss=self.best,
        )
        self.last = metrics
        if self.on_epoch(metrics):
            self.stopped = True
            self.model.stop_training = True


@dataclass(frozen=True)
class FinalResult:
    """A recipe retrained on the whole training split and evaluated once on held-out data."""

    epochs: int
    train_loss: float
    heldout_loss: float
    heldout_accuracy: float
    history: dict[str, list[float]] = field(repr=False)
    # per held-out image, in the held-out split's order: cross-entropy (no penalty) and whether
    # the top class was right; their means are heldout_loss and heldout_accuracy. Paired
    # comparisons between recipes resample these (same images, same order).
    heldout_losses: np.ndarray = field(repr=False, compare=False)
    heldout_correct: np.ndarray = field(repr=False, compare=False)


def train_final(
    train: Dataset,
    heldout: Dataset,
    recipe: Recipe,
    models: Models | Callable[[Recipe], keras.Model],
    *,
    epochs: int,
    seed: int = 0,
    class_weight: ClassWeight = None,
    on_batch: OnBatch | None = None,
) -> FinalResult:
    """Train ``recipe`` on all of ``train`` for ``epochs`` epochs, then score ``heldout`` once.

    There is no validation split left to stop on, so the epoch count comes from the
    cross-validation (the folds' mean best epoch). The held-out loss is recorded after every
    epoch for the learning curves only; nothing is chosen by it. ``models`` as in
    `cross_validate`; ``on_batch`` too, with fold 0.

    Returns:
        Training and held-out cross-entropy and accuracy after the last epoch, with curves,
        and the held-out cross-entropy and correctness of every image (one ``predict`` after
        training).
    """
    model = as_models(models).prepare(recipe, seed)
    fit_whitening(model, train.x, train.pixel_max)  # never from the held-out images
    history = model.fit(
        train.x, train.y,
        validation_data=(heldout.x, heldout.y),
        batch_size=recipe.batch_size,
        epochs=epochs,
        class_weight=resolve_class_weight(class_weight, train),
        callbacks=[SeedAtTrainBegin(seed), *_batch_hooks(0, on_batch)],
        verbose=0,
    ).history
    history = {k: [float(v) for v in vs] for k, vs in history.items()}
    probabilities = model.predict(heldout.x, batch_size=recipe.batch_size, verbose=0)
    losses, correct = _per_image(probabilities, heldout.y)
    return FinalResult(
        epochs=epochs,
        train_loss=history[CROSS_ENTROPY][-1],
        heldout_loss=history[f"val_{CROSS_ENTROPY}"][-1],
        heldout_accuracy=history["val_accuracy"][-1],
        history=history,
        heldout_losses=losses,
        heldout_correct=correct,
    )


def _per_image(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy and top-1 correctness of each image, from softmax outputs.

    Computed as Keras' sparse categorical cross-entropy computes it, so the mean is the
    ``val_cross_entropy`` that ``fit`` reports for the same weights.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    rows = np.arange(len(labels))
    if keras.backend.backend() == "tensorflow":
        # Keras on TensorFlow reads the logits cached on a softmax output and does not clip:
        # a right class at probability 1e-18 costs 41 there. Only a float32 underflow to 0
        # needs a floor (-log of the smallest float32 is 103).
        picked = np.maximum(probabilities[rows, labels],
                            float(np.finfo(np.float32).smallest_subnormal))
    else:
        # JAX, PyTorch and NumPy renormalise, then clip to [epsilon, 1 - epsilon] (the same
        # right class costs -log(1e-7) = 16.1 there).
        eps = keras.config.epsilon()
        normalised = probabilities / probabilities.sum(axis=-1, keepdims=True)
        picked = np.clip(normalised[rows, labels], eps, 1.0 - eps)
    return -np.log(picked), np.argmax(probabilities, axis=-1) == labels
