"""A character-level GPT on the Python standard library's own source code.

The corpus is on every machine that runs Python, so the recipe needs no download and no data
package: the first ``max_chars`` characters of the standard library's ``.py`` files in a fixed
order (see :func:`stdlib_corpus`). The model is a small nanoGPT-style decoder (karpathy/nanoGPT:
pre-LN blocks, learned positions, tied embedding and head, no biases). At the default size (d=64,
2 layers, context 64, batch 32) it is a CPU-scale stand-in for the LANTON paper's GPT-2 runs.
"""

from __future__ import annotations

import math
import os
import sysconfig
import tokenize
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import DistributedSampler
from typing_extensions import override

from lightning_dyn._checks import check_fraction, check_positive_int
from lightning_dyn.optim.factory import OptimizerFactory, build_optimizer
from lightning_dyn.recipes._data import TensorBatchDataset, tensor_loader, world_and_rank
from lightning_dyn.recipes._datamodule_settings import (
    datamodule_attributes,
    resolve_datamodule_settings,
)
from lightning_dyn.recipes._optimizer import recipe_optimizer

STDLIB_EXCLUDED_DIRS = frozenset(
    {
        # Third-party packages: they differ from one machine to the next.
        "site-packages",
        "dist-packages",
        # Regression tests and the modules that Debian/Ubuntu ship as separate packages (the
        # test suite, IDLE, Tk, 2to3, distutils, ensurepip): absent from some installations.
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "distutils",
        "ensurepip",
    }
)
"""Directory names, at any depth under the standard library, that :func:`stdlib_corpus` skips."""


def _corpus_files(root: Path) -> list[str]:
    """Relative POSIX paths of the corpus files, in code-point order (the same on every OS)."""
    paths = []
    for directory, subdirs, names in os.walk(root):
        # config-3.X-<platform>/ holds the build's Makefile and python-config.py.
        subdirs[:] = [
            d for d in subdirs if d not in STDLIB_EXCLUDED_DIRS and not d.startswith("config-")
        ]
        for name in names:
            # _sysconfigdata_*.py records this build's paths and compiler flags.
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                paths.append(Path(directory, name).relative_to(root).as_posix())
    return sorted(paths)


def stdlib_corpus(max_chars: int = 2_000_000) -> str:
    """The first ``max_chars`` characters of the standard library's own ``.py`` source.

    Files under ``sysconfig.get_paths()["stdlib"]`` are concatenated in the code-point order of
    their relative paths, skipping :data:`STDLIB_EXCLUDED_DIRS`, the ``config-*`` build directory
    and ``_sysconfigdata_*.py``: what is left is the same on every installation of one Python build,
    offline. Each file is decoded as Python decodes it (``tokenize.open``: its coding cookie,
    else UTF-8) with newlines translated to ``\\n``. Distributions patch a few modules (``site``,
    ``sysconfig``), so the text is fixed per build, not per version number; CPython 3.11's first
    2M characters run from ``__future__.py`` to ``difflib.py`` and are plain ASCII.

    Raises:
        ValueError: if the standard library has fewer than ``max_chars`` characters.
    """
    check_positive_int("max_chars", max_chars)
    root = Path(sysconfig.get_paths()["stdlib"])
    pieces: list[str] = []
    total = 0
    for path in _corpus_files(root):
        with tokenize.open(root / path) as file:
            pieces.append(file.read())
        total += len(pieces[-1])
        if total >= max_chars:
            return "".join(pieces)[:max_chars]
    raise ValueError(
        f"max_chars={max_chars} exceeds the {total} characters of the standard library at {root}."
    )


