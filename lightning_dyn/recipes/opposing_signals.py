"""Classification with a planted pair of opposing signals (arXiv 2311.04163).

A subset of each of two classes carries the same large-magnitude feature: a bright patch in the
top-left corner of an image, or one fixed direction added to a Gaussian input. The feature says
nothing about the label (it is on examples of both classes), so
the two subsets pull the weights that read it in opposite directions; under full-batch gradient
descent at a large learning rate the sharp direction this creates makes the two subsets' losses
oscillate in antiphase, while the clean data alone trains stably at the same learning rate. The
planted indices are known (``planted_a``, ``planted_b``), so a detector can be scored, and
``planted=False`` gives the control: the same data and training without the patch.

Inputs: ``dataset="gaussian"`` (``input_dim``-dimensional Gaussian classes), or 8×8 grayscale
images, ``dataset="synthetic"`` (one random template per class plus Gaussian noise, clipped to
[0, 1]) or ``dataset="digits"`` (scikit-learn's bundled handwritten digits, offline; needs
``pip install scikit-learn``), scaled to [0, 1]. Models: an MLP or a small CNN (images only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_dyn._checks import check_choice, check_fraction, check_positive_int, check_real
from lightning_dyn.functional.losses import ClassificationLoss, classification_loss
from lightning_dyn.optim.factory import OptimizerFactory
from lightning_dyn.recipes._classifier import ClassifierRecipeModule
from lightning_dyn.recipes._data import (
    TensorBatchDataset,
    TensorDataModule,
)
from lightning_dyn.recipes._mlp import hidden_layers
from lightning_dyn.recipes._optimizer import recipe_optimizer

Dataset = Literal["synthetic", "digits", "gaussian"]
DATASETS: tuple[str, ...] = get_args(Dataset)
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


def gaussian_classes(
    num_classes: int, per_class: int, dim: int, separation: float, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num_classes * per_class, dim)`` points and labels, class-sorted.

    Class means are Gaussian with expected norm ``separation``; points add isotropic noise of
    standard deviation ``noise`` per coordinate.
    """
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=generator) * (separation / dim**0.5)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    points = means[labels] + noise * torch.randn(len(labels), dim, generator=generator)
    return points, labels


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
    """Gaussian points or 8×8 images with one large feature planted on a subset of two classes.

    Args:
        dataset: ``gaussian``, ``synthetic`` (images) or ``digits`` (images).
        planted: whether to plant the patch; ``False`` is the control.
        num_classes: number of classes: any for ``synthetic``, 10 for ``digits``.
        per_class: training examples per class of the generated data (gaussian, synthetic).
        noise: standard deviation of the generated noise (per coordinate or pixel).
        input_dim: dimension of the gaussian inputs.
        class_separation: expected norm of the gaussian class means.
        planted_classes: the two classes whose subsets get the patch.
        planted_fraction: fraction of each of those classes' training examples with the feature.
        patch_size: side of the square patch, in pixels (images).
        planted_strength: images: pixel value of the patch (clean pixels lie in [0, 1]);
            gaussian: norm of the planted vector (a fixed random direction).
        val_fraction: fraction of the examples held out for validation (never planted).
        seed: seed of the data, the split and the choice of patched examples.
        batch_size: ``None`` for full batch (gradient descent); under DDP each rank gets its
            shard of every batch.
    """

    def __init__(
        self,
        dataset: Dataset = "synthetic",
        planted: bool = True,
        num_classes: int = 4,
        per_class: int = 125,
        noise: float = 1.0,
        input_dim: int = 64,
        class_separation: float = 3.0,
        planted_classes: Sequence[int] = (0, 1),
        planted_fraction: float = 0.25,
        patch_size: int = 3,
        planted_strength: float = 12.0,
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
        check_positive_int("input_dim", input_dim)
        check_real("class_separation", class_separation, strictly_positive=True)
        check_real("planted_strength", planted_strength, strictly_positive=True)
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
        self.patch_size, self.planted_strength = patch_size, planted_strength
        self.input_dim, self.class_separation = input_dim, class_separation
        self.val_fraction, self.batch_size = val_fraction, batch_size
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None
        self.planted_a: torch.Tensor | None = None
        self.planted_b: torch.Tensor | None = None

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        total = round(self.per_class / (1 - self.val_fraction))
        if self.dataset == "digits":
            images, labels = digits_images()
        elif self.dataset == "gaussian":
            images, labels = gaussian_classes(
                self.num_classes,
                total,
                self.input_dim,
                self.class_separation,
                self.noise,
                self.seed,
            )
        else:
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
            for idx in chosen:
                x[idx] = self._plant(x[idx])
        # Images get their channel axis; gaussian points stay vectors.
        add_channel = (lambda t: t[:, None]) if self.dataset != "gaussian" else (lambda t: t)
        self.train_set = TensorBatchDataset(add_channel(x), y)
        self.val_set = TensorBatchDataset(add_channel(images[val].clone()), labels[val])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(input_dim,)`` or ``(1, 8, 8)``."""
        return (self.input_dim,) if self.dataset == "gaussian" else (1, SIDE, SIDE)

    def _plant(self, x: torch.Tensor) -> torch.Tensor:
        if self.dataset == "gaussian":
            # One direction for both classes, drawn from the seed alone: the same in every call.
            generator = torch.Generator().manual_seed(self.seed + 2)
            direction = torch.randn(self.input_dim, generator=generator)
            return x + self.planted_strength * direction / direction.norm()
        patch = slice(0, self.patch_size)
        x = x.clone()
        x[:, patch, patch] = self.planted_strength
        return x

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


Activation = Literal["relu", "tanh"]
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class ImageMLP(nn.Module):
    """Flattened image -> hidden layers -> logits; ``head`` is the last layer."""

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        num_classes: int,
        activation: Activation = "relu",
    ):
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        sizes = [in_features, *hidden_sizes]
        self.body = nn.Sequential(nn.Flatten(), *hidden_layers(sizes, ACTIVATIONS[activation]))
        self.head = nn.Linear(hidden_sizes[-1] if hidden_sizes else in_features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


class ImageCNN(nn.Module):
    """Two 3×3 convolutions, 2×2 average pooling, a hidden linear layer; ``head`` is the last."""

    def __init__(
        self, side: int, channels: int, hidden: int, num_classes: int, activation: Activation
    ):
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            act(),
            nn.Conv2d(channels, channels, 3, padding=1),
            act(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(channels * (side // 2) ** 2, hidden),
            act(),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


Architecture = Literal["mlp", "cnn"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)


def _check_input_shape(architecture: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if architecture == "cnn" and (len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]):
        raise ValueError(
            f"architecture='cnn' needs square one-channel images, input_shape (1, side, "
            f"side); got {shape}: use architecture='mlp' for vectors."
        )
    return shape


class OpposingSignalsModule(ClassifierRecipeModule):
    """MLP or CNN classifier; logs ``train/{loss,acc}`` and ``val/{loss,acc}``.

    Args:
        num_classes: number of classes; ``None``: the data module's, read in ``setup()``.
        hidden_sizes: hidden widths (``cnn``: the first is the convolutions' channels, the last
            the hidden linear layer's width).
        architecture: ``mlp`` (any input) or ``cnn`` (``(1, side, side)`` images).
        input_shape: shape of one input; ``None``: the data module's ``input_shape``.
        activation: ``relu`` or ``tanh`` (the edge-of-stability experiment's network).
        loss: a name of :data:`~lightning_dyn.functional.CLASSIFICATION_LOSSES`: ``softmax``,
            ``stablemax`` or ``square`` (``½||logits - onehot||²``, Cohen et al.).
        optimizer: ``module -> Optimizer`` (:func:`~lightning_dyn.optim.build_optimizer`);
            ``None``: the recipe config's, full-batch gradient descent ``SGD(lr=0.03)``,
            large enough for the planted pair to oscillate and small enough for the clean data
            to train stably.
    """

    datamodule_settings = ("num_classes", "input_shape")

    def __init__(
        self,
        num_classes: int | None = None,
        hidden_sizes: Sequence[int] = (128, 128),
        optimizer: OptimizerFactory | None = None,
        activation: Activation = "relu",
        loss: ClassificationLoss = "softmax",
        architecture: Architecture = "mlp",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.loss_fn = classification_loss(loss)
        check_choice("architecture", architecture, ARCHITECTURES)
        check_choice("activation", activation, ACTIVATIONS)
        if architecture == "cnn" and not hidden_sizes:
            raise ValueError("architecture='cnn' needs hidden_sizes (channels, ..., width).")
        for width in hidden_sizes:
            check_positive_int("hidden_sizes[i]", width)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes, minimum=2)
        if input_shape is not None:
            input_shape = _check_input_shape(architecture, input_shape)
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer or recipe_optimizer("opposing_signals")
        self.build_when_known()

    @override
    def build_model(self) -> nn.Module:
        hp = self.hparams
        input_shape = _check_input_shape(hp.architecture, hp.input_shape)
        if hp.architecture == "cnn":
            channels, width = hp.hidden_sizes[0], hp.hidden_sizes[-1]
            return ImageCNN(input_shape[1], channels, width, hp.num_classes, hp.activation)
        in_features = math.prod(input_shape)
        return ImageMLP(in_features, tuple(hp.hidden_sizes), hp.num_classes, hp.activation)
