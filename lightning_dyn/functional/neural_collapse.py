"""Neural collapse: streaming class statistics and the NC1-NC4 metrics, in float64.

Papyan, Han & Donoho, "Prevalence of Neural Collapse during the terminal phase of deep learning
training", arXiv 2008.08186: late in training the penultimate features ``h`` of each class
collapse to their class mean (NC1), the centred class means form a simplex equiangular tight
frame (NC2), the classifier rows align with them (NC3) and the classifier acts as a
nearest-class-mean rule (NC4). Tirer, Huang & Niles-Weed, arXiv 2210.16658, use the trace ratio
``Tr(Σ_W) / Tr(Σ_B)``; Galanti et al. (arXiv 2112.15121) the class-distance normalised variance
(CDNV), which needs no ``D x D`` inverse. The geometry a network collapses *to* depends on the
head and the loss: with a bias (or cross-entropy) the centred means approach a simplex ETF;
bias-free MSE on balanced classes gives an orthogonal frame of the uncentred means; bias-free
MSE on imbalanced classes gives orthogonal means whose lengths depend on the class sizes (Dang et
al., arXiv 2301.00437). The target is therefore an argument here, never hard-coded.

Why sufficient statistics: the metrics need the class means *and* the within-class covariance,
which a naive implementation gets from a second pass over the data. ``class_statistics`` reduces
a batch to ``n_k``, ``Σ h``, ``Σ ||h||²`` per class and one ``Σ h hᵀ``; these add across batches
(``+``) and across ranks (``all_reduce`` each field with SUM), and every metric is a function of
them. Everything is float64: ``Σ_W = (S2 - Σ_k n_k μ_k μ_kᵀ) / N`` subtracts two large numbers,
which loses about ``log10(||μ||² / σ²)`` digits (``σ`` the within-class spread). Features with
a common offset of ``1e4`` and unit spread lose every digit in float32 and keep about six to
eight in float64. For more, give ``shift`` (any point near the data, e.g. the
previous evaluation's global mean, the same on every rank): the statistics are then accumulated
about it, and every metric is unchanged.

Conventions (fixed here; other copies differ):

- ``μ_G`` is the *unweighted* mean of the class means (as in rhubarbwu/neural-collapse). Papyan
  et al. use the mean of all examples, which is the same for balanced classes; with imbalanced
  classes the weighted mean would pull ``μ_G`` towards the large classes.
- ``Σ_W = (1/N) Σ_i (h_i - μ_{y_i})(h_i - μ_{y_i})ᵀ`` and ``Σ_B = (1/K) Σ_k (μ_k - μ_G)(...)ᵀ``.
- ``NC1 = (1/K) Tr(Σ_W Σ_B^+)``, as in Papyan et al.'s code; some copies omit the ``1/K``.
- Standard deviations (equinorm, equiangularity) are population ones (``ddof = 0``): the ``K``
  classes are the whole set, not a sample. ``torch.std`` (``ddof = 1``, used by Papyan et al.'s
  code) is larger by ``sqrt(n / (n - 1))``.
- Matrices of vectors are ``(K, D)``: one row per class, for class means and classifier rows
  alike. The papers' ``M`` (``D x K``) is the transpose.

This module holds ``neural_collapse_metrics`` and re-exports the rest from private siblings, one
concept each: ``_nc_statistics`` (the statistics, class means and covariances),
``_nc_variability`` (NC1), ``_nc_geometry`` (NC2 and the target geometries) and
``_nc_classifier`` (NC3, NC4).
"""

from __future__ import annotations

from torch import Tensor

from lightning_dyn._checks import check_choice, shape_of

