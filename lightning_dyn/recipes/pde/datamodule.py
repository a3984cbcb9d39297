"""Initial conditions and reference trajectories for the ``pde`` recipe (no download)."""

from __future__ import annotations

from torch import Tensor
from typing_extensions import override

from lightning_dyn._checks import check_positive_int, check_seed
from lightning_dyn.recipes._data import (
    TensorBatchDataset,
    TensorDataModule,
)
from lightning_dyn.recipes.pde._problems import Problem, check_setting, make_problem


class PDEDataModule(TensorDataModule):
    """Random initial conditions and their reference trajectories, ``(u0 (B, X), u_ref (B, T, X))``.

    ``problem="burgers"``: periodic viscous Burgers, sine-mode ICs (``n_modes``), RK4 reference on
    the same spatial stencil at twice the smallest stable number of substeps.
    ``problem="diffusion_sorption"``: PDEBench's 1D diffusion-sorption, constant ``U(0, 0.2)``
    ICs, implicit (scipy BDF) reference. Float64. Training ICs use ``seed``, validation (held-out)
    ICs ``seed + 1``; the training loader gives each DDP rank its shard (the whole set on every
    rank under ``ExpertParallelStrategy``, whose sampler arguments say so).

    Args:
        problem: ``"burgers"`` or ``"diffusion_sorption"``.
        n_x, n_t: grid points in space and saved times (both ends).
        t_final: last time; ``None``: 1 (Burgers) or 500 days (diffusion-sorption, PDEBench).
        nu: Burgers' viscosity (``None``: 0.02); must be ``None`` for diffusion-sorption.
        n_train, n_val: numbers of trajectories.
        n_modes: sine modes per Burgers initial condition (``< n_x / 2``).
        seed: seed of the initial conditions.
        batch_size: training batch size (validation is one batch).
    """

    def __init__(
        self,
        problem: Problem = "burgers",
        n_x: int = 64,
        n_t: int = 33,
        t_final: float | None = None,
        nu: float | None = None,
        n_train: int = 32,
        n_val: int = 8,
        n_modes: int = 3,
        seed: int = 0,
        batch_size: int = 4,
    ) -> None:
        super().__init__()
        check_setting(problem, n_x, n_t, t_final, nu)
        check_positive_int("n_train", n_train)
        check_positive_int("n_val", n_val)
        check_positive_int("n_modes", n_modes)
        if 2 * n_modes >= n_x:
            raise ValueError(f"n_modes must be < n_x / 2; got n_modes={n_modes}, n_x={n_x}.")
        check_seed(seed)
        check_positive_int("batch_size", batch_size)
        self.save_hyperparameters()
        self.problem = make_problem(problem, nu, t_final)
        self.n_x, self.n_t = n_x, n_t
        self.n_train, self.n_val, self.n_modes = n_train, n_val, n_modes
        self.seed, self.batch_size = seed, batch_size
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None

    def _trajectories(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        u0 = self.problem.initial_conditions(n, self.n_x, self.n_modes, seed)
        return u0, self.problem.reference(u0, self.n_t)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = TensorBatchDataset(*self._trajectories(self.n_train, self.seed))
        self.val_set = TensorBatchDataset(*self._trajectories(self.n_val, self.seed + 1))
