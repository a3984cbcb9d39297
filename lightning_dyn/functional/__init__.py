"""Pure torch maths: no Lightning, no logging, no state."""

from lightning_dyn.functional.classification_losses import (
    CLASSIFICATION_LOSSES,
    classification_loss,
)
from lightning_dyn.functional.perp_grad import nlm_cosine, nlm_cosines, perp_grad_
from lightning_dyn.functional.softmax_collapse import (
    softmax_collapse_fraction,
    softmax_collapse_mask,
    zero_loss_fraction,
)
from lightning_dyn.functional.stablemax import (
    log_stablemax,
    stablemax,
    stablemax_cross_entropy,
    stablemax_scores,
)

__all__ = [
    "CLASSIFICATION_LOSSES",
    "classification_loss",
    "log_stablemax",
    "nlm_cosine",
    "nlm_cosines",
    "perp_grad_",
    "softmax_collapse_fraction",
    "softmax_collapse_mask",
    "stablemax",
    "stablemax_cross_entropy",
    "stablemax_scores",
    "zero_loss_fraction",
]
