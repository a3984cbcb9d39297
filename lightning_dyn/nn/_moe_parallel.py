"""Expert parallelism for ``HardConstraintMoE``: the same-input check and the exchange of ω.

Split from ``hard_constraint_moe.py``. Rank ``r`` of ``W`` solves experts ``r, r + W, …``; the
solutions travel with the autograd-aware ``torch.distributed.nn.functional.all_gather``.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor


def check_same_input(basis: Tensor, world: int) -> None:
    """Raise on every rank if the ranks were given different ``basis`` (e.g. data-parallel DDP).

    Expert parallelism assembles rank ``r``'s experts into every rank's field, which is only
    right when all ranks solve the same problems; a data-parallel sampler would make the result
    silently wrong. One all-gather of three numbers (batch size, sum, sum of squares) per forward.
    """
    flat = basis.detach().to(torch.float64)
    probe = torch.stack([flat.new_tensor(float(basis.shape[0])), flat.sum(), flat.square().sum()])
    probes = [torch.empty_like(probe) for _ in range(world)]
    dist.all_gather(probes, probe)
    # equal_nan: a diverged network gives NaN on every rank alike, which is the same input.
    same = (torch.allclose(p, probes[0], rtol=1e-9, atol=0.0, equal_nan=True) for p in probes)
    if not all(same):
        raise ValueError(
            "HardConstraintMoE splits its experts over the ranks (expert_parallel="
            "'auto' with an initialised process group, or True), which needs the SAME basis on "
            "every rank, but the ranks' inputs differ (batch size, sum, sum of squares per rank: "
            f"{[p.tolist() for p in probes]}). Under data-parallel DDP pass "
            "expert_parallel=False; to split the experts, give every rank the same batches "
            "(lightning_dyn.strategies.ExpertParallelStrategy does)."
        )


def exchange(omega: Tensor, stats: Tensor, experts: int, world: int) -> tuple[Tensor, Tensor]:
    """All-gather every rank's experts ``r::world`` (padded) and return them in expert order."""
    share = -(-experts // world)
    pad = share - omega.shape[1]
    if pad:
        omega = torch.cat([omega, omega.new_zeros(omega.shape[0], pad, omega.shape[2])], 1)
        stats = torch.cat([stats, stats.new_zeros(stats.shape[0], pad, 4)], 1)

    with warnings.catch_warnings():
        # Deprecated in favour of functional collectives, but it is the autograd-aware
        # all_gather for eager process groups (gloo included).
        warnings.filterwarnings("ignore", r".*all_gather is deprecated", FutureWarning)
        omegas = dist_nn.all_gather(omega)
    all_stats = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(all_stats, stats.contiguous())
    order = [(k % world, k // world) for k in range(experts)]
    return (
        torch.stack([omegas[r][:, j] for r, j in order], dim=1),
        torch.stack([all_stats[r][:, j] for r, j in order], dim=1),
    )
