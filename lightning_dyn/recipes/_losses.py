"""Classification losses a recipe can switch between by name (``loss=softmax``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lightning_dyn._checks import check_choice

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: dict[str, LossFn] = {
    "softmax": F.cross_entropy,
}


def resolve_loss(name: str) -> LossFn:
    """The loss function registered under ``name`` in :data:`LOSSES`."""
    check_choice("loss", name, LOSSES)
    return LOSSES[name]
