"""Whole-matrix functions of FSDP2-sharded tensors, each matrix on one owner rank.

Under FSDP2 (``fully_shard``) a weight and its gradient are ``DTensor``s: rank ``r`` holds rows
``torch.chunk(W, world, dim=0)[r]``. Elementwise optimizer work (momentum, sign, AdamW, weight
decay) runs on the local rows as it is, but a Muon-style update needs the whole matrix:
Newton-Schulz of the local rows is not the rows of Newton-Schulz, and a nuclear norm is not a sum
of local ones. As in Dion and modded-nanogpt, every such matrix gets one owner rank (balanced by
size, the same choice on every rank); :meth:`ShardedMatrices.gather` brings the shards of one
matrix to its owner, the owner computes, and :meth:`ShardedMatrices.scatter` sends each rank its
rows back (scalars: :meth:`ShardedMatrices.share`). Each rank thus receives about its own share of
the matrices instead of all of them, which an all-gather on every rank would cost; the collectives
are ``gather`` / ``scatter``, which gloo (CPU) and NCCL both provide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from lightning_dyn.functional._dtensor import row_counts


def is_sharded(t: Tensor) -> bool:
    return isinstance(t, DTensor)


def _shard_group(p: DTensor) -> dist.ProcessGroup:
    """The group over which ``p``'s rows are split; refuses layouts other than FSDP2's."""
    shards = [(d, pl) for d, pl in enumerate(p.placements) if pl.is_shard()]
    if len(shards) != 1 or shards[0][1].dim != 0 or any(pl.is_partial() for pl in p.placements):
        raise ValueError(
            f"LANTON supports parameters sharded along dim 0 on one mesh dimension (FSDP2's "
            f"fully_shard, also with replication: HSDP); got placements {p.placements}. "
            "Tensor parallelism is not supported."
        )
    return p.device_mesh.get_group(shards[0][0])


class ShardedMatrices:
    """Owners and collectives for a list of ``DTensor`` parameters (see the module docstring).

    Args:
        params: the sharded parameters, in the same order on every rank.
    """

    def __init__(self, params: Sequence[DTensor]) -> None:
        self.groups = {id(p): _shard_group(p) for p in params}
        loads: dict[int, list[int]] = {}
        self.owners: dict[int, int] = {}
        # Largest first onto the least loaded rank: deterministic, so every rank agrees.
        for p in sorted(params, key=lambda q: -q.numel()):
            group = self.groups[id(p)]
            load = loads.setdefault(id(group), [0] * dist.get_world_size(group))
            owner = min(range(len(load)), key=load.__getitem__)
            load[owner] += p.numel()
            self.owners[id(p)] = owner
        self.bytes_sent = 0  # by this rank, for the communication benchmark

    def owns(self, p: DTensor) -> bool:
        group = self.groups[id(p)]
        return dist.get_rank(group) == self.owners[id(p)]

    def _layout(self, p: DTensor) -> tuple[dist.ProcessGroup, int, list[int]]:
        group = self.groups[id(p)]
        return group, self.owners[id(p)], row_counts(p.shape[0], dist.get_world_size(group))

    def gather(self, p: DTensor, shard: Tensor) -> Tensor | None:
        """The whole matrix of which ``shard`` is this rank's rows, on the owner; ``None`` else."""
        group, owner, counts = self._layout(p)
        width = max(counts)
        padded = shard.new_zeros((width, *shard.shape[1:]))
        padded[: shard.shape[0]] = shard
        pieces = [torch.empty_like(padded) for _ in counts] if self.owns(p) else None
        self.bytes_sent += 0 if self.owns(p) else padded.numel() * padded.element_size()
        dst = dist.get_global_rank(group, owner)
        dist.gather(padded, gather_list=pieces, dst=dst, group=group)
        if pieces is None:
            return None
        return torch.cat([piece[:n] for piece, n in zip(pieces, counts, strict=True)])

    def scatter(self, p: DTensor, full: Tensor | None, like: Tensor) -> Tensor:
        """This rank's rows of the owner's ``full`` matrix (shaped and typed like ``like``)."""
        group, owner, counts = self._layout(p)
        width = max(counts)
        out = like.new_empty((width, *like.shape[1:]))
        pieces = None
        if self.owns(p):
            rows = full.to(like.dtype).split([n for n in counts if n], dim=0)
            rows = list(rows) + [full.new_empty((0, *full.shape[1:]))] * counts.count(0)
            pieces = []
            for piece, n in zip(rows, counts, strict=True):
                padded = out.new_zeros(out.shape)
                padded[:n] = piece
                pieces.append(padded)
            self.bytes_sent += (len(counts) - 1) * out.numel() * out.element_size()
        src = dist.get_global_rank(group, owner)
        dist.scatter(out, scatter_list=pieces, src=src, group=group)
        return out[: like.shape[0]]

    def share(self, p: DTensor, value: Tensor | None, like: Tensor) -> Tensor:
        """The owner's scalar ``value`` on every rank of ``p``'s group."""
        group, owner, _ = self._layout(p)
        out = value.clone() if value is not None else torch.zeros_like(like)
        if self.owns(p):
            self.bytes_sent += (dist.get_world_size(group) - 1) * out.numel() * out.element_size()
        dist.broadcast(out, src=dist.get_global_rank(group, owner), group=group)
        return out
