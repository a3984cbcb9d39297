"""Fast in-memory data plumbing shared by the recipes.

Recipes keep their whole data set as tensors. Fetching a batch is one advanced-indexing call
(``__getitems__``) instead of one ``__getitem__`` per example plus a stacking collate, which
matters for full-batch training where the loader would otherwise dominate the step time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from typing_extensions import override


class TensorBatchDataset(Dataset):
    """Tensors of equal first dimension, fetched a whole batch at a time."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            lengths = [len(t) for t in tensors]
            raise ValueError(f"tensors must be non-empty with equal lengths; got {lengths}.")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def keep_batch(batch: Any) -> Any:
    """Collate function for :class:`TensorBatchDataset`: the batch is already stacked."""
    return batch


def tensor_loader(
    dataset: TensorBatchDataset, batch_size: int, sampler: Sampler[int] | None = None
) -> DataLoader:
    """A single-process ``DataLoader`` over ``dataset`` that fetches whole batches at once."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=keep_batch)


def world_and_rank(trainer: Any) -> tuple[int, int]:
    """How many shards and which one a data module's trainer asks for; ``(1, 0)`` without one.

    The strategy's ``distributed_sampler_kwargs`` when it has them (what Lightning's own sampler
    injection uses, so ``ExpertParallelStrategy`` gives every rank the whole set), else
    ``(world_size, global_rank)``.
    """
    if not trainer:
        return 1, 0
    kwargs = getattr(getattr(trainer, "strategy", None), "distributed_sampler_kwargs", None)
    if kwargs:
        return kwargs["num_replicas"], kwargs["rank"]
    return trainer.world_size, trainer.global_rank


def shuffled_shard_loader(
    dataset: TensorBatchDataset, batch_size: int, trainer: Any, seed: int
) -> DataLoader:
    """The training loader of the recipes: reshuffled every epoch, each DDP rank its shard.

    The permutation is drawn from ``seed + epoch`` (Lightning calls ``set_epoch``), so a resumed
    run sees the same batches as one that never stopped; with one batch per epoch the full batch
    is the whole training set across ranks.
    """
    world, rank = world_and_rank(trainer)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return tensor_loader(dataset, batch_size, sampler=sampler)


class TensorDataModule(pl.LightningDataModule):
    """The loaders of a data module whose ``setup`` fills ``train_set`` and ``val_set``.

    Training: :func:`shuffled_shard_loader` with ``batch_size`` (``None``: the whole set, full
    batch) and ``seed``; validation and test: the validation set in batches of
    ``eval_batch_size`` (``None``: the whole shard as one batch). Under DDP each rank
    evaluates its shard *without padding* (Lightning's ``UnrepeatedDistributedSampler``;
    its default sampler repeats examples to even the shards), so the accuracy and loss of an
    odd-sized set count each example once and equal the 1-process numbers. Subclasses set
    ``batch_size``, ``seed`` and ``train_set = val_set = None`` in ``__init__``.
    """

    train_set: TensorBatchDataset | None
    val_set: TensorBatchDataset | None
    batch_size: int | None
    eval_batch_size: int | None = None
    seed: int

    @override
    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        batch_size = self.batch_size or len(self.train_set)
        return shuffled_shard_loader(self.train_set, batch_size, self.trainer, self.seed)

    @override
    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        world, rank = world_and_rank(self.trainer)
        if world == 1:
            return tensor_loader(self.val_set, self.eval_batch_size or len(self.val_set))
        if len(self.val_set) < world:
            raise ValueError(
                f"{type(self).__name__}: {len(self.val_set)} validation examples cannot give "
                f"each of the {world} ranks at least one; make the validation set larger."
            )
        sampler = UnrepeatedDistributedSampler(
            self.val_set, num_replicas=world, rank=rank, shuffle=False
        )
        batch_size = self.eval_batch_size or len(sampler)
        return tensor_loader(self.val_set, batch_size, sampler=sampler)

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
