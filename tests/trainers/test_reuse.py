"""Tests for trainers/reuse.py and the variable strengths of trainers/regularization.py.

A model compiled once and reset per trial must train exactly like a model built afresh with
the same seed and recipe. Losses are compared with rtol 1e-5 (float32 on CPU; in practice they
agree to the last bit on TensorFlow without XLA and on JAX).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

from trainers.cnn import BUILDERS
from trainers.data import Dataset, load_digits
from trainers.fit import CROSS_ENTROPY, cross_validate, train_final
from trainers.kfold import stratified_folds
from trainers.models import build_model
from trainers.recipe import Recipe
from trainers.regularization import (
    Strengths,
    VariableDropout,
    VariableL1L2,
    assign_strengths,
    kernel_regularizer,
)
from trainers.reuse import Rebuild, Reuse, SeedAtTrainBegin, as_models

RTOL = 1e-5
MLP = {"pixel_max": 16.0, "augment_preset": "digits", "hidden_layers": 1, "units": 16}
# Every regularizer on, then off with other learning rates, then a different mix.
RECIPE_A = Recipe(l2=1e-3, dropout=0.3, augment=0.5, learning_rate=1e-2, batch_size=32)
RECIPE_B = Recipe(l1=1e-4, learning_rate=3e-3, batch_size=32)
RECIPE_C = Recipe(l1=1e-4, l2=1e-4, dropout=0.2, augment=1.0, learning_rate=1e-3, batch_size=32)


@functools.lru_cache(maxsize=1)
def _digits(n: int = 240) -> Dataset:
    return load_digits().subset(np.arange(n))


def _images(n: int = 48, shape=(16, 16, 3), n_classes: int = 3) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, *shape)).astype(np.float32)
    y = (np.arange(n) % n_classes).astype(np.int64)
    return Dataset(x, y, tuple("abc"[:n_classes]))


def _mlp_models(data: Dataset, jit_compile="auto") -> tuple[Reuse, Rebuild]:
    shape, k = data.image_shape, data.n_classes
    reuse = Reuse(functools.partial(build_model, "mlp", shape, k, Recipe(), reusable=True, **MLP),
                  jit_compile=jit_compile)
    rebuild = Rebuild(lambda r: build_model("mlp", shape, k, r, **MLP), jit_compile=jit_compile)
    return reuse, rebuild


def _fit(models, recipe: Recipe, data: Dataset, seed: int = 3, epochs: int = 3):
    model = models.prepare(recipe, seed)
    history = model.fit(
        data.x, data.y, validation_data=(data.x[:64], data.y[:64]),
        batch_size=recipe.batch_size, epochs=epochs, callbacks=[SeedAtTrainBegin(seed)],
        verbose=0,
    ).history
    return model, {key: np.asarray(values) for key, values in history.items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=1e-7, err_msg=key)


def test_reuse_trains_like_a_fresh_model_for_recipes_in_sequence():
    data = _digits()
    reuse, rebuild = _mlp_models(data)
    histories = []
    for recipe in (RECIPE_A, RECIPE_B, RECIPE_A, RECIPE_C):
        _, reused = _fit(reuse, recipe, data)
        _, fresh = _fit(rebuild, recipe, data)
        _assert_same(reused, fresh)
        histories.append(reused)
    _assert_same(histories[2], histories[0])  # A after B is A again
    # the recipes really differ, so the equalities above are not vacuous
    assert not np.allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-3)
    assert not np.allclose(histories[0]["loss"], histories[3]["loss"], rtol=1e-3)


def test_reuse_trains_like_a_fresh_seed_cnn():
    data = _images()
    options = {"width": 0.125, "pixel_max": 255.0}
    reuse = Reuse(functools.partial(BUILDERS["seed_cnn"], data.image_shape, data.n_classes,
                                    Recipe(), reusable=True, **options))
    rebuild = Rebuild(lambda r: BUILDERS["seed_cnn"](data.image_shape, data.n_classes, r,
                                                     **options))
    recipes = [r.replace(batch_size=16) for r in (RECIPE_A, RECIPE_B, RECIPE_A)]
    reused = [_fit(reuse, r, data, seed=1, epochs=2)[1] for r in recipes]
    for recipe, history in zip(recipes[:2], reused):
        _assert_same(history, _fit(rebuild, recipe, data, seed=1, epochs=2)[1])
    _assert_same(reused[2], reused[0])


def test_reuse_starts_every_seed_from_the_weights_of_a_fresh_build():
    data = _digits()
    reuse, rebuild = _mlp_models(data)
    _fit(reuse, RECIPE_A, data, seed=3, epochs=1)  # move the weights and the optimizer away
    for seed in (5, 3, 5):
        model = reuse.prepare(RECIPE_B, seed)
        fresh = rebuild.prepare(RECIPE_B, seed)
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
        assert float(model.optimizer.learning_rate) == pytest.approx(RECIPE_B.learning_rate)
        for variable in model.optimizer.variables[2:]:  # moments, after iterations and lr
            assert not np.any(keras.ops.convert_to_numpy(variable))
        for got, want in zip(model.trainable_variables, fresh.trainable_variables):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(got),
                                          keras.ops.convert_to_numpy(want))
    assert sorted(reuse._initial) == [3, 5]  # each seed built once, then kept


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="Keras on PyTorch runs eagerly under jit_compile='auto' (what regsearch "
                           "uses) and torch.compile guards on the counting wrapper itself; "
                           "there is no traced step to count")
def test_reuse_compiles_once_and_never_retraces():
    data = _digits()
    reuse, _ = _mlp_models(data, jit_compile=True)
    model = reuse.prepare(RECIPE_A, 0)
    traces = []
    train_step = model.train_step

    def counted(*args, **kwargs):  # runs once per trace of the compiled step
        traces.append(1)
        return train_step(*args, **kwargs)

    model.train_step = counted
    first = _fit(reuse, RECIPE_A, data, seed=0, epochs=1)[1]
    function, n_traces = model.train_function, len(traces)
    assert n_traces >= 1 and model.jit_compile is True
    for recipe in (RECIPE_B, RECIPE_C, RECIPE_A):
        again, history = _fit(reuse, recipe, data, seed=0, epochs=1)
        assert again is model
    assert model.train_function is function
    assert len(traces) == n_traces
    assert model.jit_compile is True
    _assert_same(history, first)


def _count_traces(model: keras.Model) -> list:
    """A list that grows by one each time the model's train step is traced."""
    traces = []
    train_step = model.train_step

    def counted(*args, **kwargs):
        traces.append(1)
        return train_step(*args, **kwargs)

    model.train_step = counted
    return traces


