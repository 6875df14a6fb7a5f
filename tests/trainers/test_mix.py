"""Tests for trainers/mix.py: mixup and cutmix blend images and weigh labels alike."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from scipy import stats

from trainers.loss import RecipeCrossEntropy
from trainers.mix import MixBatch, symmetric_beta
from trainers.models import build_model
from trainers.recipe import Recipe
from trainers.regularization import CROSS_ENTROPY, Strengths, assign_strengths
from trainers.reuse import Reuse, compile_model

MLP = {"pixel_max": 1.0, "augment_preset": "digits", "hidden_layers": 1, "units": 16}


def _numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _images(n: int = 6, size: int = 8) -> np.ndarray:
    # distinct values everywhere, so a pixel's origin (own or partner) can be read back
    return np.random.default_rng(0).uniform(0, 1, size=(n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_symmetric_beta_draws_from_beta_alpha_alpha(alpha):
    draws = _numpy(symmetric_beta(alpha, 4000, keras.random.SeedGenerator(3)))
    assert draws.shape == (4000,) and np.all((draws >= 0) & (draws <= 1))
    assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    # and not some other alpha's
    assert stats.kstest(draws, stats.beta(2 * alpha, 2 * alpha).cdf).pvalue < 1e-3


def test_mixup_blends_each_image_with_its_mirror_at_the_label_weight():
    x = _images()
    layer = MixBatch(mixup=0.4, seed=1)
    weights = []
    for _ in range(5):
        out = _numpy(layer(x, training=True))
        w = float(_numpy(layer.label_weight))
        np.testing.assert_allclose(out, w * x + (1 - w) * x[::-1], rtol=1e-5, atol=1e-6)
        weights.append(w)
    assert 0 < min(weights) and max(weights) < 1 and len(set(weights)) == 5


def test_cutmix_pastes_one_box_from_the_mirror_and_weighs_labels_by_area():
    x = _images(size=16)
    layer = MixBatch(cutmix=1.0, seed=2)
    areas = []
    for _ in range(8):
        out = _numpy(layer(x, training=True))
        w = float(_numpy(layer.label_weight))
        from_partner = np.all(out == x[::-1], axis=-1)
        own = np.all(out == x, axis=-1)
        assert np.all(from_partner ^ own)  # every pixel is one or the other, unblended
        box = from_partner[0]
        assert np.all(from_partner == box)  # the same box in every image
        rows, cols = np.nonzero(box)
        if rows.size:  # a rectangle
            assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        # the label weight is exactly the share of the image that is its own
        assert w == pytest.approx(1 - box.mean(), abs=1e-6)
        areas.append(box.mean())
    assert max(areas) > 0


def test_both_on_switch_between_cutmix_and_mixup_per_batch():
    x = _images()
    layer = MixBatch(mixup=1.0, cutmix=1.0, seed=3)
    kinds = []
    for _ in range(40):
        out = _numpy(layer(x, training=True))
        pure = np.all((out == x) | (out == x[::-1]))
        kinds.append("cutmix" if pure else "mixup")
    assert 8 <= kinds.count("cutmix") <= 32


def test_mixing_is_the_identity_when_off_and_at_inference():
    x = _images()
    off = MixBatch(seed=4)
    np.testing.assert_array_equal(_numpy(off(x, training=True)), x)
    assert float(_numpy(off.label_weight)) == 1.0
    on = MixBatch(mixup=1.0, cutmix=1.0, seed=4)
    on(x, training=True)
    np.testing.assert_array_equal(_numpy(on(x, training=False)), x)
    assert float(_numpy(on.label_weight)) == 1.0  # the loss sees unmixed labels again
    with pytest.raises(ValueError, match="mixup"):
        MixBatch(mixup=-1.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_weighs_each_label_and_its_partners_label_by_the_mix_weight(smoothing):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=6).astype("float32")
    y = np.array([0, 1, 2, 3, 1, 2])
    weight = keras.Variable(0.7, dtype="float32", trainable=False)
    ours = float(RecipeCrossEntropy(smoothing, weight)(y, p))
    one_hot = np.eye(4, dtype="float32")
    target = 0.7 * one_hot[y] + 0.3 * one_hot[y[::-1]]
    keras_own = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)(target, p)
    assert ours == pytest.approx(float(keras_own), rel=1e-5)


class _Record(keras.layers.Layer):
    """Keeps the last batch it saw in a variable: the mixed images of the compiled step."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.seen = self.add_weight(name="seen", shape=shape, initializer="zeros",
                                    trainable=False)

    def call(self, inputs, training=None):
        self.seen.assign(inputs)
        return inputs

    def compute_output_shape(self, input_shape):  # the symbolic batch is unknown
        return input_shape


