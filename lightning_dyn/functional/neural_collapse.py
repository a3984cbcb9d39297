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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_dyn._checks import check_choice, check_positive_int, check_real

NC_TARGETS: tuple[str, ...] = ("etf", "orthogonal", "imbalanced")
"""Target geometries: simplex ETF (centred), orthogonal frame, Dang et al.'s imbalanced frame."""

Target = Literal["etf", "orthogonal", "imbalanced"]
VectorKind = Literal["means", "classifier"]
_KINDS = ("means", "classifier")

DEFAULT_RCOND = 1e-12
"""Eigenvalues of ``Σ_B`` below ``rcond`` times the largest are treated as 0 in ``Σ_B^+``."""

_F64 = torch.float64


# --- checks -----------------------------------------------------------------------------------


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_matrix(name: str, x: object, rows: int | None = None, cols: int | None = None) -> None:
    ok = isinstance(x, Tensor) and x.ndim == 2 and (x.is_floating_point() or x.is_complex())
    want = f"({'K' if rows is None else rows}, {'D' if cols is None else cols})"
    if (
        not ok
        or (rows is not None and x.shape[0] != rows)
        or (cols is not None and x.shape[1] != cols)
    ):
        dtype = f", dtype={x.dtype}" if isinstance(x, Tensor) else ""
        raise ValueError(
            f"{name} must be a 2-D floating tensor of shape {want}; got {_shape(x)}{dtype}."
        )
    if x.is_complex():
        raise ValueError(f"{name} must be real; got dtype={x.dtype}.")


def _check_classes(name: str, k: int) -> None:
    if k < 2:
        raise ValueError(f"{name} must hold at least 2 classes for this metric; got K={k}.")


def _check_rcond(rcond: float) -> None:
    ok = isinstance(rcond, (int, float)) and not isinstance(rcond, bool)
    if not ok or not 0 <= rcond < 1:
        raise ValueError(f"rcond must be a number in [0, 1); got {rcond!r}.")


