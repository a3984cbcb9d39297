"""Argument checks that raise errors naming the argument, the value received and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not supported; choose one of: {allowed}.")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def check_fraction(name: str, value: Any, open_low: bool = False, open_high: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number in [0, 1] (ends optionally open)."""
    low, high = ("(" if open_low else "["), (")" if open_high else "]")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > 0 if open_low else value >= 0) and (value < 1 if open_high else value <= 1)
    if not ok:
        raise ValueError(f"{name} must be a number in {low}0, 1{high}; got {value!r}.")


def check_real(name: str, value: Any, strictly_positive: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number ``>= 0`` (or ``> 0``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (value > 0 if strictly_positive else value >= 0)):
        bound = "> 0" if strictly_positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a ``bool`` (``"no"`` or ``0`` would be misread)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}.")


def check_callable(name: str, value: Any, signature: str, optional: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` is callable (or ``None`` when ``optional``).

    ``signature`` is shown in the message, e.g. ``"(pl_module, batch) -> (logits, targets)"``:
    a string such as ``"my_module.fn"`` from a config file is not resolved here.
    """
    if value is None and optional:
        return
    if not callable(value):
        raise ValueError(
            f"{name} must be a callable {signature}"
            + (" or None" if optional else "")
            + f"; got {type(value).__name__} {value!r}."
        )


def check_partition(partition: Any, grid: tuple[int, ...]) -> tuple[int, ...]:
    """``partition`` as a tuple, or ``ValueError`` unless it gives an int ``>= 1`` per axis."""
    parts = tuple(partition) if isinstance(partition, Sequence) else None
    if (
        parts is None
        or len(parts) != len(grid)
        or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in parts)
    ):
        raise ValueError(
            f"partition must give an int >= 1 blocks for each of the {len(grid)} axes of "
            f"grid_shape={grid}; got {partition!r}."
        )
    return parts


def check_periodic(periodic: Any, grid: tuple[int, ...]) -> tuple[bool, ...]:
    """``periodic`` as a tuple (``None``: no axis), or ``ValueError`` unless a bool per axis."""
    if periodic is None:
        return (False,) * len(grid)
    if (
        not isinstance(periodic, Sequence)
        or len(periodic) != len(grid)
        or not all(isinstance(p, bool) for p in periodic)
    ):
        raise ValueError(
            f"periodic must be None or one bool per axis of grid_shape={grid}; got {periodic!r}."
        )
    return tuple(periodic)
