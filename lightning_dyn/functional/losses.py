"""The package's one registry of losses on logits, selectable by name.

Every loss here is a :data:`LossFn`, ``loss(logits, targets, reduction="mean") -> Tensor``,
with ``F.cross_entropy``'s shapes: logits ``(N, K)`` with class-index targets ``(N,)``, or
``(N, K, *)`` with ``(N, *)`` for per-position targets, and ``reduction`` one of ``"none"``,
``"mean"``, ``"sum"``. The names are the configs' ``loss=...`` vocabulary:

- ``"softmax"``: softmax cross-entropy, ``F.cross_entropy``;
- ``"stablemax"``: StableMax cross-entropy (arXiv 2501.04697), computed in float64;
- ``"square"``: ``½||logits - onehot(y)||²`` summed over classes (Cohen et al., 2103.00065).

The names say which output map the loss puts on the logits, so ``softmax`` (not
``cross_entropy``) sits next to ``stablemax``; there are no aliases. Recipes, callbacks
(``SoftmaxCollapseMonitor(loss=)``, ``SharpnessMonitor(loss_fn=)``,
``NeuralCollapseMonitor(loss=)``, ``OutlierPairDetector(loss_fn=)``) and the configs' top-level
``loss`` all read these names.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from lightning_dyn._checks import check_choice
from lightning_dyn.functional.stablemax import REDUCTIONS, stablemax_cross_entropy


class LossFn(Protocol):
    """``loss(logits, targets, reduction="mean") -> Tensor``, as ``F.cross_entropy``."""

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, /, *, reduction: str = "mean"
    ) -> torch.Tensor: ...


ClassificationLoss = Literal["softmax", "stablemax", "square"]
"""The registry's names."""


def one_hot_square_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """``½ ||logits_i - onehot(y_i)||²`` per example: the square loss of Cohen et al. (2103.00065).

    Summed over classes and (``reduction="mean"``) averaged over examples, so its Hessian is
    ``JᵀJ / N`` plus the residual term, the convention of the edge-of-stability experiments.
    Logits ``(N, K)`` or, as ``F.cross_entropy``, ``(N, K, *)`` with targets ``(N, *)``.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    scores = logits.movedim(1, -1) if logits.ndim > 2 else logits
    one_hot = F.one_hot(targets, scores.shape[-1]).to(scores.dtype)
    losses = 0.5 * (scores - one_hot).pow(2).sum(dim=-1)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


CLASSIFICATION_LOSSES: dict[str, LossFn] = {
    "softmax": F.cross_entropy,
    # Computed in float64 whatever the logits' dtype, as the official loss.
    "stablemax": stablemax_cross_entropy,
    "square": one_hot_square_loss,
}


def classification_loss(loss: ClassificationLoss | LossFn, name: str = "loss") -> LossFn:
    """The loss registered under ``loss`` in :data:`CLASSIFICATION_LOSSES`, or ``loss`` itself
    when it is a callable :data:`LossFn`; ``name`` is the argument named in the error."""
    if callable(loss):
        return loss
    check_choice(name, loss, CLASSIFICATION_LOSSES)
    return CLASSIFICATION_LOSSES[loss]
