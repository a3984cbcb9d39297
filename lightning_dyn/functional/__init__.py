"""Pure torch maths: no Lightning, no logging, no state."""

from lightning_dyn.functional.classification_losses import (
    CLASSIFICATION_LOSSES,
    classification_loss,
    one_hot_square_loss,
)
from lightning_dyn.functional.clustering import kmeans
from lightning_dyn.functional.hvp import HessianOperator, measuring
from lightning_dyn.functional.lanczos import (
    EigenResult,
    SpectralDensity,
    TraceResult,
    hessian_eigenvalues,
    hessian_spectral_density,
    hessian_trace,
)
from lightning_dyn.functional.lmo import (
    NS_COEFFICIENTS,
    SPECTRAL_SCALES,
    column_normalize,
    l1_norm,
    newton_schulz,
    nuclear_norm,
    nuclear_norm_estimate,
    row_normalize,
    sign_lmo,
    spectral_dual_norm,
    spectral_lmo,
    spectral_scale,
)
from lightning_dyn.functional.opposing_signals import (
    antiphase_correlation,
    direction_alignment,
    group_gradient_cosine,
    group_losses,
    mean_loss_gradient,
    per_example_loss,
    sketch_gradient,
    top_loss_changes,
)
from lightning_dyn.functional.perp_grad import nlm_cosine, nlm_cosines, perp_grad_
from lightning_dyn.functional.softmax_collapse import (
    softmax_collapse_fraction,
    softmax_collapse_mask,
    zero_loss_fraction,
)
from lightning_dyn.functional.stability import (
    OPTIMIZER_KINDS,
    adam_preconditioner,
    stability_threshold,
)
from lightning_dyn.functional.stablemax import (
    log_stablemax,
    stablemax,
    stablemax_cross_entropy,
    stablemax_scores,
)

__all__ = [
    "CLASSIFICATION_LOSSES",
    "NS_COEFFICIENTS",
    "OPTIMIZER_KINDS",
    "SPECTRAL_SCALES",
    "EigenResult",
    "HessianOperator",
    "SpectralDensity",
    "TraceResult",
    "adam_preconditioner",
    "antiphase_correlation",
    "classification_loss",
    "column_normalize",
    "direction_alignment",
    "group_gradient_cosine",
    "group_losses",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "hessian_trace",
    "kmeans",
    "l1_norm",
    "log_stablemax",
    "mean_loss_gradient",
    "measuring",
    "newton_schulz",
    "nlm_cosine",
    "nlm_cosines",
    "nuclear_norm",
    "nuclear_norm_estimate",
    "one_hot_square_loss",
    "per_example_loss",
    "perp_grad_",
    "row_normalize",
    "sign_lmo",
    "sketch_gradient",
    "softmax_collapse_fraction",
    "softmax_collapse_mask",
    "spectral_dual_norm",
    "spectral_lmo",
    "spectral_scale",
    "stability_threshold",
    "stablemax",
    "stablemax_cross_entropy",
    "stablemax_scores",
    "top_loss_changes",
    "zero_loss_fraction",
]
