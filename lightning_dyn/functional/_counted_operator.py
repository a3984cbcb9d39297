"""The operator as the spectral functions see it: counted, checked, with a working dtype and
device; and the float64 scalar helpers. See ``functional.lanczos`` for the conventions."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from lightning_dyn._checks import check_float_dtype, check_positive_int, shape_of
from lightning_dyn.functional._autocast import autocast_off
from lightning_dyn.functional.hvp import HessianOperator, measuring

Operator = HessianOperator | Callable[[Tensor], Tensor]


def dot64(x: Tensor, y: Tensor) -> float:
    """``x · y`` accumulated in float64."""
    return float(torch.dot(x.double(), y.double()))


def norm64(x: Tensor) -> float:
    """``||x||`` accumulated in float64."""
    return float(torch.linalg.vector_norm(x.double()))


class CountedOperator:
    """A counted, checked ``v -> H v`` with its dimension, working dtype and device."""

    def __init__(
        self,
        operator: Any,
        dim: int | None,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
        v0: Tensor | None = None,
    ) -> None:
        if not callable(operator):
            raise ValueError(
                f"operator must be a HessianOperator or a callable v -> H v; got "
                f"{type(operator).__name__}."
            )
        own = getattr(operator, "dim", None)
        if dim is None:
            dim = own
        if dim is None:
            raise ValueError(
                "dim must be given for an operator without a dim attribute (a plain callable)."
            )
        check_positive_int("dim", dim)
        if own is not None and own != dim:
            raise ValueError(f"dim must match operator.dim ({own}) when both are given; got {dim}.")
        if dtype is None:
            dtype = getattr(operator, "dtype", None)
            if not isinstance(dtype, torch.dtype) and isinstance(v0, Tensor):
                dtype = v0.dtype
        if not isinstance(dtype, torch.dtype):
            dtype = torch.get_default_dtype()
        check_float_dtype("dtype", dtype)
        if device is None:
            device = getattr(operator, "device", None)
            if not isinstance(device, torch.device | str) and isinstance(v0, Tensor):
                device = v0.device
        self.fn = operator
        self.dim = int(dim)
        self.dtype = dtype
        self.device = torch.device("cpu" if device is None else device)
        self.eps = torch.finfo(dtype).eps
        self.count = 0
        self.model = operator.model if isinstance(operator, HessianOperator) else None

    def __call__(self, v: Tensor) -> Tensor:
        out = self.fn(v.contiguous())
        self.count += 1
        if not isinstance(out, Tensor) or tuple(out.shape) != (self.dim,):
            raise ValueError(
                f"operator must return a tensor of shape ({self.dim},) (the input's); got "
                f"{shape_of(out)}."
            )
        return out.detach().to(self.device, self.dtype)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """No graph, autocast off (reorthogonalisation in half precision would be useless),
        and the model in :func:`measuring` mode for a ``HessianOperator``."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(autocast_off(self.device))
            if self.model is not None:
                stack.enter_context(measuring(self.model))
            yield

    def finite(self, *values: float) -> None:
        if not all(math.isfinite(x) for x in values):
            raise FloatingPointError(
                f"the operator returned non-finite values (product {self.count}); is the loss "
                f"finite?"
            )

    def gaussian(self, gen: torch.Generator) -> Tensor:
        return torch.randn(self.dim, generator=gen, dtype=torch.float64).to(self.device, self.dtype)

    def rademacher(self, gen: torch.Generator) -> Tensor:
        bits = torch.randint(0, 2, (self.dim,), generator=gen, dtype=torch.int8)
        return bits.to(self.device, self.dtype).mul_(2).sub_(1)
