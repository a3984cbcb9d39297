"""The layout of FSDP2-sharded tensors (``DTensor`` with ``Shard(0)``), for code that works on
local shards: this rank's rows, and the rows of a whole tensor that this rank holds."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor


def local(t: Tensor) -> Tensor:
    """This rank's shard of a ``DTensor`` (sharing its storage), else ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def whole(t: Tensor) -> Tensor:
    """The whole tensor of a ``DTensor`` (a collective: every rank calls it), else ``t``."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def row_counts(rows: int, world: int) -> list[int]:
    """Rows of each rank under ``torch.chunk`` (DTensor's ``Shard(0)``), padded to ``world``."""
    counts = [len(c) for c in torch.arange(rows).chunk(world)]
    return counts + [0] * (world - len(counts))


def rows_of(full: Tensor, like: Tensor) -> Tensor:
    """The part of ``full`` (shaped like ``like``) that this rank holds of ``like``.

    For a ``DTensor`` sharded along dim 0 (on one mesh dimension; others replicated) these are the
    rows of this rank's chunk; for anything else ``full`` itself.
    """
    if not isinstance(like, DTensor):
        return full
    shards = [(d, p) for d, p in enumerate(like.placements) if p.is_shard()]
    if not shards:
        return full
    if len(shards) > 1 or shards[0][1].dim != 0:
        raise ValueError(f"only dim-0 sharding on one mesh dimension is supported; got {shards}.")
    mesh_dim = shards[0][0]
    world = like.device_mesh.size(mesh_dim)
    coordinate = like.device_mesh.get_local_rank(mesh_dim)
    counts = row_counts(like.shape[0], world)
    start = sum(counts[:coordinate])
    return full[start : start + counts[coordinate]]
