"""The LightningModule steps the classification recipes share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_dyn.optim.factory import OptimizerFactory, build_optimizer


class ClassifierRecipeModule(pl.LightningModule):
    """``model`` on inputs, ``loss_fn(logits, labels)``; logs ``<stage>/loss`` and ``<stage>/acc``.

    Subclasses set ``self.model``, ``self.loss_fn`` and ``self.optimizer_factory`` in their
    ``__init__``. Both logged values are averaged over DDP ranks (``sync_dist``) and weighted by
    the batch size.
    """

    model: torch.nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer_factory: OptimizerFactory

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = self.loss_fn(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        n = len(labels)
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, batch_size=n, sync_dist=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_factory, self)