# ``name as name``: a public name re-exported from its private sibling.
from lightning_dyn.functional._nc_checks import check_classes, check_matrix
from lightning_dyn.functional._nc_classifier import nc3 as nc3
from lightning_dyn.functional._nc_classifier import nc4 as nc4
from lightning_dyn.functional._nc_classifier import nc4_mismatches as nc4_mismatches
from lightning_dyn.functional._nc_geometry import NC_TARGETS as NC_TARGETS
from lightning_dyn.functional._nc_geometry import Target as Target
from lightning_dyn.functional._nc_geometry import VectorKind as VectorKind
from lightning_dyn.functional._nc_geometry import equiangularity as equiangularity
from lightning_dyn.functional._nc_geometry import equinorm as equinorm
from lightning_dyn.functional._nc_geometry import geometry_distance as geometry_distance
from lightning_dyn.functional._nc_geometry import max_angle as max_angle
from lightning_dyn.functional._nc_geometry import target_gram as target_gram
from lightning_dyn.functional._nc_statistics import ClassStatistics as ClassStatistics
from lightning_dyn.functional._nc_statistics import (
    between_class_covariance as between_class_covariance,
)
from lightning_dyn.functional._nc_statistics import centred_means, check_stats
from lightning_dyn.functional._nc_statistics import class_means as class_means
from lightning_dyn.functional._nc_statistics import class_statistics as class_statistics
from lightning_dyn.functional._nc_statistics import global_mean as global_mean
from lightning_dyn.functional._nc_statistics import (
    within_class_covariance as within_class_covariance,
)
from lightning_dyn.functional._nc_variability import DEFAULT_RCOND as DEFAULT_RCOND
from lightning_dyn.functional._nc_variability import cdnv as cdnv
from lightning_dyn.functional._nc_variability import nc1 as nc1
from lightning_dyn.functional._nc_variability import nc1_trace_ratio as nc1_trace_ratio


def neural_collapse_metrics(
    stats: ClassStatistics,
    classifier_weight: Tensor | None = None,
    classifier_bias: Tensor | None = None,
    target: Target = "etf",
    *,
    weight_decay: float = 0.0,
    feature_decay: float = 0.0,
    rcond: float = DEFAULT_RCOND,
) -> dict[str, float]:
    """Every statistics-based neural-collapse metric, with stable keys.

    Keys: ``nc1``, ``nc1_trace_ratio``, ``cdnv``, ``equinorm_means``, ``equiangularity``,
    ``max_angle`` (all on the centred means), ``gram_distance`` (the means against ``target``:
    centred means for ``"etf"``, uncentred for ``"orthogonal"`` and ``"imbalanced"``); with a
    classifier also ``equinorm_classifier``, ``gram_distance_classifier`` (its rows against the
    same target) and ``nc3`` (centred means for ``"etf"``; uncentred for ``"orthogonal"``; the
    means scaled by ``sqrt(n_k)`` for ``"imbalanced"``, Dang et al.'s ``w_k ∝ sqrt(n_k) μ_k``).
    NC4 needs the features: use ``nc4_mismatches``.

    Args:
        stats: Statistics of at least 2 classes, none empty.
        classifier_weight: Optional ``(K, D)`` last-layer weight.
        classifier_bias: Optional ``(K,)`` last-layer bias. Only checked for shape: no
            statistics-based metric uses it (it enters ``nc4_mismatches``). Its presence is a
            reminder that ``"etf"`` is the target with a bias and ``"orthogonal"`` or
            ``"imbalanced"`` without one.
        target: One of ``NC_TARGETS``.
        weight_decay: ``λ_W`` for ``"imbalanced"`` (see ``target_gram``).
        feature_decay: ``λ_H`` for ``"imbalanced"``.
        rcond: Passed to ``nc1``.

    Returns:
        A dict of Python floats.
    """
    check_choice("target", target, NC_TARGETS)
    check_stats(stats)
    check_classes("stats", stats.num_classes)
    if classifier_weight is not None:
        check_matrix("classifier_weight", classifier_weight, stats.num_classes, stats.dim)
    if classifier_bias is not None and (
        not isinstance(classifier_bias, Tensor)
        or tuple(classifier_bias.shape) != (stats.num_classes,)
    ):
        raise ValueError(
            f"classifier_bias must be None or a tensor of shape ({stats.num_classes},) (K,); got "
            f"{shape_of(classifier_bias)}."
        )
    centred = centred_means(stats)
    geometry = centred if target == "etf" else class_means(stats)
    decay = {"weight_decay": weight_decay, "feature_decay": feature_decay}
    out = {
        "nc1": nc1(stats, rcond=rcond),
        "nc1_trace_ratio": nc1_trace_ratio(stats),
        "cdnv": cdnv(stats),
        "equinorm_means": equinorm(centred),
        "equiangularity": equiangularity(centred),
        "max_angle": max_angle(centred),
        "gram_distance": geometry_distance(geometry, target, stats.counts, kind="means", **decay),
    }
    if classifier_weight is not None:
        out["equinorm_classifier"] = equinorm(classifier_weight)
        out["gram_distance_classifier"] = geometry_distance(
            classifier_weight, target, stats.counts, kind="classifier", **decay
        )
        scale = stats.counts.sqrt() if target == "imbalanced" else None
        out["nc3"] = nc3(classifier_weight, stats, center=target == "etf", mean_scale=scale)
    return out
