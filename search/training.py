"""The trainer side of a study: precision, model builder, the reused models, folds, class weight.

One function prepares it for the driver, its workers and the benchmarks alike, so a benchmark
measures the same training a study runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import keras

from search.config import StudyConfig
from search.datasets import StudyData
from search.recording import make_recipe
from trainers.kfold import stratified_folds
from trainers.models import build_model
from trainers.recipe import Recipe
from trainers.reuse import Rebuild, Reuse


@dataclass(frozen=True)
class Training:
    """What every trial of a study trains with, in this process.

    Attributes:
        build: ``build(recipe, **extra) -> keras.Model`` for the study's model and data.
        models: the `trainers.reuse.Models` every trial trains (one compiled model reused).
        folds: the study's folds, fixed by its seed.
        class_weight: ``"balanced"`` (from the labels each model trains on) or None.
    """

    build: Callable[..., Any]
    models: Any
    folds: list
    class_weight: str | None


def prepare_training(config: StudyConfig, data: StudyData) -> Training:
    """Set the precision, build the study's model once (bad model options fail here) and
    return the trainer side of the study.

    Raises:
        ValueError, TypeError: a model option the builder refuses.
    """
    set_precision(config.precision)
    build = model_builder(config, data)
    try:
        build(make_recipe(config, config.spec.space.defaults()))  # bad model options fail here
    except Exception as exc:  # noqa: BLE001 (only running out of memory is turned into words)
        if not _out_of_memory(exc):
            raise
        raise ValueError(
            f"model {config.spec.model!r} does not fit in memory here (building it raised "
            f"{type(exc).__name__}); make it smaller "
            f"(e.g. --set model.units=..., model.width=...) or use a machine with more memory."
        ) from None
    return Training(build, make_models(config, build),
                    stratified_folds(data.train.y, config.n_folds, config.seed),
                    "balanced" if data.class_weights else None)


def _out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory error of any backend: NumPy's MemoryError, TensorFlow's
    ResourceExhaustedError, XLA's RESOURCE_EXHAUSTED, PyTorch's "out of memory"."""
    text = str(exc)
    return (isinstance(exc, MemoryError) or "ResourceExhausted" in type(exc).__name__
            or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())


def set_precision(precision: str) -> None:
    """Set Keras' global dtype policy for ``--precision`` (before any model is built)."""
    if precision == "bfloat16":
        # bfloat16 compute, float32 weights; every model's softmax layer stays float32
        keras.mixed_precision.set_global_policy("mixed_bfloat16")


def model_builder(config: StudyConfig, data: StudyData) -> Callable[..., Any]:
    """Return ``build(recipe, **extra) -> keras.Model`` for the study's model and data."""
    options = dict(config.spec.model)
    name = options.pop("name")
    options.setdefault("augment_preset", data.augment_preset)
    if data.zca_epsilon is not None:
        options.setdefault("zca_epsilon", data.zca_epsilon)
    return functools.partial(build_model, name, data.train.image_shape, data.train.n_classes,
                             pixel_max=data.train.pixel_max, **options)


def make_models(config: StudyConfig, build: Callable[..., Any]) -> Any:
    """The models a worker trains: one compiled model reused for every trial and fold, or
    (``--rebuild-per-trial``) a fresh build and compile each time."""
    if config.rebuild_per_trial:
        return Rebuild(build)
    # a reusable build: every penalty and dropout present, strengths held in variables
    return Reuse(functools.partial(build, Recipe(), reusable=True), cache_size=config.n_folds + 2)
