"""DDP in which every rank sees the same batches, for experts split over the ranks.

``HardConstraintMoE`` under a process group solves experts ``r::world`` on rank ``r`` and
all-gathers the solutions, which needs the SAME basis (the same batch) on every rank; its
gradients are right after DDP's all-reduce average (see its docstring). This strategy is
Lightning's ``DDPStrategy`` with one change, the sampler arguments: ``num_replicas=1, rank=0``,
so Lightning's injected ``DistributedSampler`` (and the recipes' own shard loaders, which read
the same arguments) give every rank the whole data set in the same order. Gradient averaging,
checkpointing, launch (``start_method="spawn"`` for ``ddp_spawn``) and the backend are DDP's.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from typing_extensions import override


def _expert_parallel_layers(module: nn.Module) -> list[nn.Module]:
    from lightning_dyn.nn.hard_constraint_moe import HardConstraintMoE

    return [
        m
        for m in module.modules()
        if isinstance(m, HardConstraintMoE)
        and m.expert_parallel is not False
        and not (m.interface_rows and m.experts > 1)
    ]


class ExpertParallelStrategy(DDPStrategy):
    """``DDPStrategy`` that replicates the data on every rank, for expert parallelism.

    Use it with a module holding a :class:`~lightning_dyn.nn.HardConstraintMoE` whose
    ``expert_parallel`` is ``"auto"`` or ``True``; every other argument is ``DDPStrategy``'s, e.g.
    ``ExpertParallelStrategy(process_group_backend="gloo")`` on CPU (NCCL is DDP's default on
    GPU) or ``start_method="spawn"``.

    Raises:
        ValueError: At setup, if the module holds no such layer (the ranks would then only
            repeat the same work), e.g. a ``HardConstraintMoE`` with ``expert_parallel=False`` or
            with ``interface_rows=True`` (a coupled solve that is not split).
    """

    strategy_name = "expert_parallel"

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # Every rank reads the whole data set in the same order: the experts, not the batch,
        # are split over the ranks.
        return {"num_replicas": 1, "rank": 0}

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        if not _expert_parallel_layers(self.lightning_module):
            raise ValueError(
                "ExpertParallelStrategy needs a HardConstraintMoE with expert_parallel='auto' or "
                "True (and interface_rows=False) in the LightningModule; found none, so the ranks "
                "would only repeat each other's work. Use DDPStrategy for data parallelism."
            )
        super().setup(trainer)
