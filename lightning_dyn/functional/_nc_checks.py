"""Argument checks shared by the neural-collapse modules; see ``functional.neural_collapse``."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dyn._checks import shape_of

F64 = torch.float64
"""Every statistic and metric is computed in float64 (see ``functional.neural_collapse``)."""


def check_matrix(name: str, x: object, rows: int | None = None, cols: int | None = None) -> None:
    """``ValueError`` unless ``x`` is a real 2-D floating tensor (of ``rows``/``cols`` if given)."""
    ok = isinstance(x, Tensor) and x.ndim == 2 and (x.is_floating_point() or x.is_complex())
    want = f"({'K' if rows is None else rows}, {'D' if cols is None else cols})"
    if (
        not ok
        or (rows is not None and x.shape[0] != rows)
        or (cols is not None and x.shape[1] != cols)
    ):
        dtype = f", dtype={x.dtype}" if isinstance(x, Tensor) else ""
        raise ValueError(
            f"{name} must be a 2-D floating tensor of shape {want}; got {shape_of(x)}{dtype}."
        )
    if x.is_complex():
        raise ValueError(f"{name} must be real; got dtype={x.dtype}.")


def check_classes(name: str, k: int) -> None:
    """``ValueError`` unless ``k >= 2`` classes: the metrics compare classes."""
    if k < 2:
        raise ValueError(f"{name} must hold at least 2 classes for this metric; got K={k}.")
