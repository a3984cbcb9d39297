"""Argument checks that raise errors naming the argument, the value received and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import Tensor

SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds ``torch.Generator.manual_seed`` accepts, ends included."""


def shape_of(value: Any) -> Any:
    """For a message: the shape of a tensor received, else the name of its type."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    """``value`` is an ``int`` (not a bool) in ``[low, high]`` (``None``: that end is open)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not supported; choose one of: {allowed}.")


def check_int(
    name: str, value: Any, low: int | None = None, high: int | None = None, note: str = ""
) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) in ``[low, high]``.

    ``None`` leaves that end open; ``note`` (e.g. ``" (a class index)"``) follows the bounds.
    """
    if not _is_int(value, low, high):
        if low is not None and high is not None:
            bounds = f" in [{low}, {high}]"
        else:
            bounds = f" >= {low}" if low is not None else f" <= {high}" if high is not None else ""
        raise ValueError(f"{name} must be an integer{bounds}{note}; got {value!r}.")


def check_positive_int(name: str, value: Any, minimum: int = 1, note: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) ``>= minimum``."""
    check_int(name, value, low=minimum, note=note)


def check_seed(value: Any, name: str = "seed") -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` that ``torch.Generator`` accepts."""
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer; got {value!r}.")
    if not _is_int(value, *SEED_RANGE):
        raise ValueError(f"{name} must be an integer in [-2**63, 2**64 - 1]; got {value!r}.")


def check_ints(
    name: str, value: Any, minimum: int = 0, *, nonempty: bool = False, optional: bool = False
) -> tuple[int, ...] | None:
    """``value`` as a tuple, or ``ValueError`` unless a sequence of ints ``>= minimum``.

    ``nonempty``: at least one; ``optional``: ``None`` is allowed (and returned).
    """
    if value is None and optional:
        return None
    items = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if items is None or (nonempty and not items) or not all(_is_int(v, minimum) for v in items):
        raise ValueError(
            f"{name} must be {'None or ' if optional else ''}a {'non-empty ' if nonempty else ''}"
            f"sequence of ints >= {minimum}; got {value!r}."
        )
    return items


def check_fraction(name: str, value: Any, open_low: bool = False, open_high: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number in [0, 1] (ends optionally open)."""
    low, high = ("(" if open_low else "["), (")" if open_high else "]")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > 0 if open_low else value >= 0) and (value < 1 if open_high else value <= 1)
    if not ok:
        raise ValueError(f"{name} must be a number in {low}0, 1{high}; got {value!r}.")


def check_real(
    name: str,
    value: Any,
    strictly_positive: bool = False,
    *,
    any_sign: bool = False,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number ``>= 0`` (or ``> 0``).

    ``any_sign``: any finite number; ``optional``: ``None`` is allowed too.
    """
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (any_sign or (value > 0 if strictly_positive else value >= 0))):
        bound = "" if any_sign else " > 0" if strictly_positive else " >= 0"
        none = "None or " if optional else ""
        raise ValueError(f"{name} must be {none}a finite number{bound}; got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a ``bool`` (``"no"`` or ``0`` would be misread)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}.")


def check_callable(name: str, value: Any, signature: str = "", optional: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` is callable (or ``None`` when ``optional``).

    ``signature`` is shown in the message, e.g. ``"(pl_module, batch) -> (logits, targets)"``:
    a string such as ``"my_module.fn"`` from a config file is not resolved here.
    """
    if value is None and optional:
        return
    if not callable(value):
        raise ValueError(
            f"{name} must be "
            + (f"a callable {signature}" if signature else "callable")
            + (" or None" if optional else "")
            + f"; got {type(value).__name__} {value!r}."
        )


def check_float_dtype(name: str, value: Any, optional: bool = False, hint: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is a floating ``torch.dtype`` (or ``None``).

    ``hint`` (e.g. ``" (e.g. torch.bfloat16)"``) follows "a floating torch dtype" in the message.
    """
    if value is None and optional:
        return
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be a floating torch dtype{hint}{none}; got {value!r}.")


def check_vector(name: str, value: Any, size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is a 1-D tensor (of ``size`` entries if given)."""
    if size is None and not (isinstance(value, Tensor) and value.ndim == 1):
        raise ValueError(f"{name} must be a 1-D tensor; got {shape_of(value)}.")
    if size is not None and not (isinstance(value, Tensor) and tuple(value.shape) == (size,)):
        raise ValueError(f"{name} must be a tensor of shape ({size},); got {shape_of(value)}.")


def check_partition(partition: Any, grid: tuple[int, ...]) -> tuple[int, ...]:
    """``partition`` as a tuple, or ``ValueError`` unless it gives an int ``>= 1`` per axis."""
    parts = tuple(partition) if isinstance(partition, Sequence) else None
    if parts is None or len(parts) != len(grid) or not all(_is_int(m, 1) for m in parts):
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
