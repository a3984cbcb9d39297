"""1D viscous Burgers with soft, hard and mixture-of-experts hard constraints (arXiv 2402.13412).

Chalapathi, Du & Krishnapriyan, "Scaling physics-informed hard constraints with
mixture-of-experts", at CPU scale: periodic Burgers ``u_t + u u_x = nu u_xx`` on ``[0, 1)``,
random sine-mode initial conditions, references by RK4 on the same spatial stencil
(:mod:`lightning_dyn.recipes._pde_data`), and a physics-only loss (the reference is used only for
the logged relative L2 error).

Model. A DeepONet-style basis network: a trunk MLP on the grid coordinates
``(t, sin 2πx, cos 2πx)`` (periodic in ``x`` by construction) gives ``(P, N)`` with ``P = T·X``,
a branch MLP on ``u0`` gives ``(N,)``, and the basis is their product
``Φ_b[p, n] = trunk[p, n] · branch_b[n]``. The field is ``u = u0 + t · Φ ω``: writing
``B = t · Φ`` and ``a = u0`` broadcast over time, ``u = a + B ω`` is linear in ``ω`` and equals
``u0`` at ``t = 0`` exactly, whatever ``ω``.

Physics residual, on the ``(T - 1) × X`` grid of the times after ``t = 0`` (rows ``1..T-1``)::

    r = u_t + u u_x - nu u_xx
    u_x, u_xx: the periodic central differences of ``burgers_operator``
    u_t[i] = (u[i+1] - u[i-1]) / (2 dt)              for 1 <= i <= T-2 (central)
    u_t[T-1] = (3 u[T-1] - 4 u[T-2] + u[T-3]) / (2 dt)  (one-sided second order, BDF2)

All stencils are linear, so they are applied once to ``a`` and to every column of ``B``; the
solver's ``residual_fn`` then forms ``u, u_t, u_x, u_xx`` from those and ``ω`` (row-local, so the
rows can be split into blocks freely).

Arms (``constraint``):

* ``"soft"``: ``ω`` is a linear head on the branch output; loss ``mean(r²)``.
* ``"hard"``: ``ω*`` minimises ``½‖r‖² + ½ ridge² ‖ω‖²`` per sample
  (:class:`~lightning_dyn.nn.hard_constraint.HardConstraintLayer`, Levenberg-Marquardt with
  ``lm_iterations`` iterations, implicit backward); loss ``mean(r²)`` of the field with ``ω*``.
* ``"moe"``: :class:`~lightning_dyn.nn.hard_constraint_moe.HardConstraintMoE` on the
  ``(T - 1, X)`` residual grid (``grid_shape=(T - 1, X)``, ``partition`` along (time, space));
  each expert solves its own ``ω_k`` from the residual rows of its block, and the field is the
  blend ``a + Σ_k w_k B ω_k``. The loss is ``mean(r²)`` of the *blended* field, recomputed with
  the stencils above, so jumps at block interfaces are penalised (they are what made the naive
  MoE poor at CPU scale; ``overlap`` is the remedy to try).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_dyn._checks import check_choice, check_positive_int, check_real
from lightning_dyn.nn.hard_constraint import HardConstraintLayer
from lightning_dyn.nn.hard_constraint_moe import HardConstraintMoE
from lightning_dyn.optim.factory import OptimizerFactory, build_optimizer
from lightning_dyn.recipes._data import (
    TensorBatchDataset,
    shuffled_shard_loader,
    tensor_loader,
)
from lightning_dyn.recipes._pde_data import (
    burgers_grid,
    random_sine_ics,
    rk4_stability_margin,
    solve_burgers,
)

__all__ = [
    "CONSTRAINTS",
    "BurgersDataModule",
    "BurgersModule",
    "burgers_residual",
    "relative_l2",
]

CONSTRAINTS = ("soft", "hard", "moe")


class BurgersDataModule(pl.LightningDataModule):
    """Random sine-mode initial conditions and their RK4 reference trajectories.

    Batches are ``(u0 (B, X), u_ref (B, T, X))`` in float64, on the grid of
    :func:`~lightning_dyn.recipes._pde_data.burgers_grid`. Training ICs use ``seed``, validation
    ICs ``seed + 1``.

    Args:
        n_x, n_t: grid points in space (periodic ``[0, 1)``) and saved times (both ends).
        nu: viscosity.
        t_final: last time.
        n_train, n_val: numbers of trajectories.
        n_modes: sine modes per initial condition.
        seed: seed of the initial conditions.
        batch_size: training batch size (validation is one batch).
        substeps: RK4 steps between saved times; ``None`` picks twice the smallest stable
            number for the data's ``max |u0|``.
    """

    def __init__(
        self,
        n_x: int = 64,
        n_t: int = 33,
        nu: float = 0.02,
        t_final: float = 1.0,
        n_train: int = 32,
        n_val: int = 8,
        n_modes: int = 3,
        seed: int = 0,
        batch_size: int = 4,
        substeps: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("n_x", n_x, minimum=3)
        check_positive_int("n_t", n_t, minimum=3)
        check_real("nu", nu, strictly_positive=True)
        check_real("t_final", t_final, strictly_positive=True)
        check_positive_int("n_train", n_train)
        check_positive_int("n_val", n_val)
        check_positive_int("n_modes", n_modes)
        if 2 * n_modes >= n_x:
            raise ValueError(f"n_modes must be < n_x / 2; got n_modes={n_modes}, n_x={n_x}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int; got {seed!r}.")
        check_positive_int("batch_size", batch_size)
        if substeps is not None:
            check_positive_int("substeps", substeps)
        self.save_hyperparameters()
        self.n_x, self.n_t, self.nu, self.t_final = n_x, n_t, float(nu), float(t_final)
        self.n_train, self.n_val, self.n_modes = n_train, n_val, n_modes
        self.seed, self.batch_size, self.substeps = seed, batch_size, substeps
        self.train_set: TensorBatchDataset | None = None
        self.val_set: TensorBatchDataset | None = None

    def _trajectories(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        u0 = random_sine_ics(n, self.n_x, self.n_modes, seed)
        substeps = self.substeps
        if substeps is None:
            dt = self.t_final / (self.n_t - 1)
            margin = rk4_stability_margin(dt, 1.0 / self.n_x, self.nu, float(u0.abs().max()))
            substeps = max(1, math.ceil(2.0 * margin))
        return u0, solve_burgers(u0, self.nu, self.t_final, self.n_t, substeps)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = TensorBatchDataset(*self._trajectories(self.n_train, self.seed))
        self.val_set = TensorBatchDataset(*self._trajectories(self.n_val, self.seed + 1))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        assert self.train_set is not None, "call setup() first"
        return shuffled_shard_loader(self.train_set, self.batch_size, self.trainer, self.seed)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        assert self.val_set is not None, "call setup() first"
        return tensor_loader(self.val_set, len(self.val_set))


def _stencils(v: Tensor, dt: float, dx: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(v, v_t, v_x, v_xx)`` on rows ``1..T-1`` of ``v`` with time at dim 1 and space at dim 2.

    Periodic central differences in space (as ``burgers_operator``); central differences in time
    on rows ``1..T-2`` and the one-sided second-order (BDF2) difference on row ``T-1``.
    """
    up = torch.roll(v, shifts=-1, dims=2)
    um = torch.roll(v, shifts=1, dims=2)
    v_x = (up - um) / (2.0 * dx)
    v_xx = (up - 2.0 * v + um) / (dx * dx)
    central = (v[:, 2:] - v[:, :-2]) / (2.0 * dt)
    last = (3.0 * v[:, -1:] - 4.0 * v[:, -2:-1] + v[:, -3:-2]) / (2.0 * dt)
    v_t = torch.cat([central, last], dim=1)
    return v[:, 1:], v_t, v_x[:, 1:], v_xx[:, 1:]