class _EpochWindowSampler(DistributedSampler):
    """``steps_per_epoch`` batches of window starts per rank, drawn with replacement from
    ``seed + epoch``.

    Every rank draws the same ``world * steps_per_epoch * batch_size`` starts and keeps every
    ``world``-th from its rank on, as ``DistributedSampler`` does: an epoch is ``steps_per_epoch``
    optimizer steps at any world size. It is a ``DistributedSampler`` so that Lightning calls its
    ``set_epoch`` and, under DDP, keeps it instead of wrapping it.
    """

    def __init__(
        self,
        dataset: TensorBatchDataset,
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        num_replicas: int,
        rank: int,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.num_samples = steps_per_epoch * batch_size
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        starts = torch.randint(len(self.dataset), (self.total_size,), generator=generator)
        return iter(starts[self.rank :: self.num_replicas].tolist())


def _windows(tokens: torch.Tensor, context: int) -> TensorBatchDataset:
    """Every window of ``tokens``: ``x = tokens[i : i + context]``, ``y`` shifted by one.

    Both are strided views of ``tokens``: nothing is copied until a batch is fetched.
    """
    return TensorBatchDataset(tokens[:-1].unfold(0, context, 1), tokens[1:].unfold(0, context, 1))


class CharCorpusDataModule(pl.LightningDataModule):
    """Character-level language modelling on :func:`stdlib_corpus`.

    The vocabulary is the sorted set of characters of the whole corpus (so validation has no
    unknown characters); ``vocab_size``, ``encode`` and ``decode`` work after ``setup()``. The
    last ``val_fraction`` of the text is the validation split. Training windows start at random
    positions of the training split, drawn afresh every epoch from ``seed + epoch``: a run resumed
    from a checkpoint taken at an epoch boundary sees the batches of one that never stopped.
    Validation uses ``val_batches * batch_size`` evenly spaced windows, the same in every run.

    Args:
        max_chars: length of the corpus in characters.
        context: characters per training window (the model's ``context`` must be at least this).
        batch_size: windows per batch and device; under DDP the global batch is
            ``world_size * batch_size``.
        val_fraction: fraction of the corpus, taken from its end, used for validation.
        seed: seed of the training windows.
        steps_per_epoch: training batches per epoch; the trainer validates once per epoch.
        val_batches: validation batches of ``batch_size`` windows each.
    """

    def __init__(
        self,
        max_chars: int = 2_000_000,
        context: int = 64,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
        steps_per_epoch: int = 100,
        val_batches: int = 20,
    ) -> None:
        super().__init__()
        check_positive_int("max_chars", max_chars)
        check_positive_int("context", context)
        check_positive_int("batch_size", batch_size)
        check_fraction("val_fraction", val_fraction, open_low=True, open_high=True)
        check_positive_int("steps_per_epoch", steps_per_epoch)
        check_positive_int("val_batches", val_batches)
        self.save_hyperparameters()
        self.max_chars, self.context, self.batch_size = max_chars, context, batch_size
        self.val_fraction, self.seed = val_fraction, seed
        self.steps_per_epoch, self.val_batches = steps_per_epoch, val_batches
        self.chars: list[str] = []
        self._ids: dict[str, int] = {}
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None

    @property
    def vocab_size(self) -> int:
        if not self.chars:
            raise RuntimeError("vocab_size is known after setup(); call setup() first.")
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64, shape ``(len(text),)``) of ``text``."""
        try:
            return torch.tensor([self._ids[c] for c in text], dtype=torch.long)
        except KeyError as error:
            raise ValueError(
                f"text has the character {error.args[0]!r}, which is not in the vocabulary."
            ) from None

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The text of token ids (any shape; read in row-major order)."""
        flat = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.chars[i] for i in flat)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        text = stdlib_corpus(self.max_chars)
        self.chars = sorted(set(text))
        self._ids = {c: i for i, c in enumerate(self.chars)}
        tokens = self.encode(text)
        n_val = int(self.val_fraction * len(tokens))
        if min(n_val, len(tokens) - n_val) <= self.context:
            raise ValueError(
                f"max_chars={self.max_chars} with val_fraction={self.val_fraction} leaves a split "
                f"of {min(n_val, len(tokens) - n_val)} characters; each needs more than "
                f"context={self.context}."
            )
        self.train_set = _windows(tokens[: len(tokens) - n_val], self.context)
        every_val_window = _windows(tokens[len(tokens) - n_val :], self.context)
        count = self.val_batches * self.batch_size
        starts = torch.arange(count) * (len(every_val_window) - 1) // max(count - 1, 1)
        self.val_set = TensorBatchDataset(*(t[starts] for t in every_val_window.tensors))

    @override
    def train_dataloader(self) -> torch.utils.data.DataLoader:
        assert self.train_set is not None, "call setup() first"
        world, rank = world_and_rank(self.trainer)
        sampler = _EpochWindowSampler(
            self.train_set, self.batch_size, self.steps_per_epoch, self.seed, world, rank
        )
        return tensor_loader(self.train_set, self.batch_size, sampler=sampler)

    @override
    def val_dataloader(self) -> torch.utils.data.DataLoader:
        assert self.val_set is not None, "call setup() first"
        return tensor_loader(self.val_set, self.batch_size)


