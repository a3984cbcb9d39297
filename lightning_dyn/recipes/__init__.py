"""Bundled LightningDataModule + LightningModule pairs, one file per task."""

from lightning_dyn.recipes.gaussian_mixture import (
    GaussianMixtureDataModule,
    GaussianMixtureModule,
    MixtureMLP,
)
from lightning_dyn.recipes.modular_arithmetic import (
    ModularArithmeticDataModule,
    ModularArithmeticModule,
    ModularMLP,
    ModularTransformer,
    modular_arithmetic_table,
)
from lightning_dyn.recipes.opposing_signals import (
    ImageMLP,
    OpposingSignalsDataModule,
    OpposingSignalsModule,
    digits_images,
    synthetic_images,
)
from lightning_dyn.recipes.pde import PDEDataModule, PDEModule
from lightning_dyn.recipes.tiny_lm import (
    STDLIB_EXCLUDED_DIRS,
    CharCorpusDataModule,
    TinyGPT,
    TinyLMModule,
    stdlib_corpus,
)

__all__ = [
    "STDLIB_EXCLUDED_DIRS",
    "CharCorpusDataModule",
    "GaussianMixtureDataModule",
    "GaussianMixtureModule",
    "ImageMLP",
    "MixtureMLP",
    "ModularArithmeticDataModule",
    "ModularArithmeticModule",
    "ModularMLP",
    "ModularTransformer",
    "OpposingSignalsDataModule",
    "OpposingSignalsModule",
    "PDEDataModule",
    "PDEModule",
    "TinyGPT",
    "TinyLMModule",
    "digits_images",
    "modular_arithmetic_table",
    "stdlib_corpus",
    "synthetic_images",
]
