"""Every recipe field declared once: its type, allowed range, and for a regularizer its "off"
value, report label, whether batched folds train it and whether recipes trained in one step
must share it. The space checks, `trainers.Recipe`,
the baselines, the report and the batched fold mode's check derive from this table."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Strength:
    """One field of a recipe.

    Attributes:
        name: the recipe field and space key.
        kind: ``float`` or ``int``.
        low, high: the allowed range (``high`` None: unbounded); ``low_open``/``high_open``
            exclude the bound itself.
        off: for a regularizer, the value that switches it off (baselines start from it).
        label: for a regularizer, its column in the report (None: a training setting).
        searchable: False for a field a study fixes but never searches.
        batched: False for a regularizer that batched folds (`trainers.batched`) do not train
            yet: a study in that fold mode refuses it (`search.config.NOT_BATCHED`).
        shared_in_step: True for a setting that every recipe trained in one compiled step
            shares (`trainers.batched.cross_validate_recipes`): a study that trains several
            recipes per step cannot search it (`SHARED_IN_STEP`).
    """

    name: str
    kind: type
    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    off: float | None = None
    label: str | None = None
    searchable: bool = True
    batched: bool = True
    shared_in_step: bool = False

    @property
    def allowed(self) -> str:
        """The allowed range in words: ``in [0, 1)``, ``>= 0``, ``> 0``."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")

    def problem(self, value: object) -> tuple[type[Exception], str] | None:
        """What is wrong with ``value`` for this field (error type and words), or None."""
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return TypeError, "must be an integer"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return TypeError, "must be a number"
        if not math.isfinite(value):
            return ValueError, "must be finite"
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = self.high is not None and (value >= self.high if self.high_open
                                              else value > self.high)
        return (ValueError, f"must be {self.allowed}") if too_low or too_high else None


# Recipe fields in `trainers.Recipe`'s order. Regularizers first (a label and an "off" value;
# patience has no "off": every trial stops early), then the training settings a study fixes or
# searches. Patience below 1 would stop after the first epoch; dropout of 1 drops everything;
# a learning rate of 0 never moves the weights.
STRENGTHS: tuple[Strength, ...] = (
    Strength("l1", float, 0.0, off=0.0, label="l1"),
    Strength("l2", float, 0.0, off=0.0, label="l2"),
    Strength("dropout", float, 0.0, 1.0, high_open=True, off=0.0, label="dropout"),
    Strength("augment", float, 0.0, 1.0, off=0.0, label="augment"),
    # decoupled (AdamW) decay per step is learning_rate * weight_decay, as in Keras and
    # PyTorch; AdamW recipes use 0.01-0.3, and 1 is far beyond them
    Strength("weight_decay", float, 0.0, 1.0, off=0.0, label="weight_decay", batched=False),
    # at 1 every target is uniform and nothing is learned
    Strength("label_smoothing", float, 0.0, 1.0, high_open=True, off=0.0,
             label="label_smoothing", batched=False),
    # the alpha of Beta(alpha, alpha) that draws each batch's mixing weight; the papers use
    # 0.1-2, and at 10 the weight already stays within about 0.11 of 1/2
    Strength("mixup", float, 0.0, 10.0, off=0.0, label="mixup", batched=False),
    Strength("cutmix", float, 0.0, 10.0, off=0.0, label="cutmix", batched=False),
    Strength("patience", int, 1, label="patience"),
    # one optimizer, one stream and one fit train the recipes of a step
    Strength("learning_rate", float, 0.0, low_open=True, shared_in_step=True),
    Strength("batch_size", int, 1, shared_in_step=True),
    Strength("max_epochs", int, 1, searchable=False, shared_in_step=True),
)
SHARED_IN_STEP = tuple(s.name for s in STRENGTHS if s.shared_in_step)
BY_NAME = {s.name: s for s in STRENGTHS}
REGULARIZERS = tuple(s for s in STRENGTHS if s.label is not None)
# "no regularization": what every baseline starts from
OFF = {s.name: s.off for s in REGULARIZERS if s.off is not None}