# Each later regularizer: on, off, on again, against a fresh model each time.
NEW_STRENGTHS = {
    "weight_decay": [Recipe(weight_decay=0.5, learning_rate=1e-2, batch_size=32),
                     Recipe(learning_rate=1e-2, batch_size=32),
                     Recipe(weight_decay=0.5, learning_rate=1e-2, batch_size=32)],
    "label_smoothing": [Recipe(label_smoothing=0.2, learning_rate=1e-2, batch_size=32),
                        Recipe(learning_rate=1e-2, batch_size=32),
                        Recipe(label_smoothing=0.2, learning_rate=1e-2, batch_size=32)],
    "mixup_cutmix": [Recipe(mixup=0.4, cutmix=1.0, learning_rate=1e-2, batch_size=32),
                     Recipe(learning_rate=1e-2, batch_size=32),
                     Recipe(mixup=0.4, cutmix=1.0, learning_rate=1e-2, batch_size=32)],
}


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="no traced step to count on PyTorch (see above)")
@pytest.mark.parametrize("key", list(NEW_STRENGTHS))
def test_reuse_sets_each_new_strength_like_a_fresh_model_without_retracing(key):
    data = _digits()
    reuse, rebuild = _mlp_models(data, jit_compile=True)
    recipes = NEW_STRENGTHS[key]
    model = reuse.prepare(recipes[0], 0)
    traces = _count_traces(model)
    histories, n_traces = [], None
    for recipe in recipes:
        again, reused = _fit(reuse, recipe, data, seed=0, epochs=2)
        assert again is model and model.jit_compile is True
        n_traces = n_traces or len(traces)  # the first recipe's traces (one per batch shape)
        fresh_model, fresh = _fit(rebuild, recipe, data, seed=0, epochs=2)
        assert fresh_model.jit_compile is True
        _assert_same(reused, fresh)
        histories.append(reused)
    assert len(traces) == n_traces >= 1  # never traced again for a later recipe
    _assert_same(histories[2], histories[0])
    assert not np.allclose(histories[0]["val_loss"], histories[1]["val_loss"], rtol=1e-4)


