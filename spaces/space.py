"""Typed, validated search-space entries: what each regularization parameter may take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spaces.checks import check_float, check_int, check_keys
from spaces.strengths import STRENGTHS

# What each searchable recipe field may be, whatever a space file says (`spaces.strengths`).
FLOAT_DOMAINS: dict[str, tuple[float, float | None, bool, bool]] = {
    # name: (low, high, low_open, high_open)
    s.name: (s.low, s.high, s.low_open, s.high_open)
    for s in STRENGTHS if s.searchable and s.kind is float
}
INT_DOMAINS: dict[str, tuple[int, int | None]] = {
    s.name: (int(s.low), s.high) for s in STRENGTHS if s.searchable and s.kind is int
}
SEARCHABLE = tuple(FLOAT_DOMAINS) + tuple(INT_DOMAINS)
OFF = "off"


@dataclass(frozen=True)
class FloatParam:
    """A float searched in ``[low, high]``, on a log scale if ``log``.

    ``off=True`` (``allow_off: true`` in a space file) adds a switch: the sampler first decides whether the regularizer is on at
    all (Optuna parameter ``<name>_on``), so "no L1" is a point of the space, not log(0).
    """

    name: str
    low: float
    high: float
    log: bool = False
    off: bool = False
    default: float | None = None  # None with off=True means the default is "off"

    @property
    def switch(self) -> str:
        return f"{self.name}_on"


@dataclass(frozen=True)
class IntParam:
    """An integer searched in ``[low, high]`` with ``step``, on a log scale if ``log``."""

    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False
    default: int | None = None


Param = FloatParam | IntParam


@dataclass(frozen=True)
class Space:
    """An ordered set of parameters; the order is the order of suggestions."""

    params: tuple[Param, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        """Return the default value of every parameter, 0.0 for a switchable one that is off."""
        out: dict[str, Any] = {}
        for p in self.params:
            if isinstance(p, FloatParam):
                out[p.name] = 0.0 if p.default is None and p.off else p.default
            else:
                out[p.name] = p.default
        return {k: v for k, v in out.items() if v is not None}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the space as plain JSON-serialisable values (recorded with every study)."""
        out = {}
        for p in self.params:
            entry = {"type": "float" if isinstance(p, FloatParam) else "int"}
            entry.update({k: v for k, v in vars(p).items() if k != "name"})
            out[p.name] = entry
        return out


def parse_param(name: str, entry: Any, *, where: str) -> Param:
    """Check one space entry and return it as a typed parameter.

    Raises:
        ValueError: unknown name or key, low > high, log scale with low <= 0, value outside
            what the recipe field allows.
        TypeError: a value of the wrong type.
    """
    if name not in SEARCHABLE:
        raise ValueError(
            f"{where}: unknown parameter {name!r} in 'space'. Searchable: {', '.join(SEARCHABLE)}."
        )
    key = f"space.{name}"
    if not isinstance(entry, dict):
        raise TypeError(f"{where}: {key!r} must be a mapping with type, low, high; got {entry!r}.")
    kind = entry.get("type", "int" if name in INT_DOMAINS else "float")
    if name in INT_DOMAINS and kind != "int" or name in FLOAT_DOMAINS and kind != "float":
        expected = "int" if name in INT_DOMAINS else "float"
        raise ValueError(f"{where}: '{key}.type'={kind!r} is not allowed; {name!r} is a {expected}.")
    for required in ("low", "high"):
        if required not in entry:
            raise ValueError(f"{where}: {key!r} needs {required!r}.")

    if kind == "float":
        entry = check_keys(key, entry, ("type", "low", "high", "log", "allow_off", "default"), where=where)
        dom_low, dom_high, low_open, high_open = FLOAT_DOMAINS[name]
        low = check_float(f"{key}.low", entry["low"], low=dom_low, high=dom_high,
                          low_open=low_open, high_open=high_open, where=where)
        high = check_float(f"{key}.high", entry["high"], low=dom_low, high=dom_high,
                           low_open=low_open, high_open=high_open, where=where)
        log = _check_bool(f"{key}.log", entry.get("log", False), where)
        off = _check_bool(f"{key}.allow_off", entry.get("allow_off", False), where)
        _check_bounds(key, low, high, log, where)
        default = entry.get("default")
        # YAML 1.1 reads a bare `off` as False, so both spellings mean "off".
        if default is False or default == OFF:
            if not off:
                raise ValueError(
                    f"{where}: '{key}.default' is off but '{key}.allow_off' is not true."
                )
            default = None
        elif default is not None:
            default = check_float(f"{key}.default", default, low=low, high=high, where=where)
        return FloatParam(name, low, high, log=log, off=off, default=default)

    entry = check_keys(key, entry, ("type", "low", "high", "step", "log", "default"), where=where)
    dom_low, dom_high = INT_DOMAINS[name]
    low = check_int(f"{key}.low", entry["low"], low=dom_low, high=dom_high, where=where)
    high = check_int(f"{key}.high", entry["high"], low=dom_low, high=dom_high, where=where)
    step = check_int(f"{key}.step", entry.get("step", 1), low=1, where=where)
    log = _check_bool(f"{key}.log", entry.get("log", False), where)
    if log and step != 1:
        raise ValueError(f"{where}: {key!r} uses log=True, so step must be 1; got step={step}.")
    _check_bounds(key, low, high, log, where)
    default = entry.get("default")
    if default is not None:
        default = check_int(f"{key}.default", default, low=low, high=high, where=where)
    return IntParam(name, low, high, step=step, log=log, default=default)


def _check_bool(key: str, value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {key!r} must be true or false; got {value!r}.")
    return value


def _check_bounds(key: str, low: float, high: float, log: bool, where: str) -> None:
    if low > high:
        raise ValueError(f"{where}: {key!r} has low={low:g} > high={high:g}; expected low <= high.")
    if log and low <= 0:
        raise ValueError(
            f"{where}: {key!r} uses log=True, so low must be > 0; got low={low:g}. "
            f"Use a positive low (e.g. 1e-6) with allow_off: true for 'no penalty', or log: false."
        )
