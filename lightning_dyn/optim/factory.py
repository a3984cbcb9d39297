"""How an optimizer meets a module: the one rule the recipes and the CLI follow."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
"""``module -> Optimizer``: what a recipe's ``optimizer`` argument is, e.g.
``functools.partial(LANTON.from_module, lr=0.02)`` or ``lambda m: SGD(m.parameters(), lr=0.1)``."""


def takes_parameters(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a torch optimizer class, or a ``functools.partial`` of one (what a
    hydra ``_partial_: true`` config of ``torch.optim.AdamW`` instantiates to)."""
    target = optimizer.func if isinstance(optimizer, functools.partial) else optimizer
    return isinstance(target, type) and issubclass(target, torch.optim.Optimizer)


def build_optimizer(optimizer: Any, module: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``module``: ``optimizer(module.parameters())`` for a torch optimizer
    class or a partial of one (:func:`takes_parameters`), else ``optimizer(module)``.

    So a hydra ``_partial_`` torch optimizer gets the parameters and everything else (an
    :data:`OptimizerFactory`, e.g. a partial of :meth:`LANTON.from_module`, which groups the
    parameters by module type and name) gets the module.
    """
    return optimizer(module.parameters() if takes_parameters(optimizer) else module)
