"""A ``torchmetrics.Metric`` counting NC4 disagreements against fixed class means.

NC4 (Papyan, Han & Donoho) asks whether the classifier has become the nearest-class-mean rule:
each example's ``argmax`` logit is compared with its nearest class mean. The means are the result
of a finished pass over the data (``NeuralCollapseStatistics.compute()``), or of the previous
measurement, so they are not state accumulated next to the counts: they are fixed when the
metric is built, and the metric's one ``update(features, logits)`` adds a batch's counts. This
keeps torchmetrics' contract (every state change goes through the wrapped ``update``, which
clears the cached ``compute()`` result and records that the metric was updated) where a second
update method beside the class statistics' would bypass it. Two passes, two metrics: the class
statistics of pass one give the means that this metric, built on them, counts against in pass
two (or, lagged, in the next measurement's single pass).
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor

from lightning_dyn._checks import shape_of
from lightning_dyn.functional import nc4_mismatches


class NC4Mismatches(torchmetrics.Metric):
    """Streaming, DDP-synchronised count of examples whose classifier and nearest-class-mean
    decisions differ.

    Args:
        means: ``(K, D)`` class means, fixed for the whole accumulation (kept in float64; the
            same on every rank).

    ``update(features, logits)`` adds a batch (``(N, D)`` features, ``(N, K)`` logits; see
    ``functional.nc4_mismatches``); ``compute()`` synchronises the ranks and returns
    ``(mismatches, nc4_count)``, 0-dim int64 tensors: ``functional.nc4(*metric.compute())`` is
    the NC4 fraction.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, means: Tensor) -> None:
        super().__init__()
        if not isinstance(means, Tensor) or means.ndim != 2 or 0 in means.shape:
            raise ValueError(
                f"means must be a (K, D) tensor of class means; got {shape_of(means)}."
            )
        self.register_buffer("means", means.detach().double().clone(), persistent=False)
        i64 = torch.int64
        self.add_state("mismatches", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        self.add_state("nc4_count", torch.zeros((), dtype=i64), dist_reduce_fx="sum")

    def update(self, features: Tensor, logits: Tensor) -> None:
        mismatches, count = nc4_mismatches(features, logits, self.means)
        self.mismatches += mismatches.to(self.mismatches.device)
        self.nc4_count += count.to(self.nc4_count.device)

    def compute(self) -> tuple[Tensor, Tensor]:
        return self.mismatches.clone(), self.nc4_count.clone()
