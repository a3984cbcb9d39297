"""Image classification with a planted pair of opposing signals (arXiv 2311.04163).

A subset of each of two classes carries the same large-magnitude feature, a bright patch in the
top-left corner. The patch says nothing about the label (it is on examples of both classes), so
the two subsets pull the weights that read it in opposite directions; under full-batch gradient
descent at a large learning rate the sharp direction this creates makes the two subsets' losses
oscillate in antiphase, while the clean data alone trains stably at the same learning rate. The
planted indices are known (``planted_a``, ``planted_b``), so a detector can be scored, and
``planted=False`` gives the control: the same data and training without the patch.

Images are 8×8 grayscale: ``dataset="synthetic"`` (one random template per class plus Gaussian
noise, clipped to [0, 1]) or ``dataset="digits"`` (scikit-learn's bundled handwritten digits,
offline; needs ``pip install scikit-learn``), scaled to [0, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_dyn._checks import check_choice, check_fraction, check_positive_int
from lightning_dyn.functional.classification_losses import one_hot_square_loss
from lightning_dyn.optim.factory import OptimizerFactory
from lightning_dyn.recipes._classifier import ClassifierRecipeModule
from lightning_dyn.recipes._data import (
    TensorBatchDataset,
    TensorDataModule,
)

DATASETS = ("synthetic", "digits")
SIDE = 8


def synthetic_images(
    num_classes: int, per_class: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num_classes * per_class, 8, 8)`` images in [0, 1] and their labels, class-sorted."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, SIDE, SIDE, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = templates[labels] + noise * torch.randn(len(labels), SIDE, SIDE, generator=generator)
    return images.clamp(0.0, 1.0), labels


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits: ``(1797, 8, 8)`` in [0, 1] and labels 0-9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "dataset='digits' reads scikit-learn's bundled digits: pip install scikit-learn"
        ) from error
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    return images, torch.as_tensor(digits.target, dtype=torch.long)


class OpposingSignalsDataModule(TensorDataModule):
    """8×8 images with a bright patch planted on a subset of two classes.

    Args:
        dataset: ``synthetic`` or ``digits``.
        planted: whether to plant the patch; ``False`` is the control.
        num_classes: number of classes: any for ``synthetic``, 10 for ``digits``.
        per_class: training examples per class of the synthetic data.
        noise: standard deviation of the synthetic pixel noise.
        planted_classes: the two classes whose subsets get the patch.
        planted_fraction: fraction of each of those classes' training examples with the patch.
        patch_size: side of the square patch, in pixels.
        patch_value: pixel value of the patch (the clean pixels lie in [0, 1]).
        val_fraction: fraction of the examples held out for validation (never patched).
        seed: seed of the data, the split and the choice of patched examples.
        batch_size: ``None`` for full batch (gradient descent); under DDP each rank gets its
            shard of every batch.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        planted: bool = True,
        num_classes: int = 4,
        per_class: int = 125,
        noise: float = 1.0,
        planted_classes: Sequence[int] = (0, 1),
        planted_fraction: float = 0.25,
        patch_size: int = 3,
        patch_value: float = 12.0,
        val_fraction: float = 0.2,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, DATASETS)
        check_positive_int("num_classes", num_classes, minimum=2)
        check_positive_int("per_class", per_class, minimum=2)
        check_fraction("planted_fraction", planted_fraction, open_low=True)
        check_fraction("val_fraction", val_fraction, open_high=True)
        check_positive_int("patch_size", patch_size)
        if patch_size > SIDE:
            raise ValueError(f"patch_size must be at most {SIDE}; got {patch_size}.")
        if dataset == "digits" and num_classes != 10:
            raise ValueError(
                f"dataset='digits' has 10 classes: set num_classes=10; got {num_classes}."
            )
        planted_classes = tuple(planted_classes)
        n_classes = num_classes
        if (
            len(planted_classes) != 2
            or len(set(planted_classes)) != 2
            or not all(isinstance(c, int) and 0 <= c < n_classes for c in planted_classes)
        ):
            raise ValueError(
                f"planted_classes must be two different classes in [0, {n_classes}); got "
                f"{planted_classes!r}."
            )
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        self.save_hyperparameters()
        self.dataset, self.planted, self.num_classes = dataset, planted, n_classes
        self.per_class, self.noise, self.seed = per_class, noise, seed
        self.planted_classes, self.planted_fraction = planted_classes, planted_fraction
        self.patch_size, self.patch_value = patch_size, patch_value
        self.val_fraction, self.batch_size = val_fraction, batch_size
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None
        self.planted_a: torch.Tensor | None = None
        self.planted_b: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.dataset == "digits":
            images, labels = digits_images()
        else:
            total = round(self.per_class / (1 - self.val_fraction))
            images, labels = synthetic_images(self.num_classes, total, self.noise, self.seed)
        generator = torch.Generator().manual_seed(self.seed + 1)
        order = torch.randperm(len(labels), generator=generator)
        n_val = int(self.val_fraction * len(labels))
        train, val = order[n_val:].sort().values, order[:n_val].sort().values
        x, y = images[train].clone(), labels[train]
        # Which examples of each class carry the patch: the same ones whether planted or not,
        # so the control differs from the planted run only by the patch.
        chosen = []
        for cls in self.planted_classes:
            members = (y == cls).nonzero().flatten()
            count = max(1, round(self.planted_fraction * len(members)))
            pick = torch.randperm(len(members), generator=generator)[:count]
            chosen.append(members[pick].sort().values)
        self.planted_a, self.planted_b = chosen
        if self.planted:
            patch = slice(0, self.patch_size)
            for idx in chosen:
                x[idx, patch, patch] = self.patch_value
        self.train_set = TensorBatchDataset(x[:, None], y)
        self.val_set = TensorBatchDataset(images[val][:, None].clone(), labels[val])

    def planted_indices(self) -> list[int]:
        """Training-set indices of the patched examples (the would-be patched, if not planted)."""
        assert self.planted_a is not None, "call setup() first"
        return sorted(self.planted_a.tolist() + self.planted_b.tolist())

    def score(self, reported: Sequence[int]) -> dict[str, float]:
        """Precision and recall of ``reported`` training indices against the planted ones."""
        truth, found = set(self.planted_indices()), set(reported)
        hits = len(truth & found) if self.planted else 0
        return {
            "precision": hits / len(found) if found else float("nan"),
            "recall": hits / len(truth) if self.planted else float("nan"),
        }

    def summarize(self, trainer: pl.Trainer) -> dict[str, Any]:
        """Scores of an ``OutlierPairDetector`` among the trainer's callbacks, for the CLI."""
        from lightning_dyn.callbacks import OutlierPairDetector

        detectors = [c for c in trainer.callbacks if isinstance(c, OutlierPairDetector)]
        if not detectors:
            return {}
        scores = self.score(detectors[0].flagged_indices())
        label = "vs planted" if self.planted else "(control: nothing planted)"
        return {f"detector {k} {label}": v for k, v in scores.items()}


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
LOSSES = {"cross_entropy": F.cross_entropy, "square": one_hot_square_loss}


