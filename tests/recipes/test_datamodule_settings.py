"""Recipe modules take what their data module knows (classes, input size, grid) in setup()."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from harness import TINY_DATA, quiet_trainer

from lightning_dyn.recipes import (
    CharCorpusDataModule,
    GaussianMixtureDataModule,
    GaussianMixtureModule,
    ModularArithmeticDataModule,
    ModularArithmeticModule,
    OpposingSignalsDataModule,
    OpposingSignalsModule,
    PDEDataModule,
    PDEModule,
    TinyLMModule,
)

HIDDEN = {"hidden_sizes": (16, 16)}


def _fit(tmp_path: Path, module: pl.LightningModule, data: pl.LightningDataModule) -> pl.Trainer:
    trainer = quiet_trainer(tmp_path, 3)
    trainer.fit(module, datamodule=data)
    return trainer


def test_module_takes_the_modulus_from_the_data_module_and_trains_as_if_given(
    tmp_path: Path,
) -> None:
    pl.seed_everything(0, verbose=False)
    lazy = ModularArithmeticModule(**HIDDEN)
    assert lazy.model is None
    lazy_trainer = _fit(tmp_path / "lazy", lazy, ModularArithmeticDataModule(**TINY_DATA))
    pl.seed_everything(0, verbose=False)
    given = ModularArithmeticModule(p=TINY_DATA["p"], **HIDDEN)
    given_trainer = _fit(tmp_path / "given", given, ModularArithmeticDataModule(**TINY_DATA))

    assert lazy.hparams.p == TINY_DATA["p"]
    assert lazy.model.layers[-1].out_features == TINY_DATA["p"]
    lazy_state, given_state = lazy.state_dict(), given.state_dict()
    assert list(lazy_state) == list(given_state)
    for name, value in lazy_state.items():
        torch.testing.assert_close(value, given_state[name], rtol=0, atol=0, msg=name)
    assert lazy_trainer.logger.records == given_trainer.logger.records


def test_checkpoint_of_a_lazy_module_loads_with_its_size(tmp_path: Path) -> None:
    module = ModularArithmeticModule(**HIDDEN)
    trainer = _fit(tmp_path, module, ModularArithmeticDataModule(**TINY_DATA))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = ModularArithmeticModule.load_from_checkpoint(path)
    assert loaded.hparams.p == TINY_DATA["p"]
    pairs = torch.tensor([[1, 2], [3, 4]])
    torch.testing.assert_close(loaded(pairs), module(pairs))


def test_given_setting_must_match_the_data_module(tmp_path: Path) -> None:
    module = ModularArithmeticModule(p=TINY_DATA["p"] + 1, **HIDDEN)
    with pytest.raises(ValueError, match=r"p=13\) does not match the data module's p=12"):
        _fit(tmp_path, module, ModularArithmeticDataModule(**TINY_DATA))


def test_without_a_data_module_the_setting_must_be_given(tmp_path: Path) -> None:
    data = ModularArithmeticDataModule(**TINY_DATA)
    data.setup()
    trainer = quiet_trainer(tmp_path, 1)
    with pytest.raises(ValueError, match=r"p=None\) takes p from the trainer's data module"):
        trainer.fit(ModularArithmeticModule(**HIDDEN), train_dataloaders=data.train_dataloader())


def test_forward_before_the_network_is_built_says_why() -> None:
    with pytest.raises(RuntimeError, match="p come from the data module"):
        ModularArithmeticModule()(torch.tensor([[1, 2]]))


def test_gaussian_mixture_reads_classes_and_input_size(tmp_path: Path) -> None:
    data = GaussianMixtureDataModule(num_classes=3, input_dim=5, per_class=8, batch_size=None)
    module = GaussianMixtureModule(width=8, depth=1)
    _fit(tmp_path, module, data)
    assert (module.hparams.num_classes, module.hparams.input_dim) == (3, 5)
    assert module.model.head.out_features == 3
    assert module.model.body[0].in_features == 5


def test_opposing_signals_accepts_a_list_input_shape_equal_to_the_data_modules(
    tmp_path: Path,
) -> None:
    data = OpposingSignalsDataModule(dataset="gaussian", input_dim=6, per_class=10)
    module = OpposingSignalsModule(input_shape=[6], hidden_sizes=(8,))  # hydra gives lists
    _fit(tmp_path, module, data)
    assert module.hparams.num_classes == data.num_classes
    with pytest.raises(ValueError, match=r"input_shape=\(5,\)\) does not match"):
        _fit(tmp_path / "bad", OpposingSignalsModule(input_shape=[5], hidden_sizes=(8,)), data)


def test_pde_module_takes_problem_and_grid(tmp_path: Path) -> None:
    grid = {"n_x": 16, "n_t": 9}
    data = PDEDataModule("diffusion_sorption", **grid, n_train=4, n_val=2, t_final=100.0)
    module = PDEModule(n_basis=4, width=8, figure=False)
    _fit(tmp_path, module, data)
    assert (module.problem.name, module.problem.t_final) == ("diffusion_sorption", 100.0)
    assert (module.n_x, module.n_t) == (16, 9)
    with pytest.raises(ValueError, match=r"problem='burgers'\) does not match"):
        _fit(tmp_path / "bad", PDEModule("burgers", n_basis=4, width=8, figure=False), data)


def test_tiny_lm_context_at_least_the_data_modules(tmp_path: Path) -> None:
    data = CharCorpusDataModule(max_chars=20_000, context=16, steps_per_epoch=2, val_batches=1)
    with pytest.raises(ValueError, match=r"context=8\) must be at least the data module's"):
        _fit(tmp_path, TinyLMModule(context=8, d_model=16, n_layer=1, n_head=2), data)
    module = TinyLMModule(d_model=16, n_layer=1, n_head=2)
    _fit(tmp_path / "default", module, data)
    assert module.hparams.context == 16
