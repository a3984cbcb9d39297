"""NC1, within-class variability collapse: Papyan et al.'s ``Tr(Σ_W Σ_B^+) / K``, Tirer et al.'s
trace ratio and Galanti et al.'s CDNV, all from ``ClassStatistics``."""

from __future__ import annotations

import torch

from lightning_dyn._checks import check_fraction
from lightning_dyn.functional._nc_checks import check_classes
from lightning_dyn.functional._nc_statistics import (
    ClassStatistics,
    between_class_covariance,
    centred_means,
    check_stats,
    class_variances,
    shifted_means,
    within_class_covariance,
)

DEFAULT_RCOND = 1e-12
"""Eigenvalues of ``Σ_B`` below ``rcond`` times the largest are treated as 0 in ``Σ_B^+``."""


def nc1(stats: ClassStatistics, rcond: float = DEFAULT_RCOND) -> float:
    """Within-class variability relative to between-class: ``(1/K) Tr(Σ_W Σ_B^+)``.

    ``Σ_B^+`` is formed from the thin SVD of the ``(K, D)`` centred means ``X`` (``Σ_B = XᵀX/K``),
    not by inverting ``Σ_B``: at most ``K - 1`` directions are kept (the centred means sum to 0,
    so that is ``Σ_B``'s rank), and of those, eigenvalues of ``Σ_B`` below ``rcond`` times the
    largest are treated as 0, like ``np.linalg.pinv(Σ_B, rcond)``. The rank cap matters: with
    features far from the origin the null direction carries rounding noise that a plain
    ``pinv`` with a tiny ``rcond`` would invert.

    Args:
        stats: Statistics of at least 2 classes, none empty.
        rcond: Relative eigenvalue cut-off in ``[0, 1)``.

    Returns:
        NC1 (0 at exact collapse).
    """
    check_fraction("rcond", rcond, open_high=True)
    x = centred_means(stats)
    k = x.shape[0]
    check_classes("stats", k)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    eig = s * s / k  # eigenvalues of Σ_B, descending
    keep = eig > rcond * eig[0]
    keep[k - 1 :] = False
    if not bool(keep.any()):
        raise ValueError("stats has all class means equal: Σ_B = 0, NC1 is undefined.")
    v = vh[keep]  # (r, D) eigenvectors of Σ_B
    sw = within_class_covariance(stats)
    return float(((v @ sw * v).sum(dim=1) / eig[keep]).sum() / k)


def nc1_trace_ratio(stats: ClassStatistics) -> float:
    """Tirer et al.'s variant ``Tr(Σ_W) / Tr(Σ_B)``: no inverse, stable for large ``D``."""
    check_classes("stats", check_stats(stats).num_classes)
    tb = torch.trace(between_class_covariance(stats))
    if not bool(tb > 0):
        raise ValueError("stats has all class means equal: Tr(Σ_B) = 0, the ratio is undefined.")
    return float(torch.trace(within_class_covariance(stats)) / tb)


def cdnv(stats: ClassStatistics) -> float:
    """Mean class-distance normalised variance over class pairs ``k < l`` (Galanti et al.).

    ``(σ_k² + σ_l²) / (2 ||μ_k - μ_l||²)`` with ``σ_k² = E_k ||h - μ_k||²``; ``O(K² D)`` and no
    ``D x D`` matrix.

    Raises:
        ValueError: If two classes have the same mean (the pair's CDNV is infinite).
    """
    m = shifted_means(stats)
    k = m.shape[0]
    check_classes("stats", k)
    var = class_variances(stats)
    i, j = torch.triu_indices(k, k, offset=1, device=m.device)
    dist2 = ((m[i] - m[j]) ** 2).sum(dim=1)
    if bool((dist2 == 0).any()):
        p = int((dist2 == 0).nonzero()[0])
        raise ValueError(
            f"stats has classes {int(i[p])} and {int(j[p])} with the same mean; CDNV is infinite."
        )
    return float(((var[i] + var[j]) / (2 * dist2)).mean())