@pytest.mark.parametrize("recipe", [Recipe(mixup=0.5), Recipe(cutmix=1.0),
                                    Recipe(mixup=0.5, cutmix=1.0, label_smoothing=0.1)],
                         ids=["mixup", "cutmix", "both+smoothing"])
def test_compiled_training_step_trains_on_mixed_images_against_mixed_labels(recipe):
    """Inside a jit-compiled step: the images the network saw are the mix the label weight
    says, and the loss of the step is the cross-entropy against labels mixed the same way."""
    n, size, k = 8, 8, 4
    x = _images(n, size)
    y = np.arange(n) % k
    keras.utils.set_random_seed(0)
    strengths = Strengths(name="strengths")
    inputs = keras.Input((size, size, 3))
    mixed = MixBatch(strengths.mixup, strengths.cutmix, name="mix")(strengths(inputs))
    record = _Record((n, size, size, 3))
    hidden = keras.layers.Flatten()(record(mixed))
    model = keras.Model(inputs, keras.layers.Dense(k, activation="softmax")(hidden))
    assign_strengths(model, recipe)
    compile_model(model, recipe, jit_compile=True)
    model.optimizer.learning_rate = 0.0  # the step must not move the weights we check with
    for _ in range(4):
        logs = model.train_on_batch(x, y, return_dict=True)
        w = float(_numpy(model.get_layer("mix").label_weight))
        seen = _numpy(record.seen)
        if np.all((seen == x) | (seen == x[::-1])):  # cutmix: pixel shares
            assert 1 - np.all(seen == x[::-1], axis=-1)[0].mean() == pytest.approx(w, abs=1e-6)
        else:  # mixup
            np.testing.assert_allclose(seen, w * x + (1 - w) * x[::-1], rtol=1e-5, atol=1e-6)
        p = _numpy(model(seen, training=False))
        one_hot = np.eye(k)[y]
        target = w * one_hot + (1 - w) * one_hot[::-1]
        target = (1 - recipe.label_smoothing) * target + recipe.label_smoothing / k
        expected = float(np.mean(-np.sum(target * np.log(p), axis=1)))
        assert logs["loss"] == pytest.approx(expected, rel=1e-4)
        # the reported cross-entropy is against the plain labels
        assert logs[CROSS_ENTROPY] == pytest.approx(
            float(np.mean(-np.log(p[np.arange(n), y]))), rel=1e-4)
    assert model.jit_compile is True


def test_reusable_builders_mix_from_the_strengths_layer():
    model = build_model("mlp", (8, 8, 1), 3, Recipe(), reusable=True, **MLP)
    mix = model.get_layer("mix")
    strengths = model.get_layer("strengths")
    assert mix.mixup is strengths.mixup and mix.cutmix is strengths.cutmix
    plain = build_model("mlp", (8, 8, 1), 3, Recipe(), **MLP)
    assert not any(isinstance(layer, MixBatch) for layer in plain.layers)
    with pytest.raises(ValueError, match=r"mixup=0\.2.*reusable=True"):
        assign_strengths(plain, Recipe(mixup=0.2))
    reuse = Reuse(functools.partial(build_model, "mlp", (8, 8, 1), 3, Recipe(), reusable=True,
                                    **MLP))
    model = reuse.prepare(Recipe(cutmix=0.3), 0)
    assert model.loss.mix_weight is model.get_layer("mix").label_weight
    assert float(_numpy(model.get_layer("mix").cutmix)) == pytest.approx(0.3)
