"""A ``torchmetrics.Metric`` accumulating neural-collapse sufficient statistics.

The states are the fields of ``functional.ClassStatistics`` (per-class counts, sums and squared
norms, one ``Σ h hᵀ``) plus the NC4 counts, all summed: torchmetrics' own synchronisation
(``dist_reduce_fx="sum"``) merges them across DDP ranks, so the metrics after ``compute()`` are
those of the whole dataset. Memory ``O(K·D + D²)``, whatever the number of examples.
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor

from lightning_dyn._checks import check_positive_int
from lightning_dyn.functional.neural_collapse import (
    ClassStatistics,
    class_statistics,
    nc4_mismatches,
)


class NeuralCollapseStatistics(torchmetrics.Metric):
    """Streaming, DDP-synchronised class statistics of features (float64).

    Args:
        num_classes: number of classes ``K``.
        dim: feature dimension ``D``.
        shift: ``(D,)`` point to accumulate about (e.g. the previous evaluation's global mean;
            the same on every rank), or ``None`` for the origin. See
            ``functional.class_statistics``.

    ``update(features, labels)`` adds a batch; ``update_nc4(features, logits, means)`` adds the
    NC4 counts of a batch against given class means; ``compute()`` synchronises the ranks and
    returns a dict of the summed states, which ``unpack`` turns into
    ``(ClassStatistics, nc4_mismatches, nc4_count)``.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, num_classes: int, dim: int, shift: Tensor | None = None) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("dim", dim)
        self.num_classes, self.dim = num_classes, dim
        f64 = torch.float64
        self.add_state("counts", torch.zeros(num_classes, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sums", torch.zeros(num_classes, dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sq_norms", torch.zeros(num_classes, dtype=f64), dist_reduce_fx="sum")
        self.add_state("second_moment", torch.zeros(dim, dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("mismatches", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("nc4_count", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        shift = torch.zeros(dim, dtype=f64) if shift is None else shift.detach().double()
        self.register_buffer("shift", shift.reshape(dim).clone(), persistent=False)

    def update(self, features: Tensor, labels: Tensor) -> None:
        stats = class_statistics(features, labels, self.num_classes, shift=self.shift)
        self.counts += stats.counts
        self.sums += stats.sums
        self.sq_norms += stats.sq_norms
        self.second_moment += stats.second_moment

    def update_nc4(self, features: Tensor, logits: Tensor, means: Tensor) -> None:
        mismatches, count = nc4_mismatches(features, logits, means)
        self.mismatches += mismatches.to(self.mismatches)
        self.nc4_count += count.to(self.nc4_count)

    def compute(self) -> dict[str, Tensor]:
        return {
            "counts": self.counts.clone(),
            "sums": self.sums.clone(),
            "sq_norms": self.sq_norms.clone(),
            "second_moment": self.second_moment.clone(),
            "shift": self.shift.clone(),
            "mismatches": self.mismatches.clone(),
            "nc4_count": self.nc4_count.clone(),
        }

    @staticmethod
    def unpack(computed: dict[str, Tensor]) -> tuple[ClassStatistics, int, int]:
        """``(ClassStatistics, nc4 mismatches, nc4 count)`` from ``compute()``'s dict."""
        fields = ("counts", "sums", "sq_norms", "second_moment", "shift")
        stats = ClassStatistics(**{name: computed[name] for name in fields})
        return stats, int(computed["mismatches"]), int(computed["nc4_count"])
