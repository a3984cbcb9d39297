"""Classification losses selectable by name (``loss=softmax`` / ``loss=stablemax``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from lightning_dyn._checks import check_choice
from lightning_dyn.functional.stablemax import stablemax_cross_entropy

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ClassificationLoss = Literal["softmax", "stablemax"]

CLASSIFICATION_LOSSES: dict[str, LossFn] = {
    "softmax": F.cross_entropy,
    # Computed in float64 whatever the logits' dtype, as the official loss.
    "stablemax": stablemax_cross_entropy,
}


def classification_loss(name: ClassificationLoss) -> LossFn:
    """The loss registered under ``name`` in :data:`CLASSIFICATION_LOSSES`."""
    check_choice("loss", name, CLASSIFICATION_LOSSES)
    return CLASSIFICATION_LOSSES[name]


def one_hot_square_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i ½ ||logits_i - onehot(y_i)||²``: the square loss of Cohen et al. (2103.00065).

    Summed over classes and averaged over examples, so its Hessian is ``JᵀJ / N`` plus the
    residual term, the convention of the edge-of-stability experiments.
    """
    one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return 0.5 * (logits - one_hot).pow(2).sum(dim=-1).mean()