class ImageMLP(nn.Module):
    """Flattened image -> hidden layers -> logits; ``head`` is the last layer."""

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        num_classes: int,
        activation: str = "relu",
    ):
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip([in_features, *hidden_sizes], hidden_sizes, strict=False):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_sizes[-1] if hidden_sizes else in_features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def _default_optimizer() -> OptimizerFactory:
    return functools.partial(torch.optim.SGD, lr=0.03)


class OpposingSignalsModule(ClassifierRecipeModule):
    """MLP classifier of the 8×8 images; logs ``train/{loss,acc}`` and ``val/{loss,acc}``.

    Args:
        num_classes: number of classes; must match the data module.
        hidden_sizes: hidden widths.
        activation: ``relu`` or ``tanh`` (the edge-of-stability experiment's network).
        loss: ``cross_entropy`` or ``square`` (``½||logits - onehot||²``, Cohen et al.).
        optimizer: a factory ``params -> Optimizer``; default full-batch gradient descent
            ``SGD(lr=0.03)``, large enough for the planted pair to oscillate and small enough
            for the clean data to train stably.
    """

    def __init__(
        self,
        num_classes: int = 4,
        hidden_sizes: Sequence[int] = (128, 128),
        optimizer: OptimizerFactory | None = None,
        activation: str = "relu",
        loss: str = "cross_entropy",
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes, minimum=2)
        check_choice("loss", loss, LOSSES)
        self.loss_fn = LOSSES[loss]
        for width in hidden_sizes:
            check_positive_int("hidden_sizes[i]", width)
        self.save_hyperparameters(ignore=["optimizer"])
        self.model = ImageMLP(SIDE * SIDE, tuple(hidden_sizes), num_classes, activation)
        self.optimizer_factory = optimizer or _default_optimizer()
