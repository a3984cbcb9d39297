"""Models written the way a user would, with nothing from ``lightning_dyn``.

Callbacks must work dropped into such a ``Trainer``: batches are ``(images, labels)``, the
module logs ``train/loss`` itself and optimises with plain SGD.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class UserCNN(pl.LightningModule):
    """A small convolutional classifier of ``(N, 1, 8, 8)`` images."""

    def __init__(
        self, num_classes: int = 3, lr: float = 0.05, batch_norm: bool = False, momentum=0.0
    ):
        super().__init__()
        self.lr, self.momentum = lr, momentum
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8) if batch_norm else nn.Identity(),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, 16),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class UserImageData(pl.LightningDataModule):
    """``n`` random images in 3 classes (class-dependent mean), one full batch per step."""

    def __init__(self, n: int = 48, num_classes: int = 3, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % num_classes
        self.x = torch.randn(n, 1, 8, 8, generator=gen) + self.y[:, None, None, None].float()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=len(self.y))
