"""Write the selected recipe of a study to YAML/JSON with provenance, and turn one back into a model."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from search.names import (
    BACKEND_ATTR,
    CV_ACCURACY,
    CV_LOSS_STD,
    DATA_ATTR,
    GAP,
    RECIPE_ATTR,
    RUN_ID_ATTR,
    SETTINGS_ATTR,
)

FORMAT_VERSION = 1
_PACKAGES = ("regsearch", "keras", "optuna", "mlflow-skinny", "numpy", "scikit-learn",
             "tensorflow", "tensorflow-cpu", "jax", "torch")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result (those installed)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def recipe_document(study: Any, trial: Any, *, storage: str, mlflow_run_id: str | None = None,
                    backend: str | None = None) -> dict[str, Any]:
    """Return the export document of ``trial`` (a finished trial of ``study``).

    The document holds the recipe (every `trainers.Recipe` field), the model and data it was
    searched for, the cross-validation figures, and provenance.
    """
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    attrs = trial.user_attrs
    return {
        "regsearch_recipe": FORMAT_VERSION,
        "study": study.study_name,
        "trial": trial.number,
        "cv_val_loss": {
            "mean": trial.value,
            "std": attrs.get(CV_LOSS_STD),
            "n_folds": settings.get("n_folds"),
        },
        "cv_val_accuracy": attrs.get(CV_ACCURACY),
        "generalization_gap": attrs.get(GAP),
        "recipe": attrs[RECIPE_ATTR],
        "model": settings.get("model", {}),
        "data": {**settings.get("data", {}), **study.user_attrs.get(DATA_ATTR, {})},
        "provenance": {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "storage": storage,
            "mlflow_run_id": mlflow_run_id or attrs.get(RUN_ID_ATTR),
            "seed": settings.get("seed"),
            "keras_backend": backend or attrs.get(BACKEND_ATTR) or study.user_attrs.get(BACKEND_ATTR),
            "versions": package_versions(),
        },
    }


def write_recipe(document: dict[str, Any], path: str | Path, fmt: str | None = None) -> Path:
    """Write ``document`` as YAML (default) or JSON; the format follows ``fmt`` or the suffix."""
    path = Path(path)
    fmt = fmt or ("json" if path.suffix == ".json" else "yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(document, indent=2) + "\n" if fmt == "json"
            else yaml.safe_dump(document, sort_keys=False))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe file written by `write_recipe` (YAML or JSON).

    Raises:
        ValueError: the file is not a regsearch recipe, or is of a newer format.
    """
    path = Path(path)
    document = yaml.safe_load(path.read_text())  # JSON is YAML too
    if not isinstance(document, dict) or "regsearch_recipe" not in document:
        raise ValueError(f"{path}: not a regsearch recipe file (no 'regsearch_recipe' key).")
    if document["regsearch_recipe"] > FORMAT_VERSION:
        raise ValueError(
            f"{path}: recipe format {document['regsearch_recipe']} is newer than this "
            f"regsearch reads ({FORMAT_VERSION}); upgrade regsearch."
        )
    return document


def model_from_recipe(path_or_document: str | Path | dict[str, Any], *, compile: bool = True):
    """Build the regularized Keras model a recipe file describes.

    Use it to train the selected recipe on your own pipeline: the model carries the recipe's
    L1/L2 penalties, dropout and augmentation; with ``compile=True`` it is compiled with Adam at
    the recipe's learning rate. Add ``trainers.regularization.early_stopping(recipe)`` to
    ``fit`` for the recipe's early stopping.

    Returns:
        ``(model, recipe)``: a `keras.Model` and the `trainers.Recipe` it was built from.
    """
    # Keras: off `search.export`, which reads and writes recipe files without a model
    from trainers.fit import compile_model
    from trainers.models import build_model
    from trainers.recipe import Recipe

    document = (path_or_document if isinstance(path_or_document, dict)
                else read_recipe(path_or_document))
    recipe = Recipe.from_dict(document["recipe"])
    model_options = dict(document["model"])
    name = model_options.pop("name")
    data = document["data"]
    model_options.setdefault("pixel_max", data["pixel_max"])
    model_options.setdefault("augment_preset", data.get("augment_preset", "natural"))
    if data.get("zca_epsilon") is not None:  # its statistics: trainers.whitening.fit_whitening
        model_options.setdefault("zca_epsilon", data["zca_epsilon"])
    model = build_model(name, tuple(data["input_shape"]), data["n_classes"], recipe, **model_options)
    if compile:
        compile_model(model, recipe)
    return model, recipe
