"""Turn a recipe's strengths into Keras regularization: kernel penalties, dropout, early stopping."""

from __future__ import annotations

import keras

from trainers.recipe import Recipe


def kernel_regularizer(recipe: Recipe) -> keras.regularizers.Regularizer | None:
    """Return the L1/L2 kernel penalty of a recipe, or None when both strengths are 0.

    Use it as ``kernel_regularizer=`` on every Dense and Conv layer of a model.
    """
    if recipe.l1 == 0.0 and recipe.l2 == 0.0:
        return None
    return keras.regularizers.L1L2(l1=recipe.l1, l2=recipe.l2)


def dropout(recipe: Recipe, name: str | None = None) -> keras.layers.Layer:
    """Return the dropout layer placed after a hidden layer (the identity when the rate is 0)."""
    if recipe.dropout == 0.0:
        return keras.layers.Identity(name=name)
    return keras.layers.Dropout(recipe.dropout, name=name)


def early_stopping(recipe: Recipe) -> keras.callbacks.EarlyStopping:
    """Return early stopping on ``val_loss`` that restores the best epoch's weights."""
    return keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=recipe.patience,
        restore_best_weights=True,
    )
