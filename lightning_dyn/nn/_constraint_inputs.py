"""The input checks of the hard-constraint layers, shared by ``HardConstraintLayer`` and
``HardConstraintMoE``: the basis ``(B, P, N)`` and the constraint data (leading dimension ``B``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lightning_dyn._checks import shape_of


def check_basis(basis: Any) -> None:
    """``ValueError`` unless ``basis`` is a floating ``(B, P, N)`` tensor with no empty axis."""
    if not isinstance(basis, Tensor) or basis.ndim != 3 or not basis.is_floating_point():
        raise ValueError(
            f"basis must be a floating (B, P, N) tensor of N basis functions on P grid points; "
            f"got {shape_of(basis)}"
            + (f" ({basis.dtype})" if isinstance(basis, Tensor) else "")
            + "."
        )
    if 0 in basis.shape:
        raise ValueError(f"basis must have B, P, N >= 1; got {tuple(basis.shape)}.")


def check_data(constraint_data: Any, batch: int) -> tuple[Tensor, ...]:
    """``constraint_data`` as a tuple, or ``ValueError`` unless its tensors lead with ``batch``."""
    if isinstance(constraint_data, Tensor) or not isinstance(constraint_data, Sequence):
        raise ValueError(
            "constraint_data must be a tuple of tensors with leading dimension B; got "
            f"{type(constraint_data).__name__}."
        )
    data = tuple(constraint_data)
    for i, d in enumerate(data):
        if not isinstance(d, Tensor) or d.ndim == 0 or d.shape[0] != batch:
            raise ValueError(
                f"constraint_data[{i}] must be a tensor with leading dimension B={batch} (the "
                f"batch size of basis); got {shape_of(d)}."
            )
    return data
