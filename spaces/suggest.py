"""Turn a `Space` into Optuna suggestions, and into KerasTuner `HyperParameters`."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from spaces.space import FloatParam, IntParam, Space


class SupportsSuggest(Protocol):
    """What `sample_params` needs of a trial: `optuna.Trial`, `optuna.trial.FixedTrial`..."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def sample_params(space: Space, trial: SupportsSuggest) -> dict[str, float | int]:
    """Ask ``trial`` for one value of every parameter and return the recipe values.

    A switchable parameter (``allow_off: true``) first asks for ``<name>_on``; when that is False
    the value is 0.0 and no ``<name>`` is suggested, so the sampler never models a value that
    had no effect.

    Returns:
        ``{name: value}`` for every parameter of the space, ready for `trainers.Recipe`.
    """
    values: dict[str, float | int] = {}
    for p in space.params:
        if isinstance(p, FloatParam):
            if p.off and not trial.suggest_categorical(p.switch, [True, False]):
                values[p.name] = 0.0
            else:
                values[p.name] = float(trial.suggest_float(p.name, p.low, p.high, log=p.log))
        else:
            values[p.name] = int(trial.suggest_int(p.name, p.low, p.high, step=p.step, log=p.log))
    return values


def values_from_params(space: Space, params: Mapping[str, Any]) -> dict[str, float | int]:
    """Return the recipe values that Optuna ``params`` (``trial.params``) stand for.

    Use it on a finished trial, e.g. ``values_from_params(space, study.best_trial.params)``.
    """
    return sample_params(space, _Replay(params))


def default_params(space: Space) -> dict[str, Any]:
    """Return Optuna ``params`` for the space's defaults, for ``study.enqueue_trial``."""
    out: dict[str, Any] = {}
    for p in space.params:
        if isinstance(p, FloatParam) and p.off:
            out[p.switch] = p.default is not None
            if p.default is not None:
                out[p.name] = p.default
        elif p.default is not None:
            out[p.name] = p.default
    return out


class _Replay:
    """A stand-in trial that answers every suggestion from recorded params."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = params

    def _get(self, name: str) -> Any:
        if name not in self._params:
            raise KeyError(f"parameter {name!r} is missing from {dict(self._params)!r}.")
        return self._params[name]

    def suggest_float(self, name, low, high, *, step=None, log=False):  # noqa: ANN001
        return self._get(name)

    def suggest_int(self, name, low, high, *, step=1, log=False):  # noqa: ANN001
        return self._get(name)

    def suggest_categorical(self, name, choices):  # noqa: ANN001
        return self._get(name)


def to_keras_tuner(space: Space) -> Any:
    """Return the space as KerasTuner ``HyperParameters`` (for side-by-side runs).

    A switchable parameter becomes ``hp.Boolean("<name>_on")`` with the value inside a
    conditional scope, mirroring `sample_params`; read values back with `values_from_keras_tuner`.
    """
    import keras_tuner  # imported here: spaces/ stays free of Keras unless this adapter is used

    hp = keras_tuner.HyperParameters()
    for p in space.params:
        if isinstance(p, FloatParam):
            sampling = "log" if p.log else "linear"
            if p.off:
                hp.Boolean(p.switch, default=p.default is not None)
                with hp.conditional_scope(p.switch, [True]):
                    hp.Float(p.name, p.low, p.high, sampling=sampling,
                             default=p.default if p.default is not None else p.low)
            else:
                hp.Float(p.name, p.low, p.high, sampling=sampling,
                         default=p.default if p.default is not None else p.low)
        else:
            # KerasTuner reads step as a factor under log sampling and rejects step=1; the
            # space allows log only with step 1, which KerasTuner spells step=None.
            hp.Int(p.name, p.low, p.high, step=None if p.log else p.step,
                   sampling="log" if p.log else "linear",
                   default=p.default if p.default is not None else p.low)
    return hp


def values_from_keras_tuner(space: Space, hp: Any) -> dict[str, float | int]:
    """Return the recipe values a KerasTuner ``HyperParameters`` object currently holds."""
    values: dict[str, float | int] = {}
    for p in space.params:
        if isinstance(p, FloatParam) and p.off and not hp.get(p.switch):
            values[p.name] = 0.0
        elif isinstance(p, IntParam):
            values[p.name] = int(hp.get(p.name))
        else:
            values[p.name] = float(hp.get(p.name))
    return values
