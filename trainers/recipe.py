"""The regularization recipe one trial trains with: a plain, frozen value object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from spaces.strengths import STRENGTHS


@dataclass(frozen=True)
class Recipe:
    """Everything a trainer needs to know about one trial's regularization and training.

    The fields up to ``patience`` are what a study searches; the last three are fixed per
    study (or searched, learning rate and batch size). A strength of 0 switches that
    regularizer off. The fields and their ranges are declared in `spaces.strengths.STRENGTHS`.

    Attributes:
        l1: L1 penalty on every kernel (Keras ``regularizers.L1L2(l1=...)``).
        l2: L2 penalty on every kernel.
        dropout: dropout rate after every dense hidden layer, in [0, 1).
        augment: augmentation magnitude in [0, 1]; 0 is the identity.
        weight_decay: decoupled (AdamW) weight decay of every kernel, in [0, 1]; each step
            shrinks a kernel by ``learning_rate * weight_decay`` (`trainers.optimizer`).
        label_smoothing: label smoothing of the training loss, in [0, 1); the reported and
            validation losses stay the plain cross-entropy (`trainers.loss`).
        mixup: mixup's alpha in [0, 10]: each training batch is blended with itself reversed
            at a weight drawn from Beta(alpha, alpha), labels alike (`trainers.mix`).
        cutmix: cutmix's alpha in [0, 10]: a box of the reversed batch is pasted in, labels
            weighted by area. With both on, each batch uses one of them at random.
        patience: early-stopping patience on ``val_loss`` (best weights restored).
        learning_rate: Adam learning rate.
        batch_size: training batch size.
        max_epochs: epochs per fold before early stopping.
    """

    l1: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0
    augment: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    patience: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 20

    def __post_init__(self) -> None:
        for strength in STRENGTHS:  # the allowed ranges, declared once
            value = getattr(self, strength.name)
            problem = strength.problem(value)
            if problem is not None:
                error, words = problem
                raise error(f"Recipe: {strength.name}={value!r} {words}.")

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON-serialisable values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Recipe":
        """Build a recipe from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Recipe: unknown key {unknown[0]!r}. Valid keys: {', '.join(sorted(known))}."
            )
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "Recipe":
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)