def test_cross_validate_with_reuse_matches_rebuild():
    data = _digits()
    folds = stratified_folds(data.y, 2, seed=0)
    reuse, rebuild = _mlp_models(data)
    recipe = RECIPE_C.replace(max_epochs=4, patience=1, learning_rate=1e-2)
    results = {}
    for name, models in (("reuse", reuse), ("rebuild", rebuild)):
        # a different recipe first, so the reused model carries another trial's state
        cross_validate(data, folds, RECIPE_A.replace(max_epochs=1), models, seed=7)
        results[name] = cross_validate(data, folds, recipe, models, seed=7)
    a, b = results["reuse"], results["rebuild"]
    for key in ("val_loss", "val_loss_std", "val_accuracy", "train_loss"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=RTOL), key
    for x, y in zip(a.folds, b.folds):
        assert (x.best_epoch, x.n_epochs) == (y.best_epoch, y.n_epochs)
        _assert_same({k: np.asarray(v) for k, v in x.history.items()},
                     {k: np.asarray(v) for k, v in y.history.items()})


def test_train_final_with_reuse_matches_rebuild():
    data = _digits()
    reuse, rebuild = _mlp_models(data)
    heldout = load_digits().subset(np.arange(240, 300))
    a = train_final(data, heldout, RECIPE_A, reuse, epochs=2, seed=4)
    b = train_final(data, heldout, RECIPE_A, rebuild, epochs=2, seed=4)
    assert a.heldout_loss == pytest.approx(b.heldout_loss, rel=RTOL)
    assert a.train_loss == pytest.approx(b.train_loss, rel=RTOL)


# ---- the strengths really are the variables' values -----------------------------------------

def test_variable_dropout_is_the_identity_at_rate_zero_and_drops_at_other_rates():
    rate = keras.Variable(0.0, dtype="float32", trainable=False)
    first, second = VariableDropout(rate, name="d1"), VariableDropout(rate, name="d2")
    x = np.random.default_rng(0).uniform(0.5, 1.5, size=(100, 100)).astype("float32")
    for layer in (first, second):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=True)), x)
    rate.assign(0.25)  # one assign changes every layer that shares the variable
    for layer in (first, second):
        assert layer.rate == pytest.approx(0.25)
        y = keras.ops.convert_to_numpy(layer(x, training=True))
        kept = y != 0
        assert kept.mean() == pytest.approx(0.75, abs=0.02)
        np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    rate.assign(0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first(x, training=True)), x)


def test_variable_dropout_rejects_bad_rates():
    with pytest.raises(ValueError, match="rate"):
        VariableDropout(1.0)
    with pytest.raises(TypeError, match="rate"):
        VariableDropout("0.5")


def test_variable_l1l2_equals_the_fixed_penalty():
    x = np.random.default_rng(0).normal(size=(7, 5)).astype("float32")
    strengths = Strengths(l1=0.0, l2=0.0)
    penalty = kernel_regularizer(Recipe(), strengths)
    assert isinstance(penalty, VariableL1L2)
    assert float(penalty(x)) == 0.0
    strengths.assign(Recipe(l1=1e-3, l2=1e-2))
    fixed = keras.regularizers.L1L2(l1=1e-3, l2=1e-2)
    assert float(penalty(x)) == pytest.approx(float(fixed(x)), rel=1e-6)


