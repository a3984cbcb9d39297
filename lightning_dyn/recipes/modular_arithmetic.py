"""Modular arithmetic, the grokking task: predict ``(a op b) mod p`` from ``(a, b)``.

The reference setup follows "Grokking at the Edge of Numerical Stability" (arXiv 2501.04697):
p = 113, 40% of all pairs for training, a bias-free 226-200-200-113 ReLU MLP on two concatenated
one-hots, full-batch AdamW (lr 1e-2, betas (0.9, 0.99), eps 1e-25, no weight decay). Label
corruption follows Doshi et al., "To grok or not to grok" (arXiv 2310.13061).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lightning_dyn._checks import check_choice, check_fraction, check_positive_int
from lightning_dyn.functional.losses import ClassificationLoss, classification_loss
from lightning_dyn.optim.factory import OptimizerFactory
from lightning_dyn.recipes._classifier import ClassifierRecipeModule
from lightning_dyn.recipes._data import TensorBatchDataset, TensorDataModule
from lightning_dyn.recipes._mlp import hidden_layers
from lightning_dyn.recipes._optimizer import recipe_optimizer

Operation = Literal["add", "sub", "mul", "div"]
Architecture = Literal["mlp", "transformer"]
OPERATIONS: tuple[str, ...] = get_args(Operation)
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def modular_arithmetic_table(p: int, op: Operation) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs ``(a, b)`` and their labels ``(a op b) mod p``.

    ``div`` is the field division ``a * b^(p-2) mod p`` over ``b != 0`` (Power et al.); the official
    code of arXiv 2501.04697 uses ``(a // b) % p`` instead, which is not a group operation.

    Returns:
        ``pairs`` of shape (N, 2) and ``labels`` of shape (N,), both int64.
    """
    check_positive_int("p", p, minimum=2)
    check_choice("op", op, OPERATIONS)
    if op == "div" and not _is_prime(p):
        raise ValueError(f"op='div' needs a prime modulus p so that b has an inverse; got p={p}.")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if op == "div":
        a, b = a[b != 0], b[b != 0]
        inverse = torch.tensor([pow(int(v), p - 2, p) for v in range(p)])
        labels = (a * inverse[b]) % p
    else:
        labels = {"add": a + b, "sub": a - b, "mul": a * b}[op] % p
    return torch.stack([a, b], dim=1), labels


class ModularArithmeticDataModule(TensorDataModule):
    """``(a op b) mod p`` split into train and test by a fixed seed.

    Args:
        p: the modulus; also the number of classes.
        op: one of ``add``, ``sub``, ``mul``, ``div``.
        train_fraction: fraction of all pairs used for training, in (0, 1).
        seed: seed of the train/test split and of the label corruption (not of training).
        label_corruption: fraction of training examples whose label is replaced by a uniform
            random label, fixed once (ξ of Doshi et al.). Test labels are never corrupted.
        batch_size: ``None`` for full batch (one optimizer step per epoch), else the mini-batch
            size. Under DDP each rank gets its shard of every batch.
        eval_batch_size: batch size of the held-out pass (``val_set``, which the module logs
            as ``test/...``).
    """

    def __init__(
        self,
        p: int = 113,
        op: Operation = "add",
        train_fraction: float = 0.4,
        seed: int = 42,
        label_corruption: float = 0.0,
        batch_size: int | None = None,
        eval_batch_size: int = 16384,
    ) -> None:
        super().__init__()
        check_positive_int("p", p, minimum=2)
        check_choice("op", op, OPERATIONS)
        check_fraction("train_fraction", train_fraction, open_low=True, open_high=True)
        check_fraction("label_corruption", label_corruption)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        check_positive_int("eval_batch_size", eval_batch_size)
        self.save_hyperparameters()
        self.p, self.op, self.seed = p, op, seed
        self.train_fraction, self.label_corruption = train_fraction, label_corruption
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None
        self.corrupted: torch.Tensor | None = None

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        pairs, labels = modular_arithmetic_table(self.p, self.op)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(labels), generator=generator)
        # Floor, as the reference split: 40% of 113^2 = 12769 pairs is 5107 for training.
        n_train = int(self.train_fraction * len(labels))
        if not 0 < n_train < len(labels):
            raise ValueError(
                f"train_fraction={self.train_fraction} leaves an empty split of {len(labels)} "
                "pairs; choose a value that keeps at least one pair on each side."
            )
        train_idx, test_idx = order[:n_train], order[n_train:]
        train_labels = labels[train_idx].clone()
        n_corrupt = round(self.label_corruption * n_train)
        # A fixed subset gets uniform random labels; as in Doshi et al. a few may hit the true one.
        self.corrupted = torch.zeros(n_train, dtype=torch.bool)
        self.corrupted[torch.randperm(n_train, generator=generator)[:n_corrupt]] = True
        train_labels[self.corrupted] = torch.randint(0, self.p, (n_corrupt,), generator=generator)
        self.train_set = TensorBatchDataset(pairs[train_idx], train_labels)
        self.val_set = TensorBatchDataset(pairs[test_idx], labels[test_idx])


