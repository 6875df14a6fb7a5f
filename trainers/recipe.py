"""The regularization recipe one trial trains with: a plain, frozen value object."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Recipe:
    """Everything a trainer needs to know about one trial's regularization and training.

    The first five fields are what a study searches; the last three are fixed per study.
    A strength of 0 switches that regularizer off.

    Attributes:
        l1: L1 penalty on every kernel (Keras ``regularizers.L1L2(l1=...)``).
        l2: L2 penalty on every kernel.
        dropout: dropout rate after every dense hidden layer, in [0, 1).
        augment: augmentation magnitude in [0, 1]; 0 is the identity.
        patience: early-stopping patience on ``val_loss`` (best weights restored).
        learning_rate: Adam learning rate.
        batch_size: training batch size.
        max_epochs: epochs per fold before early stopping.
    """

    l1: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0
    augment: float = 0.0
    patience: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 20

    def __post_init__(self) -> None:
        for name in ("l1", "l2", "dropout", "augment", "learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Recipe: {name} must be a number; got {value!r}.")
            if not math.isfinite(value):
                raise ValueError(f"Recipe: {name}={value!r} must be finite.")
        for name in ("patience", "batch_size", "max_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Recipe: {name} must be an integer; got {value!r}.")
        for name in ("l1", "l2"):
            if getattr(self, name) < 0:
                raise ValueError(f"Recipe: {name}={getattr(self, name)!r} must be >= 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Recipe: dropout={self.dropout!r} must be in [0, 1).")
        if not 0.0 <= self.augment <= 1.0:
            raise ValueError(f"Recipe: augment={self.augment!r} must be in [0, 1].")
        for name in ("patience", "batch_size", "max_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Recipe: {name}={getattr(self, name)!r} must be >= 1.")
        if self.learning_rate <= 0:
            raise ValueError(f"Recipe: learning_rate={self.learning_rate!r} must be > 0.")

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
