"""Streaming class statistics and what follows from them: class means and covariances.

A batch reduces to ``n_k``, ``Σ h``, ``Σ ||h||²`` per class and one ``Σ h hᵀ``, in float64 and
about a ``shift``; these add across batches and ranks. Why, and the conventions (unweighted
``μ_G``, ``1/N`` and ``1/K`` normalisations), are in the docstring of
``lightning_dyn.functional.neural_collapse``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_dyn._checks import check_positive_int, shape_of
from lightning_dyn.functional._nc_checks import F64, check_matrix


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
                    f"got {shape_of(value)}."
                )
            if value.dtype != F64:
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
            counts=torch.zeros(num_classes, dtype=F64, device=dev),
            sums=torch.zeros(num_classes, dim, dtype=F64, device=dev),
            sq_norms=torch.zeros(num_classes, dtype=F64, device=dev),
            second_moment=torch.zeros(dim, dim, dtype=F64, device=dev),
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
        return torch.zeros(dim, dtype=F64, device=device)
    if not isinstance(shift, Tensor) or tuple(shift.shape) != (dim,):
        raise ValueError(
            f"shift must be a tensor of shape ({dim},) (D,) or None; got {shape_of(shift)}."
        )
    return shift.detach().to(dtype=F64, device=device if device is not None else shift.device)


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
            ``global_mean``, avoids the cancellation described in the docstring of
            ``functional.neural_collapse``.

    Returns:
        The batch's ``ClassStatistics``; combine batches with ``+``.
    """
    check_positive_int("num_classes", num_classes)
    check_matrix("features", features)
    n, d = features.shape
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"labels must be a 1-D tensor of shape ({n},) (N,); got {shape_of(labels)}."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor; got dtype={labels.dtype}.")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must hold classes in [0, {num_classes}); got classes in "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    c = _shift(shift, d, features.device)
    h = features.detach().to(F64) - c
    idx = labels.to(features.device).long()
    counts = torch.bincount(idx, minlength=num_classes).to(F64)
    sums = torch.zeros(num_classes, d, dtype=F64, device=h.device).index_add_(0, idx, h)
    sq = torch.zeros(num_classes, dtype=F64, device=h.device).index_add_(0, idx, (h * h).sum(1))
    return ClassStatistics(counts=counts, sums=sums, sq_norms=sq, second_moment=h.T @ h, shift=c)


def check_stats(stats: object) -> ClassStatistics:
    """``stats``, or ``ValueError`` unless it is a ``ClassStatistics`` with no empty class."""
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


def shifted_means(stats: ClassStatistics) -> Tensor:
    """``(K, D)`` class means about ``stats.shift`` (``μ_k - shift``), checked."""
    return check_stats(stats).sums / stats.counts[:, None]


def class_means(stats: ClassStatistics) -> Tensor:
    """``(K, D)`` class means ``μ_k``; raises ``ValueError`` naming any empty class."""
    return shifted_means(stats) + stats.shift


def global_mean(stats: ClassStatistics) -> Tensor:
    """``(D,)`` unweighted mean of the class means, ``μ_G = (1/K) Σ_k μ_k``.

    The alternative, the mean of all examples ``Σ_k n_k μ_k / N``, equals this for balanced
    classes; it is ``stats.sums.sum(0) / stats.counts.sum() + stats.shift``.
    """
    return shifted_means(stats).mean(dim=0) + stats.shift


def centred_means(stats: ClassStatistics) -> Tensor:
    """``(K, D)`` ``μ_k - μ_G``, with the unweighted global mean ``μ_G``."""
    m = shifted_means(stats)
    return m - m.mean(dim=0)


def within_class_covariance(stats: ClassStatistics) -> Tensor:
    """``(D, D)`` ``Σ_W = (S2 - Σ_k n_k μ_k μ_kᵀ) / N`` (symmetrised; rounding may leave it
    slightly indefinite)."""
    m = shifted_means(stats)
    sw = (stats.second_moment - (m * stats.counts[:, None]).T @ m) / stats.counts.sum()
    return (sw + sw.T) / 2


def between_class_covariance(stats: ClassStatistics) -> Tensor:
    """``(D, D)`` ``Σ_B = (1/K) Σ_k (μ_k - μ_G)(μ_k - μ_G)ᵀ`` with the unweighted ``μ_G``."""
    x = centred_means(stats)
    return x.T @ x / x.shape[0]


def class_variances(stats: ClassStatistics) -> Tensor:
    """``(K,)`` ``σ_k² = E_k ||h - μ_k||²``, clamped at 0 against rounding."""
    m = shifted_means(stats)
    return (stats.sq_norms / stats.counts - (m * m).sum(dim=1)).clamp_min(0.0)
