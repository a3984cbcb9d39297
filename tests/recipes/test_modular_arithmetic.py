"""The grokking recipe: data against a brute-force table, model variants, precisions."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from harness import TINY_DATA, TINY_MODULE, quiet_trainer

from lightning_dyn.recipes import (
    ModularArithmeticDataModule,
    ModularArithmeticModule,
    modular_arithmetic_table,
)


def _brute_force(a: int, b: int, p: int, op: str) -> int:
    if op == "div":  # the c with c * b = a (mod p), found by search
        return next(c for c in range(p) if (c * b) % p == a)
    return {"add": a + b, "sub": a - b, "mul": a * b}[op] % p


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_table_matches_brute_force(op: str) -> None:
    p = 7
    pairs, labels = modular_arithmetic_table(p, op)
    expected_rows = p * (p - 1) if op == "div" else p * p
    assert pairs.shape == (expected_rows, 2) and labels.shape == (expected_rows,)
    for (a, b), y in zip(pairs.tolist(), labels.tolist(), strict=True):
        assert y == _brute_force(a, b, p, op)


def test_bad_arguments_name_the_argument_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"op='pow'.*'add', 'sub', 'mul', 'div'"):
        ModularArithmeticDataModule(op="pow")
    with pytest.raises(ValueError, match=r"prime modulus.*p=12"):
        modular_arithmetic_table(12, "div")
    with pytest.raises(ValueError, match=r"train_fraction must be a number in \(0, 1\); got 1.5"):
        ModularArithmeticDataModule(train_fraction=1.5)
    with pytest.raises(ValueError, match=r"loss='focal'.*'softmax'"):
        ModularArithmeticModule(loss="focal")
    with pytest.raises(ValueError, match=r"arch='cnn'.*'mlp', 'transformer'"):
        ModularArithmeticModule(arch="cnn")


def test_reference_split_sizes_and_determinism() -> None:
    dm = ModularArithmeticDataModule()  # p = 113, 40% train, seed 42
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (5107, 7662)
    again = ModularArithmeticDataModule()
    again.setup()
    assert torch.equal(dm.train_set.tensors[0], again.train_set.tensors[0])
    train_pairs = {tuple(r) for r in dm.train_set.tensors[0].tolist()}
    test_pairs = {tuple(r) for r in dm.val_set.tensors[0].tolist()}
    assert not train_pairs & test_pairs and len(train_pairs | test_pairs) == 113 * 113


def test_label_corruption_replaces_a_fixed_fraction() -> None:
    clean = ModularArithmeticDataModule(p=31, train_fraction=0.5)
    noisy = ModularArithmeticDataModule(p=31, train_fraction=0.5, label_corruption=0.35)
    clean.setup(), noisy.setup()
    n = len(noisy.train_set)
    assert int(noisy.corrupted.sum()) == round(0.35 * n)
    true, noisy_labels = clean.train_set.tensors[1], noisy.train_set.tensors[1]
    assert torch.equal(noisy_labels[~noisy.corrupted], true[~noisy.corrupted])
    changed = (noisy_labels != true)[noisy.corrupted].float().mean()
    assert changed > 0.85  # uniform labels hit the true one with probability 1/31
    assert torch.equal(noisy.val_set.tensors[1], clean.val_set.tensors[1])


def test_full_batch_is_one_step_per_epoch_and_mini_batch_is_not() -> None:
    full = ModularArithmeticDataModule(**TINY_DATA)
    mini = ModularArithmeticDataModule(**TINY_DATA, batch_size=16)
    full.setup(), mini.setup()
    assert len(full.train_dataloader()) == 1
    pairs, labels = next(iter(full.train_dataloader()))
    assert pairs.shape == (72, 2) and labels.shape == (72,)
    assert len(mini.train_dataloader()) == 5  # ceil(72 / 16)


def test_mlp_matches_the_reference_architecture() -> None:
    module = ModularArithmeticModule(p=113)
    shapes = [tuple(p.shape) for p in module.parameters()]
    assert shapes == [(200, 226), (200, 200), (113, 200)]  # no biases
    with_bias = ModularArithmeticModule(p=7, hidden_sizes=(8,), bias=True)
    assert len(list(with_bias.parameters())) == 4


def _fit(tmp_path: Path, steps: int, module_kwargs: dict, **trainer_kwargs) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    module = ModularArithmeticModule(**{**TINY_MODULE, **module_kwargs})
    data = ModularArithmeticDataModule(**TINY_DATA)
    trainer = quiet_trainer(tmp_path, steps, **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.mark.parametrize(
    ("module_kwargs", "precision", "dtype"),
    [
        ({}, "64-true", torch.float64),
        ({}, "bf16-mixed", torch.float32),
        ({"arch": "transformer", "d_model": 16, "num_heads": 2}, "32-true", torch.float32),
    ],
    ids=["mlp-64-true", "mlp-bf16-mixed", "transformer"],
)
def test_trains_in_every_variant(tmp_path, module_kwargs, precision, dtype) -> None:
    trainer = _fit(tmp_path, 4, module_kwargs, precision=precision)
    module = trainer.lightning_module
    assert all(p.dtype == dtype for p in module.parameters())
    steps = [s for s, m in trainer.logger.records if "train/loss" in m]
    assert steps == [0, 1, 2, 3]  # logged every step
    tested = [m for _, m in trainer.logger.records if "test/acc" in m]
    assert len(tested) == 4 and all(0 <= m["test/acc"] <= 1 for m in tested)


def test_reference_setup_memorises_quickly() -> None:
    """Softmax CE + AdamW reaches 100% train accuracy in a few dozen full-batch steps."""
    pl.seed_everything(0, verbose=False)
    dm = ModularArithmeticDataModule(p=23, train_fraction=0.5)
    dm.setup()
    module = ModularArithmeticModule(p=23, hidden_sizes=(64, 64))
    optimizer = module.configure_optimizers()
    pairs, labels = dm.train_set.tensors
    for _ in range(60):
        optimizer.zero_grad()
        loss = module.loss_fn(module(pairs), labels)
        loss.backward()
        optimizer.step()
    accuracy = (module(pairs).argmax(-1) == labels).float().mean()
    assert accuracy == 1.0