def burgers_residual(u: Tensor, t_final: float, nu: float) -> Tensor:
    """Physics residual ``u_t + u u_x - nu u_xx`` of fields ``u (B, T, X)``: ``(B, T - 1, X)``.

    On rows ``1..T-1`` with the stencils described in the module docstring; ``dt =
    t_final / (T - 1)``, ``dx = 1 / X``.
    """
    dt, dx = t_final / (u.shape[1] - 1), 1.0 / u.shape[2]
    v, v_t, v_x, v_xx = _stencils(u, dt, dx)
    return v_t + v * v_x - nu * v_xx


def interface_mask(shape: tuple[int, int], partition: tuple[int, int]) -> Tensor:
    """``(T', X)`` bool mask of the grid points next to an inner block edge (both sides).

    Blocks are uniform as in :class:`HardConstraintMoE` (``n // parts`` points, the remainder in
    the last block); an edge at index ``e`` marks rows (or columns) ``e - 1`` and ``e``.
    """
    mask = torch.zeros(shape, dtype=torch.bool)
    for axis, (n, parts) in enumerate(zip(shape, partition, strict=True)):
        for k in range(1, parts):
            edge = k * (n // parts)
            index = [slice(None), slice(None)]
            index[axis] = slice(edge - 1, edge + 1)
            mask[tuple(index)] = True
    return mask


def relative_l2(u: Tensor, u_ref: Tensor) -> Tensor:
    """Mean over the batch of ``‖u - u_ref‖ / ‖u_ref‖`` (norms over all grid points)."""
    diff = (u - u_ref).flatten(1).norm(dim=1)
    return (diff / u_ref.flatten(1).norm(dim=1).clamp_min(1e-300)).mean()


def _mlp(n_in: int, width: int, n_out: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.Tanh()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _default_optimizer() -> OptimizerFactory:
    return functools.partial(torch.optim.Adam, lr=1e-3)


class BurgersModule(pl.LightningModule):
    """Soft, hard or mixture-of-experts hard-constrained basis network for periodic Burgers.

    Everything is float64. Logs ``train/loss`` (``mean(r²)``), ``train/rel_l2`` and
    ``val/rel_l2`` (against the reference), and for ``hard``/``moe`` ``train/lm_iterations``
    (mean over samples and experts), ``train/lm_residual`` (mean ``‖r‖`` at the solution,
    ridge rows included, per solve) and ``train/solve_ms`` (wall time of the forward solve);
    for ``moe`` also ``train/interface_residual_share``, the share of ``Σ r²`` on the grid
    points next to inner block edges (``interface_mask``): near 1 when the experts' fields jump
    at their interfaces.

    Args:
        constraint: ``"soft"``, ``"hard"`` or ``"moe"`` (see the module docstring).
        n_basis: basis functions ``N``.
        width: hidden width of the trunk and branch MLPs (two tanh layers each).
        experts, partition, overlap: of :class:`HardConstraintMoE` (``moe`` only); ``partition``
            counts blocks along (time rows ``1..T-1``, space).
        lm_iterations: most Levenberg-Marquardt iterations per solve.
        ridge: ridge coefficient of the solves.
        n_x, n_t, nu, t_final: the grid and the PDE; must match the data module.
        optimizer: factory ``params -> Optimizer``; default ``Adam(lr=1e-3)``.
    """

    def __init__(
        self,
        constraint: str = "hard",
        n_basis: int = 16,
        width: int = 64,
        experts: int = 4,
        partition: Sequence[int] = (1, 4),
        overlap: int = 0,
        lm_iterations: int = 10,
        ridge: float = 1e-4,
        n_x: int = 64,
        n_t: int = 33,
        nu: float = 0.02,
        t_final: float = 1.0,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        check_choice("constraint", constraint, CONSTRAINTS)
        check_positive_int("n_basis", n_basis)
        check_positive_int("width", width)
        check_positive_int("lm_iterations", lm_iterations)
        check_real("ridge", ridge)
        check_positive_int("n_x", n_x, minimum=3)
        check_positive_int("n_t", n_t, minimum=3)
        check_real("nu", nu, strictly_positive=True)
        check_real("t_final", t_final, strictly_positive=True)
        self.save_hyperparameters(ignore=["optimizer"])
        self.constraint, self.nu, self.t_final = constraint, float(nu), float(t_final)
        self.n_x, self.n_t = n_x, n_t
        x, t = burgers_grid(n_x, t_final, n_t)
        tt, xx = torch.meshgrid(t, x, indexing="ij")
        angle = 2.0 * math.pi * xx
        coords = torch.stack([tt, torch.sin(angle), torch.cos(angle)], dim=-1)
        self.register_buffer("coords", coords.reshape(-1, 3), persistent=False)
        self.register_buffer("times", tt.reshape(-1), persistent=False)
        self.trunk = _mlp(3, width, n_basis)
        self.branch = _mlp(n_x, width, n_basis)
        self.solver: nn.Module | None = None
        if constraint == "soft":
            self.head = nn.Linear(n_basis, n_basis)
        elif constraint == "hard":
            self.solver = HardConstraintLayer(
                self._residual_fn, ridge=ridge, max_iter=lm_iterations, on_failure="ignore"
            )
        else:
            check_positive_int("experts", experts)
            parts = tuple(partition) if isinstance(partition, Sequence) else partition
            if not isinstance(parts, tuple) or math.prod(parts) != experts:
                raise ValueError(
                    f"partition={partition!r} must be a pair of block counts (time, space) whose "
                    f"product equals experts={experts}."
                )
            self.solver = HardConstraintMoE(
                self._residual_fn,
                experts=experts,
                partition=parts,
                grid_shape=(n_t - 1, n_x),
                ridge=ridge,
                overlap=overlap,
                max_iter=lm_iterations,
                on_failure="ignore",
                expert_parallel=False,
            )
        self.optimizer_factory = optimizer or _default_optimizer()
        self.last_solve_seconds = 0.0  # wall time of the latest forward solve, for logging
        self.double()

    def _residual_fn(
        self,
        omega: Tensor,
        b: Tensor,
        b_t: Tensor,
        b_x: Tensor,
        b_xx: Tensor,
        a: Tensor,
        a_t: Tensor,
        a_x: Tensor,
        a_xx: Tensor,
    ) -> Tensor:
        """Residual rows of one sample (or one expert's block): ``u = a + B ω`` and derivatives."""
        u = a + b @ omega
        u_t = a_t + b_t @ omega
        u_x = a_x + b_x @ omega
        u_xx = a_xx + b_xx @ omega
        return u_t + u * u_x - self.nu * u_xx

    def basis(self, u0: Tensor) -> Tensor:
        """``B = t · Φ``: ``(batch, T·X, N)`` with ``Φ_b[p, n] = trunk[p, n] · branch_b[n]``."""
        branch = self.branch(u0)
        phi = self.trunk(self.coords)[None] * branch[:, None, :]
        return self.times[None, :, None] * phi

    def forward(self, u0: Tensor) -> tuple[Tensor, Any]:
        """Fields ``u (B, T, X)`` for initial conditions ``u0 (B, X)``, and the solver result.

        The result is ``None`` for ``soft``, else the ``LeastSquaresResult`` of the solve.
        """
        u0 = u0.to(torch.float64)
        if u0.ndim != 2 or u0.shape[1] != self.n_x:
            raise ValueError(
                f"u0 must have shape (B, n_x={self.n_x}); got {tuple(u0.shape)}: the data "
                "module's n_x must match the module's."
            )
        batch, n_t, n_x = u0.shape[0], self.n_t, self.n_x
        b_full = self.basis(u0)
        if self.solver is None:
            omega = self.head(self.branch(u0))
            u = u0[:, None, :] + (b_full @ omega[:, :, None]).reshape(batch, n_t, n_x)
            return u, None
        dt, dx = self.t_final / (n_t - 1), 1.0 / n_x
        a = u0[:, None, :].expand(batch, n_t, n_x)
        b_rows = _stencils(b_full.reshape(batch, n_t, n_x, -1), dt, dx)
        a_rows = _stencils(a, dt, dx)
        rows = (n_t - 1) * n_x
        b_rows = tuple(v.reshape(batch, rows, -1) for v in b_rows)
        a_rows = tuple(v.reshape(batch, rows) for v in a_rows)
        start = time.perf_counter()
        u_rows, result = self.solver(b_rows[0], (*b_rows[1:], *a_rows))
        self.last_solve_seconds = time.perf_counter() - start
        u_rest = a_rows[0] + u_rows
        u = torch.cat([u0[:, None, :], u_rest.reshape(batch, n_t - 1, n_x)], dim=1)
        return u, result

    def _step(self, batch: Any, stage: str) -> Tensor:
        u0, u_ref = batch
        u, result = self(u0)
        if u_ref.shape[1:] != u.shape[1:]:
            raise ValueError(
                f"u_ref has shape {tuple(u_ref.shape)}, but the module's grid is (B, n_t="
                f"{self.n_t}, n_x={self.n_x}): the data module's grid must match the module's."
            )
        loss = burgers_residual(u, self.t_final, self.nu).pow(2).mean()
        n = len(u0)
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True, prog_bar=stage == "train")
        rel = relative_l2(u.detach(), u_ref.to(torch.float64))
        self.log(f"{stage}/rel_l2", rel, batch_size=n, sync_dist=True, prog_bar=True)
        if result is not None:
            iters = result.iterations.to(torch.float64).mean()
            self.log(f"{stage}/lm_iterations", iters, batch_size=n, sync_dist=True)
            res = result.residual_norm.detach().mean()
            self.log(f"{stage}/lm_residual", res, batch_size=n, sync_dist=True)
            # Wall time of this rank's forward solve (the implicit backward is not included).
            solve_ms = 1e3 * self.last_solve_seconds
            self.log(f"{stage}/solve_ms", solve_ms, batch_size=n, sync_dist=True)
        if self.constraint == "moe":
            # Where the residual sits: next to block edges (interface jumps) or in the bulk.
            r2 = burgers_residual(u.detach(), self.t_final, self.nu).pow(2)
            mask = interface_mask(tuple(r2.shape[1:]), self.solver.partition).to(r2.device)
            share = r2[:, mask].sum() / r2.sum().clamp_min(1e-300)
            self.log(f"{stage}/interface_residual_share", share, batch_size=n, sync_dist=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # The solver differentiates residual_fn (torch.func) even when no gradient is wanted.
        with torch.inference_mode(False), torch.enable_grad():
            self._step(tuple(t.clone() for t in batch), "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_factory, self)
