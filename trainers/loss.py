"""The loss a recipe trains on: cross-entropy with label smoothing and mixed labels, in variables.

Only the optimizer sees this loss. Every loss regsearch reports, early stopping watches and
the study scores is the plain cross-entropy metric (`trainers.regularization.CROSS_ENTROPY`),
so a smoothed or mixed recipe is judged by the same number as every other recipe.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="regsearch")
class RecipeCrossEntropy(keras.losses.Loss):
    """Sparse cross-entropy against smoothed, optionally mixed, labels.

    With smoothing ``e`` over ``K`` classes the target puts ``1 - e + e / K`` on the true class
    and ``e / K`` on every other, as ``keras.losses.CategoricalCrossentropy(label_smoothing=e)``
    does; by linearity that is ``(1 - e) * CE(label) + e * CE(uniform)``, which keeps the
    labels sparse. With a mix weight ``w`` (`trainers.mix.MixBatch`), each image's label gets
    weight ``w`` and the label of its partner, the image at the mirrored position of the batch,
    ``1 - w``: the images were blended with the same weights. At ``e = 0`` and ``w = 1`` the
    loss is exactly the plain sparse cross-entropy.

    Args:
        label_smoothing: a float in [0, 1) or a scalar float32 `keras.Variable`.
        mix_weight: None (no mixing), or the scalar variable a `MixBatch` layer writes.
        **kwargs: passed to `keras.losses.Loss` (name, reduction).
    """

    def __init__(self, label_smoothing: keras.Variable | float = 0.0,
                 mix_weight: keras.Variable | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("name", "recipe_cross_entropy")
        super().__init__(**kwargs)
        self.label_smoothing = label_smoothing
        self.mix_weight = mix_weight

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        loss = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
        if self.mix_weight is not None:
            weight = ops.cast(self.mix_weight, loss.dtype)
            partner = keras.losses.sparse_categorical_crossentropy(ops.flip(labels, 0), y_pred)
            loss = weight * loss + (1.0 - weight) * partner
        smoothing = ops.cast(self.label_smoothing, loss.dtype)
        uniform = ops.ones_like(y_pred) / y_pred.shape[-1]
        spread = keras.losses.categorical_crossentropy(uniform, y_pred)
        return (1.0 - smoothing) * loss + smoothing * spread

    def get_config(self) -> dict[str, Any]:
        # A saved model keeps the smoothing it had; the mix weight belongs to the training
        # step of this process and is not saved (recompile a loaded model to train it).
        config = super().get_config()
        config["label_smoothing"] = float(ops.convert_to_numpy(self.label_smoothing))
        return config
