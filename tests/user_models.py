"""Models written the way a user would, with nothing from ``lightning_dyn``.

Plugins must work dropped into such a ``Trainer``. Four families, as users bring them:

- :class:`UserCNN` with :class:`UserImageData`: ``(images, labels)`` batches, BatchNorm and
  dropout optional, plain SGD (or the optimizer the user's factory builds);
- :class:`UserDictCNN`: the same network reading dict batches ``{"image", "label"}``;
- :class:`UserBoring`: Lightning's ``BoringModel`` (bare-tensor batches, a regression loss);
- :class:`UserTransformer` with :class:`TokenData`: Lightning's demo ``Transformer``
  (``nn.Transformer``, so ``scaled_dot_product_attention``), a two-argument ``forward(inputs,
  target)`` returning flattened log-probabilities, per-token targets.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.demos import LightningTransformer, Transformer
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class UserCNN(pl.LightningModule):
    """A small convolutional classifier of ``(N, 1, 8, 8)`` images.

    ``optimizer`` is a user's factory ``module -> Optimizer`` (e.g. one that returns LANTON);
    ``None`` is SGD with ``lr`` and ``momentum``. ``criterion`` replaces ``F.cross_entropy``.
    """

    def __init__(
        self,
        num_classes: int = 3,
        lr: float = 0.05,
        batch_norm: bool = False,
        momentum: float = 0.0,
        dropout: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        criterion: Callable | None = None,
    ):
        super().__init__()
        self.lr, self.momentum, self.optimizer_factory = lr, momentum, optimizer
        self.criterion = criterion or F.cross_entropy
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
            nn.Dropout(dropout) if dropout else nn.Identity(),
        )
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train/loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class UserDictCNN(UserCNN):
    """:class:`UserCNN` whose batches are dicts ``{"image": ..., "label": ...}``."""

    def training_step(self, batch, batch_idx):
        loss = self.criterion(self(batch["image"]), batch["label"])
        self.log("train/loss", loss, sync_dist=True)
        return loss


class _DictDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class UserImageData(pl.LightningDataModule):
    """``n`` random images in 3 classes (class-dependent mean), one full batch per step.

    ``batch_size`` splits them into smaller batches; ``as_dict`` yields dict batches; ``n_val``
    more images are drawn for :class:`UserImageDataWithVal`.
    """

    def __init__(
        self,
        n: int = 48,
        num_classes: int = 3,
        seed: int = 0,
        batch_size: int | None = None,
        as_dict: bool = False,
        n_val: int = 0,
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        total = n + n_val
        self.y = torch.arange(total) % num_classes
        self.x = torch.randn(total, 1, 8, 8, generator=gen) + self.y[:, None, None, None].float()
        self.n, self.batch_size, self.as_dict = n, batch_size or n, as_dict

    def _dataset(self, rows: slice) -> Dataset:
        if self.as_dict:
            return _DictDataset(self.x[rows], self.y[rows])
        return TensorDataset(self.x[rows], self.y[rows])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(slice(0, self.n)), batch_size=self.batch_size)


class UserImageDataWithVal(UserImageData):
    """:class:`UserImageData` with ``n_val`` more images as one validation batch."""

    def __init__(self, n_val: int = 16, **kwargs) -> None:
        super().__init__(n_val=n_val, **kwargs)

    def val_dataloader(self) -> DataLoader:
        rows = slice(self.n, len(self.y))
        return DataLoader(self._dataset(rows), batch_size=len(self.y) - self.n)


class UserBoring(BoringModel):
    """Lightning's ``BoringModel`` with batches of 16 and, optionally, the user's optimizer."""

    def __init__(self, optimizer: OptimizerFactory | None = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer

    def training_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("train/loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self)
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 16), batch_size=16)


class UserTransformer(LightningTransformer):
    """Lightning's demo Transformer at toy size: predict each token's successor mod ``vocab``."""

    def __init__(self, vocab_size: int = 11, optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(vocab_size=vocab_size)
        self.model = Transformer(vocab_size, ninp=16, nhead=2, nhid=32, nlayers=1, dropout=0.0)
        self.optimizer_factory = optimizer

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self)
        return torch.optim.SGD(self.model.parameters(), lr=0.1)

    def prepare_data(self) -> None:
        pass  # the demo downloads WikiText-2: no network here, TokenData brings the data

    def train_dataloader(self):
        return None


class TokenData(pl.LightningDataModule):
    """``n`` random token sequences of length ``t``; the target of each token is its successor."""

    def __init__(
        self, n: int = 16, t: int = 6, vocab_size: int = 11, seed: int = 0, batch_size: int = 16
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        gen = torch.Generator().manual_seed(seed)
        self.inputs = torch.randint(0, vocab_size, (n, t), generator=gen)
        self.targets = (self.inputs + 1) % vocab_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.inputs, self.targets), batch_size=self.batch_size)
