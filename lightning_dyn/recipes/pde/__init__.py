"""The PDE recipe: soft, hard and mixture-of-experts hard constraints on two 1D PDEs.

``PDEModule`` (:mod:`.module`) and ``PDEDataModule`` (:mod:`.datamodule`); the problems'
stencils and residuals (``_problems``), the reference solvers and initial conditions (``_data``)
and the ``pde/field`` figure (``_figure``) are theirs alone.
"""

from lightning_dyn.recipes.pde.datamodule import PDEDataModule
from lightning_dyn.recipes.pde.module import CONSTRAINTS, PDEModule, interface_mask, relative_l2

__all__ = ["CONSTRAINTS", "PDEDataModule", "PDEModule", "interface_mask", "relative_l2"]
