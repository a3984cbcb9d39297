"""NC3 (self-duality: classifier rows align with the class means) and NC4 (the classifier
acts as a nearest-class-mean rule)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_dyn._checks import shape_of
from lightning_dyn.functional._nc_checks import F64, check_classes, check_matrix
from lightning_dyn.functional._nc_statistics import (
    ClassStatistics,
    centred_means,
    check_stats,
    class_means,
)


def nc3(
    classifier: Tensor,
    stats: ClassStatistics,
    center: bool = True,
    mean_scale: Tensor | None = None,
) -> float:
    """Self-duality: ``||Wᵀ/||W||_F - M/||M||_F||_F²`` (squared, as in Papyan et al.).

    Args:
        classifier: ``(K, D)`` classifier weight ``W``, one row per class.
        stats: Statistics of the same ``K`` classes and ``D`` features.
        center: Compare with the centred means ``μ_k - μ_G`` (ETF target) or, if False, the
            uncentred means (bias-free orthogonal and imbalanced targets).
        mean_scale: Optional ``(K,)`` factor for each class mean before the comparison. Dang et
            al.'s imbalanced optimum has ``w_k ∝ sqrt(n_k) μ_k``: pass ``stats.counts.sqrt()``
            (with ``center=False``) for it, as ``neural_collapse_metrics`` does.

    Returns:
        A value in ``[0, 4]``, 0 when the classifier rows are the (scaled) means up to a
        common factor.
    """
    check_stats(stats)
    check_matrix("classifier", classifier, stats.num_classes, stats.dim)
    m = centred_means(stats) if center else class_means(stats)
    if mean_scale is not None:
        if not isinstance(mean_scale, Tensor) or tuple(mean_scale.shape) != (stats.num_classes,):
            raise ValueError(
                f"mean_scale must be a tensor of shape ({stats.num_classes},) (K,); got "
                f"{shape_of(mean_scale)}."
            )
        m = m * mean_scale.to(F64).to(m.device)[:, None]
    w = classifier.detach().to(F64).to(m.device)
    wn, mn = torch.linalg.matrix_norm(w), torch.linalg.matrix_norm(m)
    if not bool(wn > 0) or not bool(mn > 0):
        zero = "classifier" if not bool(wn > 0) else "the class means"
        raise ValueError(f"{zero} are all zero; NC3 is undefined.")
    return float(torch.linalg.matrix_norm(w / wn - m / mn) ** 2)


# --- NC4 --------------------------------------------------------------------------------------


@torch.no_grad()
def nc4_mismatches(
    features: Tensor,
    logits_or_classifier: Tensor | Sequence[Tensor | None],
    means: Tensor,
) -> tuple[Tensor, Tensor]:
    """Count examples where the classifier and the nearest class mean disagree.

    The classifier's class is ``argmax_k (w_k·h + b_k)``; the nearest-class-mean class is
    ``argmin_k ||h - μ_k||`` (ties: the lower class index, for both). The means must be fixed
    before the pass: from a previous pass over the same data, or the previous evaluation's
    ``class_means`` (then NC4 lags by one evaluation).

    Args:
        features: ``(N, D)`` features.
        logits_or_classifier: ``(N, K)`` logits, or a pair ``(W, b)`` with ``W`` ``(K, D)`` and
            ``b`` ``(K,)`` or ``None`` (logits are then ``h Wᵀ + b``, in float64).
        means: ``(K, D)`` class means.

    Returns:
        ``(mismatches, count)``: 0-dim int64 tensors, to sum across batches and ranks before
        ``nc4``.
    """
    check_matrix("features", features)
    n, d = features.shape
    check_matrix("means", means, cols=d)
    k = means.shape[0]
    check_classes("means", k)
    h = features.detach().to(F64)
    mu = means.detach().to(F64).to(h.device)
    if isinstance(logits_or_classifier, Tensor):
        check_matrix("logits_or_classifier", logits_or_classifier, n, k)
        logits = logits_or_classifier.detach().to(h.device)
    elif isinstance(logits_or_classifier, Sequence) and len(logits_or_classifier) == 2:
        w, b = logits_or_classifier
        check_matrix("logits_or_classifier[0] (W)", w, k, d)
        logits = h @ w.detach().to(F64).to(h.device).T
        if b is not None:
            if not isinstance(b, Tensor) or tuple(b.shape) != (k,):
                raise ValueError(
                    f"logits_or_classifier[1] (b) must be None or a tensor of shape ({k},); got "
                    f"{shape_of(b)}."
                )
            logits = logits + b.detach().to(F64).to(h.device)
    else:
        raise ValueError(
            "logits_or_classifier must be an (N, K) tensor of logits or a pair (W, b); got "
            f"{type(logits_or_classifier).__name__}."
        )
    # ||h - μ||² = ||h||² - 2 h·μ + ||μ||²; the ||h||² term does not change the argmin. Centre
    # first so that a large common offset does not swamp the differences.
    c = mu.mean(dim=0)
    hc, mc = h - c, mu - c
    nearest = ((mc * mc).sum(dim=1) - 2 * hc @ mc.T).argmin(dim=1)
    mismatches = (logits.argmax(dim=1) != nearest).sum()
    return mismatches.to(torch.int64), torch.tensor(n, dtype=torch.int64, device=h.device)


def nc4(mismatches: Tensor | int, count: Tensor | int) -> float:
    """Fraction of examples where classifier and nearest class mean disagree (0 at collapse)."""
    m, c = int(mismatches), int(count)
    if c <= 0 or not 0 <= m <= c:
        raise ValueError(f"need 0 <= mismatches <= count and count > 0; got {m} and {c}.")
    return m / c
