"""Bundled LightningDataModule + LightningModule pairs, one file per task."""

from lightning_dyn.recipes.modular_arithmetic import (
    ModularArithmeticDataModule,
    ModularArithmeticModule,
    ModularMLP,
    ModularTransformer,
    modular_arithmetic_table,
)

__all__ = [
    "ModularArithmeticDataModule",
    "ModularArithmeticModule",
    "ModularMLP",
    "ModularTransformer",
    "modular_arithmetic_table",
]
