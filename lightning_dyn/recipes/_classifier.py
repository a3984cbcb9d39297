"""The LightningModule steps the classification recipes share, and their accuracy metrics."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_dyn._checks import check_positive_int
from lightning_dyn.functional.losses import LossFn
from lightning_dyn.optim.factory import OptimizerFactory, build_optimizer


def stage_accuracies(num_classes: int, stages: tuple[str, ...]) -> nn.ModuleDict:
    """``{"<stage>_acc": MulticlassAccuracy}``: the fraction of argmax predictions that are right.

    Log one with ``self.log("<stage>/acc", metric)`` after calling it on ``(logits, labels)``.
    ``train`` is logged every step, so its batch value is synchronised over the DDP ranks within
    the step (``dist_sync_on_step``): the accuracy of the step's global batch. The other stages
    are logged per epoch, where ``compute()`` sums the right and total counts over the ranks: the
    accuracy of the whole set. Labels are not validated again (the loss has checked them).
    """
    check_positive_int("num_classes", num_classes, minimum=2)
    return nn.ModuleDict(
        {
            f"{stage}_acc": MulticlassAccuracy(
                num_classes,
                average="micro",
                dist_sync_on_step=stage == "train",
                validate_args=False,
            )
            for stage in stages
        }
    )


class ClassifierRecipeModule(pl.LightningModule):
    """``model`` on inputs, ``loss_fn(logits, labels)``; logs ``<stage>/loss`` and ``<stage>/acc``.

    Subclasses call ``super().__init__(num_classes)`` and set ``self.model``, ``self.loss_fn`` and
    ``self.optimizer_factory`` (``module -> Optimizer``) in their ``__init__``. The loss is
    averaged over DDP ranks
    (``sync_dist``) and weighted by the batch size; the accuracy is a torchmetrics metric per
    stage (``stage_accuracies``), the accuracy of the global batch (train, every step) or of the
    whole validation set (every epoch).
    """

    model: torch.nn.Module
    loss_fn: LossFn
    optimizer_factory: OptimizerFactory

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.accuracy = stage_accuracies(num_classes, ("train", "val"))

    @override
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = self.loss_fn(logits, labels)
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy(logits, labels)
        self.log(f"{stage}/loss", loss, batch_size=len(labels), sync_dist=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_factory, self)