# --- sufficient statistics --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClassStatistics:
    """Per-class sufficient statistics of features, mergeable across batches and ranks.

    All tensors are float64 and on one device. With a ``shift`` ``c`` the sums are of ``h - c``
    (``c = 0`` by default), so that features far from the origin do not cancel; every metric is
    unchanged by the shift.

    Attributes:
        counts: ``(K,)`` number of examples of each class (integers stored as float64, exact to
            ``2**53``).
        sums: ``(K, D)`` per-class ``Σ (h - c)``.
        sq_norms: ``(K,)`` per-class ``Σ ||h - c||²`` (for the per-class variance in CDNV).
        second_moment: ``(D, D)`` ``Σ (h - c)(h - c)ᵀ`` over all examples.
        shift: ``(D,)`` the point ``c`` the sums are taken about.
    """

    counts: Tensor
    sums: Tensor
    sq_norms: Tensor
    second_moment: Tensor
    shift: Tensor

    def __post_init__(self) -> None:
        k, d = self.sums.shape if self.sums.ndim == 2 else (-1, -1)
        expected = {
            "counts": (k,),
            "sums": (k, d),
            "sq_norms": (k,),
            "second_moment": (d, d),
            "shift": (d,),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, Tensor) or tuple(value.shape) != shape or k < 0:
                raise ValueError(
                    f"ClassStatistics.{name} must be a tensor of shape {shape} (K={k}, D={d}); "
                    f"got {_shape(value)}."
                )
            if value.dtype != _F64:
                raise ValueError(f"ClassStatistics.{name} must be float64; got {value.dtype}.")

    @classmethod
    def zeros(
        cls,
        num_classes: int,
        dim: int,
        device: torch.device | str | None = None,
        shift: Tensor | None = None,
    ) -> ClassStatistics:
        """Statistics of no examples: the identity of ``+``.

        Args:
            num_classes: Number of classes ``K >= 1``.
            dim: Feature dimension ``D >= 1``.
            device: Device of the tensors (``shift``'s device if given, else the default).
            shift: ``(D,)`` point to accumulate about; ``None`` is the origin.
        """
        check_positive_int("num_classes", num_classes)
        check_positive_int("dim", dim)
        c = _shift(shift, dim, device)
        dev = c.device
        return cls(
            counts=torch.zeros(num_classes, dtype=_F64, device=dev),
            sums=torch.zeros(num_classes, dim, dtype=_F64, device=dev),
            sq_norms=torch.zeros(num_classes, dtype=_F64, device=dev),
            second_moment=torch.zeros(dim, dim, dtype=_F64, device=dev),
            shift=c,
        )

    @property
    def num_classes(self) -> int:
        return self.sums.shape[0]

    @property
    def dim(self) -> int:
        return self.sums.shape[1]

    @property
    def total(self) -> float:
        """Number of examples ``N``."""
        return float(self.counts.sum())

    def with_shift(self, shift: Tensor) -> ClassStatistics:
        """The same statistics accumulated about another point (exact up to rounding).

        With ``d = c_old - c_new``: ``h - c_new = (h - c_old) + d``, so the sums gain ``n_k d``,
        the squared norms ``2 d·s_k + n_k ||d||²`` and the second moment ``d sᵀ + s dᵀ + N d dᵀ``
        (``s`` the sum over all classes). The rounding error grows with ``||d||``; rebase only
        between nearby points.
        """
        new = _shift(shift, self.dim, self.sums.device)
        d = self.shift - new
        if not bool(d.any()):
            return self
        s = self.sums.sum(dim=0)
        return ClassStatistics(
            counts=self.counts,
            sums=self.sums + self.counts[:, None] * d,
            sq_norms=self.sq_norms + 2 * (self.sums @ d) + self.counts * (d @ d),
            second_moment=self.second_moment
            + torch.outer(d, s)
            + torch.outer(s, d)
            + self.counts.sum() * torch.outer(d, d),
            shift=new,
        )

    def __add__(self, other: object) -> ClassStatistics:
        """Merge two sets of statistics (examples of both); ``other`` is rebased to this shift."""
        if not isinstance(other, ClassStatistics):
            return NotImplemented
        if other.sums.shape != self.sums.shape:
            raise ValueError(
                "ClassStatistics to merge must have the same (num_classes, dim); got "
                f"{tuple(self.sums.shape)} and {tuple(other.sums.shape)}."
            )
        if not torch.equal(other.shift, self.shift):
            other = other.with_shift(self.shift)
        return ClassStatistics(
            counts=self.counts + other.counts,
            sums=self.sums + other.sums,
            sq_norms=self.sq_norms + other.sq_norms,
            second_moment=self.second_moment + other.second_moment,
            shift=self.shift,
        )

    def __radd__(self, other: object) -> ClassStatistics:
        """``0 + stats``, so that ``sum(list_of_statistics)`` works."""
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented


def _shift(shift: Tensor | None, dim: int, device: torch.device | str | None) -> Tensor:
    if shift is None:
        return torch.zeros(dim, dtype=_F64, device=device)
    if not isinstance(shift, Tensor) or tuple(shift.shape) != (dim,):
        raise ValueError(
            f"shift must be a tensor of shape ({dim},) (D,) or None; got {_shape(shift)}."
        )
    return shift.detach().to(dtype=_F64, device=device if device is not None else shift.device)


@torch.no_grad()
def class_statistics(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    shift: Tensor | None = None,
) -> ClassStatistics:
    """Sufficient statistics of a batch of features, in float64.

    Args:
        features: ``(N, D)`` features (any float dtype; promoted to float64 before any sum).
        labels: ``(N,)`` integer class of each example, in ``[0, num_classes)``.
        num_classes: Number of classes ``K``; classes absent from the batch get zero counts.
        shift: ``(D,)`` point to accumulate about (the same on every rank and batch you merge);
            ``None`` is the origin. A point near the data, such as the previous evaluation's
            ``global_mean``, avoids the cancellation described in the module docstring.

    Returns:
        The batch's ``ClassStatistics``; combine batches with ``+``.
    """
    check_positive_int("num_classes", num_classes)
    _check_matrix("features", features)
    n, d = features.shape
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be a 1-D tensor of shape ({n},) (N,); got {_shape(labels)}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor; got dtype={labels.dtype}.")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must hold classes in [0, {num_classes}); got classes in "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    c = _shift(shift, d, features.device)
    h = features.detach().to(_F64) - c
    idx = labels.to(features.device).long()
    counts = torch.bincount(idx, minlength=num_classes).to(_F64)
    sums = torch.zeros(num_classes, d, dtype=_F64, device=h.device).index_add_(0, idx, h)
    sq = torch.zeros(num_classes, dtype=_F64, device=h.device).index_add_(0, idx, (h * h).sum(1))
    return ClassStatistics(counts=counts, sums=sums, sq_norms=sq, second_moment=h.T @ h, shift=c)


