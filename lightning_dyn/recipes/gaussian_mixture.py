"""Classification of a Gaussian mixture, trained far past zero training error (neural collapse).

``num_classes`` Gaussian clusters in ``input_dim`` dimensions (centres drawn once, unit-variance
noise scaled by ``noise``), an MLP, mini-batch SGD with momentum and weight decay: the setting in
which Papyan, Han & Donoho (arXiv 2008.08186) watch the last-layer features collapse onto their
class means during the terminal phase of training. ``random_labels=True`` shuffles the training
labels once: the control, which the network must memorise.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from lightning_dyn._checks import check_bool, check_positive_int, check_real
from lightning_dyn.functional.losses import ClassificationLoss, classification_loss
from lightning_dyn.optim.factory import OptimizerFactory
from lightning_dyn.recipes._classifier import ClassifierRecipeModule
from lightning_dyn.recipes._data import (
    TensorBatchDataset,
    TensorDataModule,
)
from lightning_dyn.recipes._mlp import hidden_layers
from lightning_dyn.recipes._optimizer import recipe_optimizer


class GaussianMixtureDataModule(TensorDataModule):
    """``num_classes`` Gaussian clusters; train and validation sets drawn from the same mixture.

    Args:
        num_classes: number of clusters (classes).
        input_dim: dimension of the inputs.
        per_class: training examples per class (validation: a quarter of that).
        noise: standard deviation of the noise around each centre (the centres are N(0, I)).
        random_labels: shuffle the training labels once (the control).
        seed: seed of the centres, the noise and the shuffle.
        batch_size: mini-batch size; ``None`` for full batch.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_dim: int = 32,
        per_class: int = 100,
        noise: float = 1.0,
        random_labels: bool = False,
        seed: int = 0,
        batch_size: int | None = 50,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes, minimum=2)
        check_positive_int("input_dim", input_dim)
        check_positive_int("per_class", per_class, minimum=4)
        check_real("noise", noise)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        self.save_hyperparameters()
        self.num_classes, self.input_dim, self.per_class = num_classes, input_dim, per_class
        self.noise, self.random_labels, self.seed = noise, random_labels, seed
        self.batch_size = batch_size
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        gen = torch.Generator().manual_seed(self.seed)
        centres = torch.randn(self.num_classes, self.input_dim, generator=gen)

        def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.arange(self.num_classes).repeat_interleave(per_class)
            noise = torch.randn(len(labels), self.input_dim, generator=gen)
            return centres[labels] + self.noise * noise, labels

        x, y = draw(self.per_class)
        if self.random_labels:
            y = y[torch.randperm(len(y), generator=gen)]
        self.train_set = TensorBatchDataset(x, y)
        self.val_set = TensorBatchDataset(*draw(max(1, self.per_class // 4)))


class MixtureMLP(nn.Module):
    """``depth`` hidden layers (Linear, optional BatchNorm, ReLU); a biased linear ``head``."""

    def __init__(
        self, input_dim: int, width: int, depth: int, num_classes: int, batch_norm: bool = False
    ) -> None:
        super().__init__()
        sizes = [input_dim, *[width] * depth]
        self.body = nn.Sequential(*hidden_layers(sizes, nn.ReLU, batch_norm=batch_norm))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class GaussianMixtureModule(ClassifierRecipeModule):
    """The MLP classifier; logs ``train/{loss,acc}`` and ``val/{loss,acc}``.

    Args:
        num_classes: number of classes; ``None``: the data module's, read in ``setup()``.
        input_dim: dimension of the inputs; ``None``: the data module's.
        width: hidden width.
        depth: number of hidden layers.
        batch_norm: BatchNorm after each hidden linear layer, as in Papyan et al.'s networks;
            with it NC1 falls about 6x further at this scale (``experiment=neural_collapse``).
        loss: a name of :data:`~lightning_dyn.functional.CLASSIFICATION_LOSSES` (``softmax``,
            ``stablemax``, ``square``).
        optimizer: ``module -> Optimizer`` (:func:`~lightning_dyn.optim.build_optimizer`);
            ``None``: the recipe config's, SGD(lr 0.05, momentum 0.9, weight decay 5e-4),
            Papyan et al.'s optimiser.
    """

    datamodule_settings = ("num_classes", "input_dim")

    def __init__(
        self,
        num_classes: int | None = None,
        input_dim: int | None = None,
        width: int = 128,
        depth: int = 3,
        batch_norm: bool = False,
        loss: ClassificationLoss = "softmax",
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        check_bool("batch_norm", batch_norm)
        for name, value in (("width", width), ("depth", depth)):
            check_positive_int(name, value)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes, minimum=2)
        if input_dim is not None:
            check_positive_int("input_dim", input_dim)
        self.save_hyperparameters(ignore=["optimizer"])
        self.loss_fn = classification_loss(loss)
        self.optimizer_factory = optimizer or recipe_optimizer("gaussian_mixture")
        self.build_when_known()

    @override
    def build_model(self) -> nn.Module:
        hp = self.hparams
        return MixtureMLP(hp.input_dim, hp.width, hp.depth, hp.num_classes, hp.batch_norm)