def test_compiled_model_reads_the_assigned_strengths():
    """The penalty in the compiled test step and the training-mode output follow prepare()."""
    data = _digits()
    reuse, _ = _mlp_models(data)
    x, y = data.x[:64], data.y[:64]

    def penalty(model, recipe):
        kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers
                   if isinstance(layer, keras.layers.Dense)]
        return sum(recipe.l1 * np.abs(k).sum() + recipe.l2 * np.square(k).sum()
                   for k in kernels)

    recipes = [Recipe(), Recipe(l1=1e-3, l2=1e-2), Recipe(l2=0.1), Recipe()]
    for recipe in recipes:
        model = reuse.prepare(recipe, 0)
        scores = model.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
        extra = scores["loss"] - scores[CROSS_ENTROPY]
        if recipe.l1 == recipe.l2 == 0:
            assert extra == pytest.approx(0.0, abs=1e-6)
        else:
            assert extra == pytest.approx(penalty(model, recipe), rel=1e-4)

    # all strengths 0: training mode is inference mode; augmentation or dropout change it
    model = reuse.prepare(Recipe(), 0)
    inference = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=True)), inference)
    for recipe in (Recipe(dropout=0.5), Recipe(augment=1.0)):
        model = reuse.prepare(recipe, 0)
        assert not np.allclose(keras.ops.convert_to_numpy(model(x, training=True)), inference)


# ---- builders and errors ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "seed_cnn", "small_resnet"])
def test_reusable_builders_have_every_penalty_and_dropout_at_strength_zero(name):
    options = MLP if name == "mlp" else {"width": 0.125}
    plain = build_model(name, (16, 16, 3), 3, Recipe(), **options)
    model = build_model(name, (16, 16, 3), 3, Recipe(), reusable=True, **options)
    strengths = model.get_layer("strengths")
    kernels = [v for v in model.trainable_variables if v.path.endswith("kernel")]
    assert len(model.losses) == len(kernels) > 0 and not plain.losses
    assert all(v.regularizer is strengths.regularizer for v in kernels)
    dropouts = [layer for layer in model.layers if isinstance(layer, VariableDropout)]
    assert dropouts and all(d.rate_variable is strengths.dropout for d in dropouts)
    # same weights as the plain build for the same seed: the extra layers draw no randomness
    keras.utils.set_random_seed(2)
    a = build_model(name, (16, 16, 3), 3, Recipe(dropout=0.4), **options)
    keras.utils.set_random_seed(2)
    b = build_model(name, (16, 16, 3), 3, Recipe(), reusable=True, **options)
    for got, want in zip(a.trainable_variables, b.trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got),
                                      keras.ops.convert_to_numpy(want))


@pytest.mark.parametrize("name", ["mlp", "seed_cnn", "small_resnet"])
def test_builders_end_in_a_float32_softmax_under_mixed_precision(name):
    options = MLP if name == "mlp" else {"width": 0.125}
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(name, (16, 16, 3), 3, Recipe(), reusable=True, **options)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    x = np.zeros((2, 16, 16, 3), "float32")
    assert keras.backend.standardize_dtype(model(x).dtype) == "float32"


def test_reuse_rejects_a_model_with_fixed_penalties():
    data = _digits()
    reuse = Reuse(lambda: build_model("mlp", data.image_shape, 10, Recipe(l2=1e-4), **MLP))
    with pytest.raises(ValueError, match="reusable=True"):
        reuse.prepare(Recipe(), 0)


def test_assign_strengths_names_the_strength_a_model_cannot_apply():
    model = build_model("mlp", (8, 8, 1), 10, Recipe(), **MLP)  # plain: no dropout layers
    assign_strengths(model, Recipe(augment=0.3))
    assert float(keras.ops.convert_to_numpy(model.get_layer("augment").magnitude)) == (
        pytest.approx(0.3))
    with pytest.raises(ValueError, match=r"dropout=0\.2.*reusable=True"):
        assign_strengths(model, Recipe(dropout=0.2))


def test_as_models_wraps_a_plain_builder_and_rejects_other_things():
    build = functools.partial(build_model, "mlp", (8, 8, 1), 10, **MLP)
    assert isinstance(as_models(build), Rebuild)
    reuse = Reuse(build)
    assert as_models(reuse) is reuse
    with pytest.raises(TypeError, match="Models"):
        as_models(3)
    with pytest.raises(ValueError, match="cache_size"):
        Reuse(build, cache_size=0)
