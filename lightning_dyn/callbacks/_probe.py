"""A fixed probe set of training examples, sharded over DDP ranks.

Callbacks that re-measure the same examples during training (losses, features, gradients) draw
them once, keep this rank's share on the device, and gather per-example results by probe
position, so every rank sees the whole probe in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from lightning_dyn.callbacks._measurement import training_batch


def take(batch: Any, index: Tensor) -> Any:
    """Rows ``index`` of every tensor in a (nested tuple / list / dict) batch."""
    if isinstance(batch, Tensor):
        return batch[index.to(batch.device)]
    if isinstance(batch, Mapping):
        return {k: take(v, index) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(take(v, index) for v in batch)
    raise TypeError(f"a probe batch may hold tensors, tuples, lists and dicts; got {type(batch)}.")


def concat(batches: Sequence[Any]) -> Any:
    """Concatenate batches of the same structure along dimension 0."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.cat([b.cpu() for b in batches])
    if isinstance(first, Mapping):
        return {k: concat([b[k] for b in batches]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(concat(parts) for parts in zip(*batches, strict=True))
    raise TypeError(f"a probe batch may hold tensors, tuples, lists and dicts; got {type(first)}.")


def batch_length(batch: Any) -> int:
    """Number of examples of a batch: the length of its first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch
    return batch_length(next(iter(values)))


@dataclass
class Probe:
    """The probe: ``size`` examples; this rank holds ``positions`` of them in ``batch``.

    ``indices[p]`` is the dataset index of probe position ``p`` (its position in the loader when
    the probe came from a ``DataLoader``).
    """

    size: int
    indices: Tensor
    positions: Tensor
    batch: Any
    dataset: Any = None  # fetch examples again from here ...
    whole: Any = None  # ... or take them from the whole probe batch kept on the CPU

    def examples(self, positions: Tensor, loader: DataLoader | None) -> Any:
        """The examples at ``positions`` (CPU), for pictures in reports."""
        if self.whole is not None:
            return take(self.whole, positions.cpu())
        return _fetch(self.dataset, self.indices[positions.cpu()].tolist(), loader)


def _fetch(dataset: Any, indices: list[int], loader: DataLoader) -> Any:
    if hasattr(dataset, "__getitems__"):
        return loader.collate_fn(dataset.__getitems__(indices))
    return loader.collate_fn([dataset[i] for i in indices])


def build_probe(
    trainer: pl.Trainer,
    probe: Sequence[int] | DataLoader | None,
    probe_size: int,
    seed: int,
    first: bool = False,
) -> Probe:
    """Draw the probe and move this rank's share (every ``world_size``-th position) to device.

    The share is converted as Lightning converts a training batch (precision, transfer hooks:
    ``_measurement.training_batch``). A probe with fewer examples than ranks is refused.

    ``probe`` is a list of training-set indices, a ``DataLoader`` read once in full, or ``None``
    for ``probe_size`` training examples drawn at random (fixed by ``seed``), sorted by index, or
    with ``first=True`` the first ``probe_size`` examples by index.
    """
    world, rank = trainer.world_size, trainer.global_rank
    if isinstance(probe, DataLoader):
        full = concat(list(probe))
        size = batch_length(full)
        _check_size(size, world)
        indices = torch.arange(size)
        positions = torch.arange(rank, size, world)
        local = training_batch(trainer, take(full, positions))
        return Probe(size, indices, positions, local, whole=full if rank == 0 else None)
    loader = trainer.train_dataloader
    if loader is None or not hasattr(loader, "dataset"):
        raise ValueError(
            "the probe is drawn from the training set, which needs a map-style training "
            f"DataLoader; got {type(loader).__name__}. Where the callback takes a probe "
            "argument, pass a DataLoader as probe instead."
        )
    dataset = loader.dataset
    n = len(dataset)
    if probe is None and first:
        indices = torch.arange(min(probe_size, n))
    elif probe is None:
        gen = torch.Generator().manual_seed(seed)
        indices = torch.randperm(n, generator=gen)[: min(probe_size, n)].sort().values
    else:
        indices = torch.as_tensor(list(probe), dtype=torch.long)
        if indices.ndim != 1 or indices.numel() == 0:
            raise ValueError(f"probe must be a non-empty list of indices; got {list(probe)!r}.")
        bad = indices[(indices < 0) | (indices >= n)]
        if bad.numel():
            raise ValueError(
                f"probe holds indices outside the training set [0, {n}): {bad[:5].tolist()}."
            )
    _check_size(len(indices), world)
    positions = torch.arange(rank, len(indices), world)
    local = training_batch(trainer, _fetch(dataset, indices[positions].tolist(), loader))
    return Probe(len(indices), indices, positions, local, dataset=dataset)


def _check_size(size: int, world: int) -> None:
    # Every rank knows the probe's size, so every rank refuses alike: none waits in a collective.
    if size < world:
        raise ValueError(
            f"the probe has {size} examples, fewer than the {world} ranks that share it (a rank "
            "would measure nothing); use a probe of at least one example per rank."
        )


def gather_by_position(trainer: pl.Trainer, probe: Probe, values: Tensor) -> Tensor:
    """Assemble per-example ``values`` of this rank's share into the whole probe, on every rank.

    ``values`` is ``(len(probe.positions), ...)``. Shards differ in length by at most one, so
    they are padded to equal length for ``all_gather`` and the padding is dropped by position.
    """
    if trainer.world_size == 1:
        return values
    world = trainer.world_size
    per_rank = -(-probe.size // world)
    padded = values.new_zeros((per_rank, *values.shape[1:]))
    padded[: len(values)] = values
    gathered = trainer.strategy.all_gather(padded)  # (world, per_rank, ...)
    # Rank r holds positions r, r + world, ...: interleave the shards back into probe order.
    full = gathered.transpose(0, 1).reshape(per_rank * world, *values.shape[1:])
    return full[: probe.size]


def unpadded_length(loader: Any) -> int | None:
    """How many of this rank's examples in ``loader`` are real, or ``None`` if all are.

    ``DistributedSampler`` (which Lightning injects under DDP) pads the index list by repeating
    its first indices until every rank gets the same number, ``ceil(n / world)``; global position
    ``i`` goes to rank ``i % world``, so the padding is the tail of each rank's pass, after the
    first ``len(range(rank, n, world))`` examples. A monitor that streams a loader stops there to
    count every example once.
    """
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is not None and hasattr(batch_sampler, "sampler"):
        sampler = batch_sampler.sampler
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    n = len(sampler.dataset)
    if n % sampler.num_replicas == 0:
        return None
    return len(range(sampler.rank, n, sampler.num_replicas))


def chunked(rows: Tensor, batch_size: int, most: int | None = None) -> list[Tensor]:
    """``rows`` in chunks of at most ``batch_size``; with ``most`` (the largest number of rows
    any rank has) padded with empty chunks to the count every rank then has.

    Under FSDP2 each forward pass all-gathers the weights, a collective: every rank must make
    the same number of passes, also one whose share is smaller or empty.
    """
    chunks = list(rows.split(batch_size))
    if most is not None:
        chunks += [rows[:0]] * (-(-most // batch_size) - len(chunks))
    return chunks