def _check_stats(stats: object) -> ClassStatistics:
    if not isinstance(stats, ClassStatistics):
        raise ValueError(f"stats must be a ClassStatistics; got {type(stats).__name__}.")
    empty = (stats.counts == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(str(k) for k in empty[:20]) + (", ..." if len(empty) > 20 else "")
        raise ValueError(
            f"stats has {len(empty)} empty class(es) (no examples): [{shown}]. Class means are "
            "undefined for them; pass statistics that cover every class, or drop those classes "
            "(index every field of the statistics with the classes to keep)."
        )
    return stats


def _shifted_means(stats: ClassStatistics) -> Tensor:
    return _check_stats(stats).sums / stats.counts[:, None]


def class_means(stats: ClassStatistics) -> Tensor:
    """``(K, D)`` class means ``μ_k``; raises ``ValueError`` naming any empty class."""
    return _shifted_means(stats) + stats.shift


def global_mean(stats: ClassStatistics) -> Tensor:
    """``(D,)`` unweighted mean of the class means, ``μ_G = (1/K) Σ_k μ_k``.

    The alternative, the mean of all examples ``Σ_k n_k μ_k / N``, equals this for balanced
    classes; it is ``stats.sums.sum(0) / stats.counts.sum() + stats.shift``.
    """
    return _shifted_means(stats).mean(dim=0) + stats.shift


def _centred_means(stats: ClassStatistics) -> Tensor:
    m = _shifted_means(stats)
    return m - m.mean(dim=0)


def within_class_covariance(stats: ClassStatistics) -> Tensor:
    """``(D, D)`` ``Σ_W = (S2 - Σ_k n_k μ_k μ_kᵀ) / N`` (symmetrised; rounding may leave it
    slightly indefinite)."""
    m = _shifted_means(stats)
    sw = (stats.second_moment - (m * stats.counts[:, None]).T @ m) / stats.counts.sum()
    return (sw + sw.T) / 2


def between_class_covariance(stats: ClassStatistics) -> Tensor:
    """``(D, D)`` ``Σ_B = (1/K) Σ_k (μ_k - μ_G)(μ_k - μ_G)ᵀ`` with the unweighted ``μ_G``."""
    x = _centred_means(stats)
    return x.T @ x / x.shape[0]


def _class_variances(stats: ClassStatistics) -> Tensor:
    """``(K,)`` ``σ_k² = E_k ||h - μ_k||²``, clamped at 0 against rounding."""
    m = _shifted_means(stats)
    return (stats.sq_norms / stats.counts - (m * m).sum(dim=1)).clamp_min(0.0)


# --- NC1 --------------------------------------------------------------------------------------


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
    _check_rcond(rcond)
    x = _centred_means(stats)
    k = x.shape[0]
    _check_classes("stats", k)
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
    _check_classes("stats", _check_stats(stats).num_classes)
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
    m = _shifted_means(stats)
    k = m.shape[0]
    _check_classes("stats", k)
    var = _class_variances(stats)
    i, j = torch.triu_indices(k, k, offset=1, device=m.device)
    dist2 = ((m[i] - m[j]) ** 2).sum(dim=1)
    if bool((dist2 == 0).any()):
        p = int((dist2 == 0).nonzero()[0])
        raise ValueError(
            f"stats has classes {int(i[p])} and {int(j[p])} with the same mean; CDNV is infinite."
        )
    return float(((var[i] + var[j]) / (2 * dist2)).mean())


# --- NC2 --------------------------------------------------------------------------------------


def equinorm(vectors: Tensor) -> float:
    """Coefficient of variation of the row norms, ``std / mean`` (population std).

    Use on centred class means (``class_means(s) - global_mean(s)``) or on classifier rows.

    Args:
        vectors: ``(K, D)`` one vector per class, ``K >= 2``.
    """
    _check_matrix("vectors", vectors)
    _check_classes("vectors", vectors.shape[0])
    norms = vectors.detach().to(_F64).norm(dim=1)
    mean = norms.mean()
    if not bool(mean > 0):
        raise ValueError("vectors are all zero; their equinorm is undefined.")
    return float(norms.std(correction=0) / mean)


def _offdiag_cosines(name: str, vectors: Tensor) -> Tensor:
    """Cosines of the ``K(K-1)/2`` distinct pairs ``k < l``."""
    _check_matrix(name, vectors)
    k = vectors.shape[0]
    _check_classes(name, k)
    x = vectors.detach().to(_F64)
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
    n = counts.to(_F64)
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
            raise ValueError(f"counts must be a 1-D tensor of shape (K,); got {_shape(counts)}.")
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
    _check_classes("counts" if counts is not None else "num_classes", k)
    if target == "etf":
        eye = torch.eye(k, dtype=_F64, device=device)
        return (eye - 1.0 / k) / math.sqrt(k - 1)
    if target == "orthogonal":
        return torch.eye(k, dtype=_F64, device=device) / math.sqrt(k)
    n = counts.to(_F64)  # type: ignore[union-attr]
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
    _check_matrix("vectors", vectors)
    x = vectors.detach().to(_F64)
    if counts is not None and (not isinstance(counts, Tensor) or counts.shape != (x.shape[0],)):
        raise ValueError(
            f"counts must have shape ({x.shape[0]},) to match vectors {tuple(x.shape)}; got "
            f"{_shape(counts)}."
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


# --- NC3 --------------------------------------------------------------------------------------


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
    _check_stats(stats)
    _check_matrix("classifier", classifier, stats.num_classes, stats.dim)
    m = _centred_means(stats) if center else class_means(stats)
    if mean_scale is not None:
        if not isinstance(mean_scale, Tensor) or tuple(mean_scale.shape) != (stats.num_classes,):
            raise ValueError(
                f"mean_scale must be a tensor of shape ({stats.num_classes},) (K,); got "
                f"{_shape(mean_scale)}."
            )
        m = m * mean_scale.to(_F64).to(m.device)[:, None]
    w = classifier.detach().to(_F64).to(m.device)
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
    _check_matrix("features", features)
    n, d = features.shape
    _check_matrix("means", means, cols=d)
    k = means.shape[0]
    _check_classes("means", k)
    h = features.detach().to(_F64)
    mu = means.detach().to(_F64).to(h.device)
    if isinstance(logits_or_classifier, Tensor):
        _check_matrix("logits_or_classifier", logits_or_classifier, n, k)
        logits = logits_or_classifier.detach().to(h.device)
    elif isinstance(logits_or_classifier, Sequence) and len(logits_or_classifier) == 2:
        w, b = logits_or_classifier
        _check_matrix("logits_or_classifier[0] (W)", w, k, d)
        logits = h @ w.detach().to(_F64).to(h.device).T
        if b is not None:
            if not isinstance(b, Tensor) or tuple(b.shape) != (k,):
                raise ValueError(
                    f"logits_or_classifier[1] (b) must be None or a tensor of shape ({k},); got "
                    f"{_shape(b)}."
                )
            logits = logits + b.detach().to(_F64).to(h.device)
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


# --- all at once ------------------------------------------------------------------------------


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
    _check_stats(stats)
    _check_classes("stats", stats.num_classes)
    if classifier_weight is not None:
        _check_matrix("classifier_weight", classifier_weight, stats.num_classes, stats.dim)
    if classifier_bias is not None and (
        not isinstance(classifier_bias, Tensor)
        or tuple(classifier_bias.shape) != (stats.num_classes,)
    ):
        raise ValueError(
            f"classifier_bias must be None or a tensor of shape ({stats.num_classes},) (K,); got "
            f"{_shape(classifier_bias)}."
        )
    centred = _centred_means(stats)
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