class ModularMLP(nn.Module):
    """MLP on two concatenated one-hots: (B, 2) int -> (B, 2p) -> hidden ReLU layers -> (B, p)."""

    def __init__(self, p: int, hidden_sizes: Sequence[int] = (200, 200), bias: bool = False):
        super().__init__()
        self.p = p
        sizes = [2 * p, *hidden_sizes]
        self.layers = nn.Sequential(
            *hidden_layers(sizes, nn.ReLU, bias=bias), nn.Linear(sizes[-1], p, bias=bias)
        )

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        dtype = self.layers[0].weight.dtype
        x = F.one_hot(pairs, self.p).to(dtype).flatten(1)  # (B, 2p)
        return self.layers(x)


class ModularTransformer(nn.Module):
    """One post-LN ``nn.TransformerEncoderLayer`` (torch defaults) over the tokens ``[a, b]``.

    Reads the logits at the last position. Unlike the official code this adds a learned position
    embedding, without which the model could not tell ``a - b`` from ``b - a``.
    """

    def __init__(self, p: int, d_model: int = 128, num_heads: int = 4, num_layers: int = 1):
        super().__init__()
        self.token_embedding = nn.Embedding(p, d_model)
        self.position_embedding = nn.Parameter(torch.zeros(2, d_model))
        layer = nn.TransformerEncoderLayer(d_model, num_heads, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.unembed = nn.Linear(d_model, p)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        h = self.token_embedding(pairs) + self.position_embedding  # (B, 2, d)
        return self.unembed(self.encoder(h)[:, -1])  # (B, p)


class ModularArithmeticModule(ClassifierRecipeModule):
    """Classifier for ``(a op b) mod p``; logs ``train/{loss,acc}`` every step, ``test/{loss,acc}``
    every validation pass (the held-out pairs, as the grokking papers call them).

    Args:
        p: the modulus (number of classes); ``None``: the data module's, read in ``setup()``.
        arch: ``mlp`` or ``transformer``.
        hidden_sizes: MLP hidden widths.
        bias: whether the MLP layers have biases (the reference setup has none).
        d_model: transformer width.
        num_heads: transformer attention heads.
        loss: a name of :data:`~lightning_dyn.functional.CLASSIFICATION_LOSSES`: ``softmax``
            (cross-entropy), ``stablemax`` (StableMax cross-entropy in float64) or ``square``.
        optimizer: ``module -> Optimizer`` (:func:`~lightning_dyn.optim.build_optimizer`: a
            hydra ``_partial_`` torch optimizer gets the parameters); ``None``: the recipe
            config's, the reference AdamW (``optimizer/adamw.yaml``).
    """

    datamodule_settings = ("p",)
    classes_setting = "p"
    held_out_stage = "test"

    def __init__(
        self,
        p: int | None = None,
        arch: Architecture = "mlp",
        hidden_sizes: Sequence[int] = (200, 200),
        bias: bool = False,
        d_model: int = 128,
        num_heads: int = 4,
        loss: ClassificationLoss = "softmax",
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        if p is not None:
            check_positive_int("p", p, minimum=2)
        check_choice("arch", arch, ARCHITECTURES)
        if arch == "mlp":
            for width in hidden_sizes:
                check_positive_int("hidden_sizes[i]", width)
        self.loss_fn = classification_loss(loss)
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer or recipe_optimizer("grokking")
        self.build_when_known()

    @override
    def build_model(self) -> nn.Module:
        hp = self.hparams
        if hp.arch == "mlp":
            return ModularMLP(hp.p, hp.hidden_sizes, hp.bias)
        return ModularTransformer(hp.p, hp.d_model, hp.num_heads)


__all__ = [
    "ModularArithmeticDataModule",
    "ModularArithmeticModule",
    "ModularMLP",
    "ModularTransformer",
    "modular_arithmetic_table",
]