def _check_sizes(
    context: int | None, d_model: int, n_layer: int, n_head: int, dropout: float
) -> None:
    if context is not None:
        check_positive_int("context", context)
    check_positive_int("d_model", d_model)
    check_positive_int("n_layer", n_layer)
    check_positive_int("n_head", n_head)
    if d_model % n_head:
        raise ValueError(f"n_head={n_head} must divide d_model={d_model}.")
    check_fraction("dropout", dropout, open_high=True)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t."""

    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        heads = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # 3 x (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise ``Linear(d, 4d) -> GELU -> Linear(4d, d)``."""

    def __init__(self, d_model: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model, bias=bias)
        self.proj = nn.Linear(4 * d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """A nanoGPT-style decoder: (B, T) token ids -> (B, T, vocab_size) next-token logits.

    Token and learned position embeddings, ``n_layer`` pre-LN blocks, a final LayerNorm and a
    bias-free linear head, tied to the token embedding by default. Parameters (``bias=False``,
    tied): ``V*d + context*d + n_layer*(12*d^2 + 2*d) + d``, e.g. 109K for V=96, context=64, d=64,
    2 layers, and 10.7M for context=256, d=384, 6 layers (nanoGPT's shakespeare-char size).
    Initialisation is nanoGPT's: N(0, 0.02), residual output projections N(0, 0.02/sqrt(2L)).

    Args:
        vocab_size: number of tokens.
        context: longest input sequence (rows of the position embedding).
        d_model: width of the residual stream.
        n_layer: transformer blocks.
        n_head: attention heads; must divide ``d_model``.
        dropout: dropout on embeddings, attention weights and residual branches (training only).
        bias: biases in the linear layers and LayerNorms (nanoGPT finds none slightly better).
        tie_weights: share the head's weight with the token embedding.
    """

    def __init__(
        self,
        vocab_size: int,
        context: int,
        d_model: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        dropout: float = 0.0,
        bias: bool = False,
        tie_weights: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("vocab_size", vocab_size)
        _check_sizes(context, d_model, n_layer, n_head, dropout)
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.token_embedding.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # the residual branches: GPT-2's scaled init
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        length = idx.shape[1]
        if length > self.context:
            raise ValueError(
                f"input length {length} exceeds the model's context={self.context}; build the "
                "model with a context at least as long as the data's."
            )
        positions = torch.arange(length, device=idx.device)
        x = self.token_embedding(idx) + self.position_embedding(positions)  # (B, T, C)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.head(self.ln_f(x))  # (B, T, V)


class TinyLMModule(pl.LightningModule):
    """Next-character prediction with :class:`TinyGPT`; logs ``train/loss`` every step and
    ``val/loss`` and ``val/bpc`` (bits per character, ``loss / ln 2``) every validation pass.

    With ``vocab_size=None`` or ``context=None``, ``setup`` copies the datamodule's value into
    ``hparams`` and ``configure_model`` builds the model (in the strategy's and precision's init
    context), before ``fit(ckpt_path=...)`` restores weights. Checkpoints so carry the real
    sizes, and ``load_from_checkpoint`` builds the model at once. A given ``vocab_size`` must
    equal the datamodule's, a given ``context`` be at least the datamodule's.

    Args:
        vocab_size: number of characters, or ``None`` to take it from the datamodule.
        context: the model's longest sequence, or ``None``: the datamodule's ``context``.
        d_model, n_layer, n_head, dropout, bias, tie_weights: see :class:`TinyGPT`.
        optimizer: ``module -> Optimizer``, e.g. ``functools.partial(LANTON.from_module, ...)``
            for optimizers that group parameters by module type and name; a hydra ``_partial_``
            torch optimizer gets the parameters (:func:`~lightning_dyn.optim.build_optimizer`).
            ``None``: the recipe config's, AdamW with lr 3e-3, betas (0.9, 0.95) and weight
            decay 0.1 on every parameter (``optimizer/adamw_lm.yaml``).
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        context: int | None = None,
        d_model: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        dropout: float = 0.0,
        bias: bool = False,
        tie_weights: bool = True,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        _check_sizes(context, d_model, n_layer, n_head, dropout)
        known = vocab_size is not None and context is not None
        self.model = TinyGPT(**self.hparams) if known else None
        self.optimizer_factory = optimizer or recipe_optimizer("tiny_lm")

    @override
    def setup(self, stage: str) -> None:
        known = datamodule_attributes(self, ("vocab_size", "context"))
        resolve_datamodule_settings(self, known, at_least=("context",))

    @override
    def configure_model(self) -> None:
        if self.model is None:
            self.model = TinyGPT(**self.hparams)
        mesh = self.device_mesh  # set by ModelParallelStrategy (trainer=fsdp_cpu, fsdp)
        if mesh is not None and not isinstance(self.model.blocks[0].attn.qkv.weight, DTensor):
            # FSDP2: each block its own unit; embeddings, tied head and final norm in the root's.
            data_parallel = mesh["data_parallel"]
            for block in self.model.blocks:
                fully_shard(block, mesh=data_parallel)
            fully_shard(self.model, mesh=data_parallel)

    @override
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        assert self.model is not None, "vocab_size=None: the model is built by the Trainer"
        return self.model(idx)

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        logits = self(x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), y.reshape(-1))

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, batch_size=len(batch[0]), sync_dist=True, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss = self._loss(batch)
        n = len(batch[0])
        self.log("val/loss", loss, batch_size=n, sync_dist=True, prog_bar=True)
        self.log("val/bpc", loss / math.log(2), batch_size=n, sync_dist=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_factory, self)


__all__ = [
    "STDLIB_EXCLUDED_DIRS",
    "CharCorpusDataModule",
    "TinyGPT",
    "TinyLMModule",
    "stdlib_corpus",
]
