"""NC2, convergence to a target geometry: equinorm, equiangularity, and the distance of a Gram
matrix to the simplex ETF, the orthogonal frame or Dang et al.'s imbalanced frame."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_dyn._checks import check_choice, check_positive_int, check_real, shape_of
from lightning_dyn.functional._nc_checks import F64, check_classes, check_matrix

NC_TARGETS: tuple[str, ...] = ("etf", "orthogonal", "imbalanced")
"""Target geometries: simplex ETF (centred), orthogonal frame, Dang et al.'s imbalanced frame."""

Target = Literal["etf", "orthogonal", "imbalanced"]
VectorKind = Literal["means", "classifier"]
_KINDS = ("means", "classifier")


def equinorm(vectors: Tensor) -> float:
    """Coefficient of variation of the row norms, ``std / mean`` (population std).

    Use on centred class means (``class_means(s) - global_mean(s)``) or on classifier rows.

    Args:
        vectors: ``(K, D)`` one vector per class, ``K >= 2``.
    """
    check_matrix("vectors", vectors)
    check_classes("vectors", vectors.shape[0])
    norms = vectors.detach().to(F64).norm(dim=1)
    mean = norms.mean()
    if not bool(mean > 0):
        raise ValueError("vectors are all zero; their equinorm is undefined.")
    return float(norms.std(correction=0) / mean)


def _offdiag_cosines(name: str, vectors: Tensor) -> Tensor:
    """Cosines of the ``K(K-1)/2`` distinct pairs ``k < l``."""
    check_matrix(name, vectors)
    k = vectors.shape[0]
    check_classes(name, k)
    x = vectors.detach().to(F64)
    norms = x.norm(dim=1)
    zero = (norms == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"{name} has zero rows {zero}; their cosines are undefined.")
    u = x / norms[:, None]
    i, j = torch.triu_indices(k, k, offset=1, device=x.device)
    return (u[i] * u[j]).sum(dim=1)


def equiangularity(centred_means: Tensor) -> float:
    """Population std of the cosines between distinct pairs of rows (0 for equal angles).

    Args:
        centred_means: ``(K, D)`` class means minus the global mean (or any vectors).
    """
    return float(_offdiag_cosines("centred_means", centred_means).std(correction=0))


def max_angle(centred_means: Tensor) -> float:
    """Mean ``|cos + 1/(K-1)|`` over distinct pairs: 0 when every pair is at the simplex angle.

    Args:
        centred_means: ``(K, D)`` class means minus the global mean.
    """
    cos = _offdiag_cosines("centred_means", centred_means)
    k = centred_means.shape[0]
    return float((cos + 1.0 / (k - 1)).abs().mean())


def _imbalanced_factors(counts: Tensor, weight_decay: float, feature_decay: float) -> Tensor:
    """``t_k = (1 - N sqrt(λ_W λ_H / n_k))_+`` of Dang et al.'s closed form."""
    n = counts.to(F64)
    return (1 - n.sum() * math.sqrt(weight_decay * feature_decay) / n.sqrt()).clamp_min(0.0)


