"""ExpertParallelStrategy: DDP with the data replicated, so HardConstraintMoE can split experts.

The registry (tests/harness.py) trains it under 2-process ``ddp_spawn`` against one process to
1e-10; here: that the ranks really split the experts and see the same batches, and the errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from harness import quiet_trainer

from lightning_dyn.recipes import PDEDataModule, PDEModule
from lightning_dyn.strategies import ExpertParallelStrategy

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = {"n_x": 16, "n_t": 9}


def _pair(**kwargs) -> tuple[PDEModule, PDEDataModule]:
    module = PDEModule(n_basis=4, width=16, figure=False, **GRID, **kwargs)
    return module, PDEDataModule(**GRID, n_train=4, n_val=2, batch_size=2)


class _Record(pl.Callback):
    """Per rank: the (world, rank) the MoE split over and the first sample of every batch."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append((pl_module.solver._world(), batch[0][:, 0].tolist()))

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(self.seen, self.directory / f"rank{trainer.global_rank}.pt")


@pytest.mark.ddp
def test_ranks_split_the_experts_and_see_the_same_batches(tmp_path: Path) -> None:
    module, data = _pair(constraint="moe", experts=2, partition=(1, 2))
    strategy = ExpertParallelStrategy(start_method="spawn", process_group_backend="gloo")
    trainer = quiet_trainer(
        tmp_path, max_steps=3, strategy=strategy, devices=2, callbacks=[_Record(tmp_path)]
    )
    trainer.fit(module, datamodule=data)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert [w for w, _ in rank0] == [(2, 0)] * 3 and [w for w, _ in rank1] == [(2, 1)] * 3
    assert [b for _, b in rank0] == [b for _, b in rank1]  # the same batches on both ranks
    assert len({tuple(b) for _, b in rank0}) > 1  # and not the same batch every step


def test_sampler_arguments_replicate_the_data() -> None:
    assert ExpertParallelStrategy().distributed_sampler_kwargs == {"num_replicas": 1, "rank": 0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"constraint": "hard"},
        {"constraint": "moe", "experts": 2, "partition": (1, 2), "expert_parallel": False},
        {"constraint": "moe", "experts": 2, "partition": (1, 2), "interface_rows": True},
    ],
)
def test_a_module_without_split_experts_is_refused(kwargs: dict, tmp_path: Path) -> None:
    module, data = _pair(**kwargs)
    strategy = ExpertParallelStrategy(process_group_backend="gloo")
    trainer = quiet_trainer(tmp_path, max_steps=1, strategy=strategy, devices=1)
    # In-process DDP writes MASTER_PORT, LOCAL_RANK, WORLD_SIZE ... into os.environ; a later
    # `lightning-dyn trainer=ddp_cpu` subprocess would inherit them, believe it was launched as
    # rank 0 of an external job and wait for a rank 1 that never comes.
    environment = dict(os.environ)
    try:
        with pytest.raises(ValueError, match="HardConstraintMoE with expert_parallel"):
            trainer.fit(module, datamodule=data)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)
