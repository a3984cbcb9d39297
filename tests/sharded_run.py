"""Train one registry entry on 2 CPU processes under FSDP2 or DDP and save each rank's report.

``python tests/sharded_run.py <entry id> <out dir> fsdp|ddp <steps> [<save every> | resume
<checkpoint>]``: optionally saving a checkpoint every so many steps, or resuming from one.
Lightning launches the
second process by running this script again (its subprocess launcher, the one
``ModelParallelStrategy`` uses), so the comparison in ``test_sharded.py`` runs both strategies
through the same launcher. Under ``fsdp`` the module gets a ``configure_model`` that applies
``torch.distributed.fsdp.fully_shard`` to every leaf module holding parameters and then to the
root, on a 1-D data-parallel mesh: parameters and gradients become ``DTensor`` shards, as in a
user's FSDP2 model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
from harness import REGISTRY, RankReport, checkpoint_every, make_trainer
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.fsdp import fully_shard


def shard_leaves(module: pl.LightningModule) -> None:
    """``fully_shard`` every leaf module with parameters, then the root (the FSDP2 recipe)."""
    mesh = module.device_mesh["data_parallel"]
    for leaf in module.modules():
        if not list(leaf.children()) and any(True for _ in leaf.parameters(recurse=False)):
            fully_shard(leaf, mesh=mesh)
    fully_shard(module, mesh=mesh)


def sharded(module: pl.LightningModule) -> pl.LightningModule:
    """``module`` with a ``configure_model`` that shards it (a subclass made on the fly)."""
    cls = type(module)
    module.__class__ = type(f"Sharded{cls.__name__}", (cls,), {"configure_model": shard_leaves})
    return module


def strategy(name: str) -> pl.strategies.Strategy:
    if name == "fsdp":
        return ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo"
        )
    return DDPStrategy(process_group_backend="gloo")


def main(entry_id: str, out: Path, name: str, steps: int, extra: list[str]) -> None:
    entry = next(e for e in REGISTRY if e.id == entry_id)
    module, data, callbacks = entry.build()
    if name == "fsdp":
        module = sharded(module)
    out.mkdir(parents=True, exist_ok=True)
    callbacks = [*callbacks, RankReport(out)]
    ckpt_path = None
    if extra and extra[0] == "resume":
        ckpt_path = extra[1]
    elif extra:
        callbacks.append(checkpoint_every(int(extra[0]), out / "ckpt"))
    trainer = make_trainer(
        entry, steps, out, strategy=strategy(name), devices=2, callbacks=callbacks
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:])
