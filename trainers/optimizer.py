"""Adam with decoupled weight decay (AdamW) whose strength is a variable of the optimizer.

Keras 3's own ``weight_decay`` is a Python float that the train step reads while it is traced:
on JAX and under XLA the value is baked into the compiled step, and a model compiled with
``weight_decay=None`` (off) has no decay in its step at all, so changing the attribute later
does nothing and raises no error. `VariableAdamW` keeps the strength in an optimizer variable
instead. Optimizer variables are state that every backend passes into the compiled step (the
learning rate travels the same way), so ``assign`` changes the decay between trials without
retracing, and 0 switches it off.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="regsearch")
class VariableAdamW(keras.optimizers.Adam):
    """Adam plus decoupled weight decay: before each Adam step, ``w <- w - lr * wd * w``.

    The same rule and scale as `keras.optimizers.AdamW` and ``torch.optim.AdamW`` (the decay
    per step is ``learning_rate * weight_decay``), so ``weight_decay=0.05`` means what it
    means there. The decay does not enter the loss, so the reported loss is unchanged.

    Only kernels decay (variables of two or more dimensions: Dense and Conv kernels), not
    biases or batch-norm scales and offsets, which is the usual AdamW practice (nanoGPT,
    timm) and the same set of variables the L1/L2 penalty acts on. At strength 0 the step is
    exactly Adam's.

    Args:
        learning_rate: Adam's learning rate.
        weight_decay: initial decoupled weight decay, >= 0.
        **kwargs: passed to `keras.optimizers.Adam` (except its own ``weight_decay``).

    Raises:
        ValueError: if weight_decay is negative or not finite.
    """

    def __init__(self, learning_rate: float = 1e-3, weight_decay: float = 0.0,
                 **kwargs: Any) -> None:
        value = float(weight_decay)
        if not (np.isfinite(value) and value >= 0.0):
            raise ValueError(
                f"VariableAdamW: 'weight_decay'={weight_decay!r} must be a finite float >= 0."
            )
        # Adam's own float weight_decay stays None: this class applies the decay itself.
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._decay = self.add_variable(
            shape=(), initializer=keras.initializers.Constant(value), dtype="float32",
            name="decoupled_weight_decay",
        )

    @property
    def decay_variable(self) -> keras.Variable:
        """The variable holding the decoupled weight decay (assign to it to change it)."""
        return self._decay

    @property
    def decoupled_weight_decay(self) -> float:
        return float(ops.convert_to_numpy(self._decay))

    def _apply_weight_decay(self, variables):
        # Replaces Keras' float-driven decay (and the PyTorch backend's fused one) with the
        # same update driven by the variable; plain keras.ops, so it traces on every backend.
        decay = ops.cast(self._decay, "float32") * ops.cast(self.learning_rate, "float32")
        for variable in variables:
            if len(variable.shape) >= 2:
                variable.assign(variable - variable * ops.cast(decay, variable.dtype))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["weight_decay"] = self.decoupled_weight_decay
        return config


def set_weight_decay(optimizer: keras.optimizers.Optimizer, value: float) -> None:
    """Set the decoupled weight decay of a `VariableAdamW`.

    Raises:
        ValueError: if ``value`` > 0 and the optimizer has no variable for it.
    """
    if isinstance(optimizer, VariableAdamW):
        optimizer.decay_variable.assign(np.asarray(value, dtype="float32"))
    elif value > 0:
        raise ValueError(
            f"optimizer {type(optimizer).__name__} cannot apply weight_decay={value!r}; "
            "compile the model with trainers.reuse.compile_model (VariableAdamW)."
        )
