"""Classification losses selectable by name (``loss=softmax`` / ``loss=stablemax``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lightning_dyn._checks import check_choice
from lightning_dyn.functional.stablemax import stablemax_cross_entropy

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CLASSIFICATION_LOSSES: dict[str, LossFn] = {
    "softmax": F.cross_entropy,
    # Computed in float64 whatever the logits' dtype, as the official loss.
    "stablemax": stablemax_cross_entropy,
}


def classification_loss(name: str) -> LossFn:
    """The loss registered under ``name`` in :data:`CLASSIFICATION_LOSSES`."""
    check_choice("loss", name, CLASSIFICATION_LOSSES)
    return CLASSIFICATION_LOSSES[name]
