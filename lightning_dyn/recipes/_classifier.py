"""The LightningModule steps the classification recipes share, and their accuracy metrics."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_dyn._checks import check_positive_int
from lightning_dyn.functional.losses import LossFn
from lightning_dyn.optim.factory import OptimizerFactory, build_optimizer
from lightning_dyn.recipes._datamodule_settings import (
    datamodule_attributes,
    resolve_datamodule_settings,
)


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

    Subclasses call ``super().__init__()``, save their hyperparameters, set ``self.loss_fn`` and
    ``self.optimizer_factory`` (``module -> Optimizer``), implement ``build_model()`` from
    ``self.hparams`` and end their ``__init__`` with ``self.build_when_known()``. The
    hyperparameters named in ``datamodule_settings`` may be ``None``: ``setup()`` then takes
    them from the trainer's data module (a given one must agree with it) and
    ``configure_model()`` builds the network, in the strategy's init context. The number of
    classes is the hyperparameter ``classes_setting``.

    The training loss is averaged over DDP ranks (``sync_dist``) every step; the held-out loss
    is a torchmetrics ``MeanMetric`` weighted by the batch size, the mean over the whole set
    however unevenly it is sharded. The accuracy is a torchmetrics metric per stage
    (``stage_accuracies``), the accuracy of the global batch (train, every step) or of the
    whole held-out set (every epoch). The
    validation pass logs under ``held_out_stage`` (``val``; the grokking recipe says ``test``),
    ``trainer.test`` under ``test``.
    """

    datamodule_settings: tuple[str, ...] = ("num_classes",)
    classes_setting = "num_classes"
    held_out_stage = "val"
    loss_fn: LossFn
    optimizer_factory: OptimizerFactory

    def __init__(self) -> None:
        super().__init__()
        self.model: nn.Module | None = None
        self.accuracy: nn.ModuleDict | None = None
        self.held_out_loss: nn.ModuleDict | None = None

    def build_model(self) -> nn.Module:
        """The network, from ``self.hparams`` (every ``datamodule_settings`` entry known)."""
        raise NotImplementedError

    def build_when_known(self) -> None:
        """Build the network and the accuracy metrics once every data-module setting is known."""
        if self.model is not None or any(
            self.hparams[name] is None for name in self.datamodule_settings
        ):
            return
        self.model = self.build_model()
        num_classes = self.hparams[self.classes_setting]
        self.accuracy = stage_accuracies(num_classes, ("train", "val", "test"))
        # Lightning's own epoch mean (sync_dist) divides by the ranks' batch sizes averaged in
        # integers, wrong on uneven shards (5 + 4 examples: by 4, not 4.5); a float metric is not.
        self.held_out_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})

    @override
    def setup(self, stage: str) -> None:
        known = datamodule_attributes(self, self.datamodule_settings)
        resolve_datamodule_settings(self, known)

    @override
    def configure_model(self) -> None:
        self.build_when_known()

    @override
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            names = ", ".join(self.datamodule_settings)
            raise RuntimeError(
                f"{type(self).__name__} has no network yet: {names} come from the data module "
                "when the Trainer sets the module up; pass them to build it at once."
            )
        return self.model(inputs)

    def _step(self, batch: Any, stage: str, name: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = self.loss_fn(logits, labels)
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy(logits, labels)
        if stage == "train":
            self.log(f"{name}/loss", loss, batch_size=len(labels), sync_dist=True, prog_bar=True)
        else:
            mean_loss = self.held_out_loss[stage]
            mean_loss(loss.detach(), weight=len(labels))
            self.log(f"{name}/loss", mean_loss, prog_bar=True)
        self.log(f"{name}/acc", accuracy, prog_bar=True)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.held_out_stage)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", "test")

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_factory, self)
