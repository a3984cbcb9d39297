"""A ``torchmetrics.Metric`` accumulating neural-collapse sufficient statistics.

The states are the fields of ``functional.ClassStatistics`` (per-class counts, sums and squared
norms, one ``Σ h hᵀ``), all summed: torchmetrics' own synchronisation (``dist_reduce_fx="sum"``)
merges them across DDP ranks, so the statistics after ``compute()`` are those of the whole
dataset. Memory ``O(K·D + D²)``, whatever the number of examples.

NC4 is not counted here: it needs the class means of a finished pass, so its counts are a metric
of their own, ``NC4Mismatches`` (see its module docstring for why).
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor

from lightning_dyn._checks import check_positive_int
from lightning_dyn.functional import ClassStatistics, class_statistics

_FIELDS = ("counts", "sums", "sq_norms", "second_moment")


class NeuralCollapseStatistics(torchmetrics.Metric):
    """Streaming, DDP-synchronised class statistics of features (float64).

    Args:
        num_classes: number of classes ``K``.
        dim: feature dimension ``D``.
        shift: ``(D,)`` point to accumulate about (e.g. the previous evaluation's global mean;
            the same on every rank), or ``None`` for the origin. See
            ``functional.class_statistics``.

    ``update(features, labels)`` adds a batch (``(N, D)`` features, ``(N,)`` classes);
    ``compute()`` synchronises the ranks and returns a dict of the summed states and the shift,
    which ``unpack`` turns into a ``functional.ClassStatistics``.
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
        shift = torch.zeros(dim, dtype=f64) if shift is None else shift.detach().double()
        self.register_buffer("shift", shift.reshape(dim).clone(), persistent=False)

    def update(self, features: Tensor, labels: Tensor) -> None:
        stats = class_statistics(features, labels, self.num_classes, shift=self.shift)
        self.counts += stats.counts
        self.sums += stats.sums
        self.sq_norms += stats.sq_norms
        self.second_moment += stats.second_moment

    def compute(self) -> dict[str, Tensor]:
        computed = {name: getattr(self, name).clone() for name in _FIELDS}
        return {**computed, "shift": self.shift.clone()}

    def unpack(self, computed: dict[str, Tensor]) -> ClassStatistics:
        """The ``ClassStatistics`` of ``compute()``'s dict.

        torchmetrics squeezes one-element results (``K = 1`` counts, ``D = 1`` moments); the
        shapes are restored here.
        """
        k, d = self.num_classes, self.dim
        shapes = {"counts": (k,), "sums": (k, d), "sq_norms": (k,), "second_moment": (d, d)}
        shapes["shift"] = (d,)
        return ClassStatistics(**{name: computed[name].reshape(s) for name, s in shapes.items()})