def target_gram(
    target: Target,
    counts: Tensor | None = None,
    *,
    num_classes: int | None = None,
    kind: VectorKind = "means",
    weight_decay: float = 0.0,
    feature_decay: float = 0.0,
) -> Tensor:
    """Gram matrix ``G`` of the target geometry, normalised to ``||G||_F = 1``.

    - ``"etf"``: simplex ETF, ``(I - 11ᵀ/K) / sqrt(K - 1)``; for centred means (and classifier
      rows) of a head with a bias or trained with cross-entropy.
    - ``"orthogonal"``: ``I / sqrt(K)``; for the uncentred means of a bias-free head trained with
      MSE on balanced classes.
    - ``"imbalanced"``: Dang et al.'s closed form (below) for the uncentred means, or classifier
      rows, of a bias-free head trained with MSE on classes of sizes ``n_k``.

    Dang, Tran, Osher, Tran-The, Ho & Nguyen, "Neural Collapse in Deep Linear Networks: From
    Balanced to Imbalanced Data" (ICML 2023, arXiv 2301.00437), Theorem 4.1 (imbalanced data,
    bias-free, MSE, plain unconstrained-features model; the theorem number is as we recall it
    for arXiv v5, the formula is re-derived and checked in the tests by minimising the model).
    The model is ``min (1/2N) ||W H - Y||_F² + (λ_W/2) ||W||_F² + (λ_H/2) ||H||_F²`` over the
    ``K x D`` classifier ``W`` and the ``D x N`` features ``H`` (one-hot ``Y``, ``D >= K``,
    ``λ_W, λ_H > 0``). With ``N = Σ n_k`` and ``t_k = (1 - N sqrt(λ_W λ_H / n_k))_+``, every
    global minimiser has collapsed features, orthogonal class means and orthogonal classifier
    rows (a "general orthogonal frame"), with

        ||w_k||² = t_k sqrt(n_k λ_H / λ_W),   ||h_k||² = t_k sqrt(λ_W / (n_k λ_H)),
        w_k = sqrt(n_k λ_H / λ_W) h_k,

    so larger classes get longer classifier rows and *shorter* means, and a class with
    ``n_k <= N² λ_W λ_H`` collapses to 0 (minority collapse). After normalisation only
    ``λ_W λ_H`` matters: ``G_means ∝ diag(t_k / sqrt(n_k))`` and ``G_classifier ∝
    diag(t_k sqrt(n_k))``. ``weight_decay = feature_decay = 0`` (the default) gives the limit
    of vanishing regularisation, ``diag(1/sqrt(n_k))`` and ``diag(sqrt(n_k))``. Deeper linear
    heads (``M >= 2`` layers in the paper) follow a different per-class equation, not
    implemented here.

    Args:
        target: One of ``NC_TARGETS``.
        counts: ``(K,)`` class sizes ``n_k``; required for ``"imbalanced"``, else gives ``K``.
        num_classes: ``K`` when ``counts`` is not given.
        kind: ``"means"`` or ``"classifier"``; only ``"imbalanced"`` distinguishes them.
        weight_decay: ``λ_W`` of the loss above (``"imbalanced"`` only).
        feature_decay: ``λ_H`` of the loss above, per example (``"imbalanced"`` only).

    Returns:
        A ``(K, K)`` float64 tensor of unit Frobenius norm.
    """
    check_choice("target", target, NC_TARGETS)
    check_choice("kind", kind, _KINDS)
    check_real("weight_decay", weight_decay)
    check_real("feature_decay", feature_decay)
    if counts is not None:
        if not isinstance(counts, Tensor) or counts.ndim != 1:
            raise ValueError(f"counts must be a 1-D tensor of shape (K,); got {shape_of(counts)}.")
        if num_classes is not None and num_classes != counts.shape[0]:
            raise ValueError(
                f"num_classes={num_classes!r} does not match counts of shape {tuple(counts.shape)}."
            )
        k = counts.shape[0]
        device = counts.device
    elif target == "imbalanced":
        raise ValueError('counts must be given for target="imbalanced" (the class sizes n_k).')
    else:
        check_positive_int("num_classes", num_classes)  # type: ignore[arg-type]
        k, device = int(num_classes), None  # type: ignore[arg-type]
    check_classes("counts" if counts is not None else "num_classes", k)
    if target == "etf":
        eye = torch.eye(k, dtype=F64, device=device)
        return (eye - 1.0 / k) / math.sqrt(k - 1)
    if target == "orthogonal":
        return torch.eye(k, dtype=F64, device=device) / math.sqrt(k)
    n = counts.to(F64)  # type: ignore[union-attr]
    if not bool((n > 0).all()):
        raise ValueError(f"counts must all be > 0 for target='imbalanced'; got {n.tolist()}.")
    t = _imbalanced_factors(n, weight_decay, feature_decay)
    diag = t * n.sqrt() if kind == "classifier" else t / n.sqrt()
    norm = diag.norm()
    if not bool(norm > 0):
        raise ValueError(
            "every class collapses to 0 in the closed form (n_k <= N² λ_W λ_H for all k); got "
            f"counts={n.tolist()}, weight_decay={weight_decay}, feature_decay={feature_decay}."
        )
    return torch.diag(diag / norm)


def geometry_distance(
    vectors: Tensor,
    target: Target = "etf",
    counts: Tensor | None = None,
    *,
    kind: VectorKind = "means",
    weight_decay: float = 0.0,
    feature_decay: float = 0.0,
) -> float:
    """``||G/||G||_F - T||_F``: normalised Gram of the vectors against ``target_gram``.

    Scale-free, and 0 exactly when the vectors form the target geometry up to rotation and a
    common scale. Pass centred means (or classifier rows) for ``"etf"``, uncentred means (or
    classifier rows) for ``"orthogonal"`` and ``"imbalanced"``; the vectors are used as given.

    Args:
        vectors: ``(K, D)`` class means or classifier rows, ``G = X Xᵀ``.
        target: One of ``NC_TARGETS``.
        counts: ``(K,)`` class sizes; required for ``"imbalanced"``.
        kind: ``"means"`` or ``"classifier"`` (which closed form ``"imbalanced"`` uses).
        weight_decay: ``λ_W`` (``"imbalanced"`` only; see ``target_gram``).
        feature_decay: ``λ_H`` (``"imbalanced"`` only).

    Returns:
        The distance, in ``[0, 2]``.
    """
    check_matrix("vectors", vectors)
    x = vectors.detach().to(F64)
    if counts is not None and (not isinstance(counts, Tensor) or counts.shape != (x.shape[0],)):
        raise ValueError(
            f"counts must have shape ({x.shape[0]},) to match vectors {tuple(x.shape)}; got "
            f"{shape_of(counts)}."
        )
    t = target_gram(
        target,
        counts,
        num_classes=x.shape[0],
        kind=kind,
        weight_decay=weight_decay,
        feature_decay=feature_decay,
    ).to(x.device)
    g = x @ x.T
    norm = torch.linalg.matrix_norm(g)
    if not bool(norm > 0):
        raise ValueError("vectors are all zero; their normalised Gram matrix is undefined.")
    return float(torch.linalg.matrix_norm(g / norm - t))
