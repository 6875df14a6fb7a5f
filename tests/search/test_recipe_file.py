"""Tests for search/recipe_file.py: every recipe field survives the file and rebuilds the model."""

from __future__ import annotations

import numpy as np
import pytest

from search.recipe_file import FORMAT_VERSION, model_from_recipe, read_recipe, write_recipe

RECIPE = {"l1": 0.0, "l2": 1e-4, "dropout": 0.2, "augment": 0.5, "weight_decay": 0.05,
          "label_smoothing": 0.1, "mixup": 0.2, "cutmix": 1.0, "patience": 3,
          "learning_rate": 1e-3, "batch_size": 16, "max_epochs": 2}


def _document() -> dict:
    return {"regsearch_recipe": FORMAT_VERSION, "study": "digits", "trial": 3,
            "recipe": dict(RECIPE),
            "model": {"name": "mlp", "hidden_layers": 1, "units": 16},
            "data": {"input_shape": [8, 8, 1], "n_classes": 10, "pixel_max": 16.0,
                     "augment_preset": "digits"}}


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_every_regularizer_round_trips_through_the_file_into_the_model(tmp_path, suffix):
    path = write_recipe(_document(), tmp_path / f"recipe.{suffix}")
    assert read_recipe(path)["recipe"] == RECIPE
    model, recipe = model_from_recipe(path)
    assert recipe.to_dict() == RECIPE
    assert model.optimizer.decoupled_weight_decay == pytest.approx(0.05)
    mix = model.get_layer("mix")
    assert float(np.asarray(mix.mixup)) == pytest.approx(0.2)
    assert float(np.asarray(mix.cutmix)) == pytest.approx(1.0)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    assert model.loss.mix_weight is mix.label_weight
    assert float(np.asarray(model.get_layer("augment").magnitude)) == pytest.approx(0.5)
    x = np.random.default_rng(0).uniform(0, 16, size=(32, 8, 8, 1)).astype("float32")
    history = model.fit(x, np.arange(32) % 10, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_a_recipe_file_without_the_later_keys_has_them_off(tmp_path):
    document = _document()
    for key in ("weight_decay", "label_smoothing", "mixup", "cutmix"):
        del document["recipe"][key]
    model, recipe = model_from_recipe(write_recipe(document, tmp_path / "old.yaml"))
    assert (recipe.weight_decay, recipe.label_smoothing, recipe.mixup, recipe.cutmix) == (0,) * 4
    assert model.loss == "sparse_categorical_crossentropy"
    assert not any(layer.name == "mix" for layer in model.layers)
