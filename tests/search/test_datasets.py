"""Tests for search/datasets.py's ZCA option: checked, sized, and handed to the model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search.config import build_config
from search.datasets import load_data
from search.training import model_builder
from trainers.recipe import Recipe
from trainers.whitening import Whiten


def test_zca_epsilon_is_a_data_option_that_puts_whitening_in_the_model():
    config = build_config("digits", overrides=["data.zca_epsilon=0.05"])
    data = load_data(config.spec.data, where="digits")
    assert data.zca_epsilon == 0.05
    model = model_builder(config, data)(Recipe())
    (layer,) = [x for x in model.layers if isinstance(x, Whiten)]
    assert layer.epsilon == 0.05
    plain = load_data({"source": "digits"}, where="digits")
    assert plain.zca_epsilon is None
    assert not any(isinstance(x, Whiten) for x in model_builder(config, plain)(Recipe()).layers)


@pytest.mark.parametrize("value", [0.0, -1.0, "small"])
def test_a_bad_zca_epsilon_names_the_key(value):
    with pytest.raises((ValueError, TypeError), match="data.zca_epsilon"):
        load_data({"source": "digits", "zca_epsilon": value}, where="s.yaml")


def test_zca_is_refused_for_images_too_large_to_whiten(tmp_path):
    root = tmp_path / "images"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(root / name / f"{i}.png")
    data = {"source": "folder", "root": str(root), "image_size": [40, 40],
            "cache_dir": str(tmp_path / "cache"), "zca_epsilon": 0.1}
    with pytest.raises(ValueError, match=r"zca_epsilon.*4800 values.*3072"):
        load_data(data, where="s.yaml", progress=False)
    data["image_size"] = [16, 16]
    assert load_data(data, where="s.yaml", progress=False).zca_epsilon == 0.1
