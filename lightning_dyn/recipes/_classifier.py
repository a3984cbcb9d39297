"""The training/validation step the classification recipes share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch


def classification_step(
    module: pl.LightningModule,
    batch: Any,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stage: str,
) -> torch.Tensor:
    """Loss of a batch ``(inputs, labels)``; logs ``<stage>/loss`` and ``<stage>/acc``.

    Both are averaged over DDP ranks (``sync_dist``) and weighted by the batch size.
    """
    inputs, labels = batch
    logits = module(inputs)
    loss = loss_fn(logits, labels)
    accuracy = (logits.argmax(-1) == labels).float().mean()
    n = len(labels)
    module.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True, prog_bar=True)
    module.log(f"{stage}/acc", accuracy, batch_size=n, sync_dist=True, prog_bar=True)
    return loss
