"""Build every validation message alike: name the key, echo the value, state what is allowed."""

from __future__ import annotations

import math
from typing import Any


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    return f"{left}{_bound(low, '-inf')}, {_bound(high, 'inf')}{right}"


def _bound(value: float | None, unbounded: str) -> str:
    if value is None:
        return unbounded
    # an int bound in full (a seed's 4294967295, not 4.29497e+09)
    return str(value) if isinstance(value, int) else f"{value:g}"


def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    where: str = "",
) -> int:
    """Return ``value`` if it is an int in ``[low, high]``; raise a message naming ``name`` if not.

    Raises:
        TypeError: ``value`` is not an int (bools are not accepted).
        ValueError: ``value`` is outside ``[low, high]``.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{prefix}{name!r} must be an integer; got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(
            f"{prefix}{name!r}={value!r} is out of range; expected an integer in "
            f"{_interval(low, high, False, False)}."
        )
    return value


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    where: str = "",
) -> float:
    """Return ``value`` as a float if it lies in the interval; raise a message naming ``name`` if not.

    Strings such as ``"1e-4"`` are accepted, because YAML 1.1 reads ``1e-4`` (no dot) as a string.

    Raises:
        TypeError: ``value`` is not a number.
        ValueError: ``value`` is NaN or outside the interval.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise TypeError(f"{prefix}{name!r} must be a number; got {value!r}.") from None
    if not _is_number(value):
        raise TypeError(f"{prefix}{name!r} must be a number; got {value!r}.")
    value = float(value)
    outside = math.isnan(value)
    if low is not None:
        outside |= value <= low if low_open else value < low
    if high is not None:
        outside |= value >= high if high_open else value > high
    if outside:
        raise ValueError(
            f"{prefix}{name!r}={value:g} is out of range; expected a number in "
            f"{_interval(low, high, low_open, high_open)}."
        )
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...], *, where: str = "") -> str:
    """Return ``value`` if it is one of ``choices``; raise a message listing them if not."""
    prefix = f"{where}: " if where else ""
    if value not in choices:
        raise ValueError(f"{prefix}{name!r}={value!r} is not allowed; expected one of: {', '.join(choices)}.")
    return value


def check_keys(section: str, given: Any, allowed: tuple[str, ...] | None, *, where: str = "") -> dict:
    """Return ``given`` as a dict if all its keys are allowed (any key when ``allowed`` is None)."""
    prefix = f"{where}: " if where else ""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise TypeError(f"{prefix}{section!r} must be a mapping; got {type(given).__name__} {given!r}.")
    unknown = [] if allowed is None else [k for k in given if k not in allowed]
    if unknown:
        raise ValueError(
            f"{prefix}unknown key {unknown[0]!r} in {section!r}. Valid keys: {', '.join(sorted(allowed))}."
        )
    return dict(given)
