"""Soft, hard and mixture-of-experts hard constraints on two 1D PDEs (arXiv 2402.13412).

Chalapathi, Du & Krishnapriyan, "Scaling physics-informed hard constraints with
mixture-of-experts", at CPU scale: periodic viscous Burgers ``u_t + u u_x = ν u_xx`` and
PDEBench's diffusion-sorption ``u_t = D / R(u) u_xx`` (the paper's 1D problem), with a
physics-only loss; the references (:class:`~lightning_dyn.recipes.pde.datamodule.PDEDataModule`)
are used only for the logged relative L2 error.

Model. A DeepONet-style basis network: a trunk MLP on the grid coordinates (Burgers:
``(t / t_final, sin 2πx, cos 2πx)``, periodic in ``x`` by construction; diffusion-sorption:
``(t / t_final, x)``) gives ``(P, N)`` with ``P = T·X``, a branch MLP on ``u0`` gives ``(N,)``,
and the basis is their product ``Φ_b[p, n] = trunk[p, n] · branch_b[n]``. The field is
``u = u0 + f(τ) · Φ ω`` with ``τ = t / t_final`` and ``f(τ) = τ`` (Burgers) or ``√τ``
(diffusion-sorption, whose boundary value 1 meets the initial level at ``t = 0``: the initial
layer grows like ``√t``, which ``τ · Φ`` with a smooth ``Φ`` cannot follow on the coarse grid;
with ``√τ`` the residual norm at the solution on held-out ICs fell from ~200 to ~90, one seed
after 300 steps). Writing ``B = f(τ) · Φ`` and ``a = u0`` broadcast over
time, ``u = a + B ω`` is linear in ``ω`` and equals ``u0`` at ``t = 0`` exactly, whatever
``ω``. Boundary conditions are in the spatial stencils (periodic; or the ghost cells of
diffusion-sorption's Dirichlet and Cauchy conditions), so no separate boundary rows are needed.

Physics residual on the ``(T - 1) × X`` grid of the times after ``t = 0``
(:mod:`lightning_dyn.recipes.pde._problems`), in rescaled time ``τ = t / t_final``: backward
differences in time (backward Euler on row 1, BDF2 after) and the reference solvers' spatial
stencils. All stencils are linear, so they are applied once to ``a`` and to every column of
``B``; the solver's ``residual_fn`` combines them with ``ω`` (row-local, so the rows can be split
into blocks freely).

Arms (``constraint``):

* ``"soft"``: ``ω`` is a linear head on the branch output; loss ``mean(r²)``.
* ``"hard"``: ``ω*`` minimises ``½‖r‖² + ½ ridge² ‖ω‖²`` per sample
  (:class:`~lightning_dyn.nn.hard_constraint.HardConstraintLayer`, Levenberg-Marquardt with
  ``lm_iterations`` iterations, implicit backward); loss ``mean(r²)`` of the field with ``ω*``.
* ``"moe"``: :class:`~lightning_dyn.nn.hard_constraint_moe.HardConstraintMoE` on the
  ``(T - 1, X)`` residual grid (``partition`` along (time, space)); each expert solves its own
  ``ω_k`` from the residual rows of its block, and the field is the blend
  ``a + Σ_k w_k B ω_k``. ``overlap`` and ``interface_rows`` couple neighbouring experts. The loss
  is ``mean(r²)`` of the *blended* field, recomputed with the stencils, so jumps at block
  interfaces are penalised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_dyn._checks import check_bool, check_choice, check_positive_int, check_real
from lightning_dyn.functional.block_partition import block_edges
from lightning_dyn.functional.face_jumps import block_faces, face_jumps
from lightning_dyn.loggers import log_figure
from lightning_dyn.nn.hard_constraint import HardConstraintLayer
from lightning_dyn.nn.hard_constraint_moe import HardConstraintMoE
from lightning_dyn.optim.factory import OptimizerFactory, build_optimizer
from lightning_dyn.recipes._datamodule_settings import resolve_datamodule_settings
from lightning_dyn.recipes._mlp import hidden_layers
from lightning_dyn.recipes._optimizer import recipe_optimizer
from lightning_dyn.recipes.pde._figure import field_figure
from lightning_dyn.recipes.pde._problems import (
    Burgers,
    DiffusionSorption,
    Problem,
    check_setting,
    make_problem,
    pde_residual,
)

__all__ = ["CONSTRAINTS", "PDEModule", "interface_mask", "relative_l2"]

Constraint = Literal["soft", "hard", "moe"]
CONSTRAINTS: tuple[str, ...] = get_args(Constraint)


def interface_mask(
    shape: tuple[int, int], partition: tuple[int, int], periodic_x: bool = False
) -> Tensor:
    """``(T', X)`` bool mask of the grid points next to an inner block edge (both sides).

    Blocks are uniform as in :class:`HardConstraintMoE` (``n // parts`` points, the remainder in
    the last block); an edge at index ``e`` marks rows (or columns) ``e - 1`` and ``e``. With
    ``periodic_x`` and more than one block in space, the wrap (columns ``X - 1`` and 0) too.
    """
    mask = torch.zeros(shape, dtype=torch.bool)
    for axis, (n, parts) in enumerate(zip(shape, partition, strict=True)):
        wrap = [0] if axis == 1 and periodic_x and parts > 1 else []
        for edge in [*wrap, *block_edges(n, parts)]:
            index: list = [slice(None), slice(None)]
            index[axis] = [edge - 1, edge]  # -1 is the last column at the wrap
            mask[tuple(index)] = True
    return mask


def relative_l2(u: Tensor, u_ref: Tensor) -> Tensor:
    """Mean over the batch of ``‖u - u_ref‖ / ‖u_ref‖`` (norms over all grid points)."""
    diff = (u - u_ref).flatten(1).norm(dim=1)
    return (diff / u_ref.flatten(1).norm(dim=1).clamp_min(1e-300)).mean()


def _mlp(n_in: int, width: int, n_out: int, depth: int = 2) -> nn.Sequential:
    return nn.Sequential(*hidden_layers([n_in, *[width] * depth], nn.Tanh), nn.Linear(width, n_out))


class PDEModule(pl.LightningModule):
    """Soft, hard or mixture-of-experts hard-constrained basis network for a 1D PDE.

    Everything is float64. Logs ``train/loss`` (``mean(r²)``), ``{train,val}/rel_l2`` (against
    the reference), and for ``hard``/``moe`` ``train/lm_iterations`` (mean over samples and
    experts), ``train/lm_residual`` (mean ``‖r‖`` at the solution, ridge rows included, per
    solve) and ``train/solve_ms`` (wall time of the forward solve); for ``moe`` also
    ``train/interface_jump`` (RMS disagreement of neighbouring experts next to their faces,
    ``HardConstraintMoE.interface_jump``) and ``train/interface_residual_share`` (the share of
    ``Σ r²`` on the points next to inner block edges, ``interface_mask``). For EVERY arm,
    ``{train,val}/face_value_jump`` and ``{train,val}/face_slope_jump``: the mean over samples of
    the largest jump of the field and of its normal derivative across the faces of ``partition``
    (:func:`~lightning_dyn.functional.face_jumps`, normalised by the field's range and largest
    slope; a smooth field reads about the discretisation error, a kink or step ``O(1)``), read
    at the same places for soft, hard and MoE, so K=1 and K=4 are compared. At the end of each
    validation, ``figure=True`` logs ``pde/field``: reference, prediction and error of the first
    validation sample with the expert blocks drawn (W&B image, or a PNG without W&B).

    Args:
        problem: ``"burgers"`` or ``"diffusion_sorption"``; ``None``: the data module's (with
            its ``t_final`` and ``nu``), read in ``setup()``.
        constraint: ``"soft"``, ``"hard"`` or ``"moe"`` (see the module docstring).
        n_basis: basis functions ``N``.
        width: hidden width of the trunk and branch MLPs (two tanh layers each).
        experts, partition, overlap, interface_rows, interface_weight,
            interface_slope_weight: of :class:`HardConstraintMoE` (``moe`` only, except
            ``partition``, which every arm uses to read its face jumps); ``partition`` counts
            blocks along (time rows ``1..T-1``, space), at least 3 points per block. Space is
            periodic for Burgers, so the first and last blocks in space are neighbours too.
            ``interface_rows="c1"`` matches value AND slope at every face (weights
            ``interface_weight`` and ``interface_slope_weight``, ``None``: the same);
            ``True`` (``"value"``) the value only. ``interface_weight`` 100: on an untrained basis
            (Burgers, K=4) the blended field's residual was 86 / 38 / 45 for weights 10 / 100 /
            1000, the hard K=1 field's 61.
        expert_parallel: of :class:`HardConstraintMoE`; ``"auto"`` splits the experts over the
            ranks when a process group is up, which needs every rank to see the same batch:
            train with :class:`~lightning_dyn.strategies.ExpertParallelStrategy`.
        lm_iterations: most Levenberg-Marquardt iterations per solve.
        ridge: ridge coefficient of the solves.
        n_x, n_t, t_final, nu: the grid and the PDE (``nu``: Burgers only); ``None``: the data
            module's arguments (its ``hparams``), read in ``setup()``; ``t_final`` and ``nu``
            left ``None`` everywhere are the problem's defaults (1 or 500 days; ``nu`` 0.02).
            Given values must equal the data module's arguments. The network is
            built once ``problem``, ``n_x`` and ``n_t`` are known: at once, or by
            ``configure_model()``.
        figure: log the ``pde/field`` figure after each validation.
        optimizer: ``module -> Optimizer`` (:func:`~lightning_dyn.optim.build_optimizer`); default
            the recipe config's (``configs/recipe/pde.yaml``: ``Adam(lr=1e-3)``).
    """

    def __init__(
        self,
        problem: Problem | None = None,
        constraint: Constraint = "hard",
        n_basis: int = 16,
        width: int = 64,
        experts: int = 4,
        partition: Sequence[int] = (1, 4),
        overlap: int = 0,
        interface_rows: bool | Literal["value", "c1"] = False,
        interface_weight: float = 100.0,
        interface_slope_weight: float | None = None,
        expert_parallel: bool | Literal["auto"] = "auto",
        lm_iterations: int = 10,
        ridge: float = 1e-4,
        n_x: int | None = None,
        n_t: int | None = None,
        t_final: float | None = None,
        nu: float | None = None,
        figure: bool = True,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        check_setting(problem, n_x, n_t, t_final, nu)
        check_choice("constraint", constraint, CONSTRAINTS)
        check_positive_int("n_basis", n_basis)
        check_positive_int("width", width)
        check_positive_int("lm_iterations", lm_iterations)
        check_real("ridge", ridge)
        check_bool("figure", figure)
        parts = tuple(partition) if isinstance(partition, Sequence) else partition
        if not isinstance(parts, tuple) or len(parts) != 2:
            raise ValueError(
                f"partition must be a pair of block counts (time rows, space); got {partition!r}."
            )
        if constraint == "moe":
            check_positive_int("experts", experts)
            if math.prod(parts) != experts:
                raise ValueError(
                    f"partition={partition!r} must be a pair of block counts (time, space) whose "
                    f"product equals experts={experts}."
                )
        self.save_hyperparameters(ignore=["optimizer"])
        self.constraint, self.figure = constraint, figure
        self.optimizer_factory = optimizer or recipe_optimizer("pde")
        self.last_solve_seconds = 0.0  # wall time of the latest forward solve, for logging
        self._figure_batch: tuple[Tensor, Tensor] | None = None
        self._last_basis: Tensor | None = None  # the solver's basis rows, for interface_jump
        self.problem: Burgers | DiffusionSorption | None = None
        self.solver: nn.Module | None = None
        self._build_when_known()

    def _build_when_known(self) -> None:
        """The grid buffers, trunk, branch and solver, once problem and grid are known."""
        hp = self.hparams
        if self.problem is not None or None in (hp.problem, hp.n_x, hp.n_t):
            return
        n_x, n_t, parts = hp.n_x, hp.n_t, tuple(hp.partition)
        # Every arm's face jumps are read at `partition` (the blocks an MoE would have).
        block_faces((n_t - 1, n_x), parts)
        self.problem = make_problem(hp.problem, hp.nu, hp.t_final)
        self.jump_partition = parts
        self.n_x, self.n_t = n_x, n_t
        x, t = self.problem.grid(n_x, n_t)
        tt, xx = torch.meshgrid(t, x, indexing="ij")
        coords = self.problem.trunk_features(tt, xx)
        self.register_buffer("coords", coords.reshape(-1, coords.shape[-1]), persistent=False)
        factor = self.problem.time_factor(tt.reshape(-1) / self.problem.t_final)
        self.register_buffer("times", factor, persistent=False)
        self.trunk = _mlp(coords.shape[-1], hp.width, hp.n_basis)
        self.branch = _mlp(n_x, hp.width, hp.n_basis)
        if hp.constraint == "soft":
            self.head = nn.Linear(hp.n_basis, hp.n_basis)
        elif hp.constraint == "hard":
            self.solver = HardConstraintLayer(
                self._residual_fn, ridge=hp.ridge, max_iter=hp.lm_iterations, on_failure="ignore"
            )
        else:
            self.solver = HardConstraintMoE(
                self._residual_fn,
                experts=hp.experts,
                partition=parts,
                grid_shape=(n_t - 1, n_x),
                ridge=hp.ridge,
                overlap=hp.overlap,
                max_iter=hp.lm_iterations,
                on_failure="ignore",
                expert_parallel=hp.expert_parallel,
                interface_rows=hp.interface_rows,
                interface_weight=hp.interface_weight,
                interface_slope_weight=hp.interface_slope_weight,
                periodic=(False, self.problem.periodic_x),
            )
        self.double()

    @override
    def configure_model(self) -> None:
        self._build_when_known()

    @override
    def setup(self, stage: str) -> None:
        # The data module's own arguments (PDEDataModule saves them): Lightning merges them with
        # the module's when it logs hyperparameters and refuses a key that differs, so a None
        # t_final (the problem's default) must stay None, not become the resolved 1.0.
        hparams = getattr(self.trainer.datamodule, "hparams", {})
        known = {name: hparams.get(name) for name in ("problem", "t_final", "nu", "n_x", "n_t")}
        resolve_datamodule_settings(self, known, optional=("t_final", "nu"))
        # The module computes in float64 (it calls .double() itself); a "-true" half precision
        # would convert its weights to 16 bits under the float64 data and solves.
        precision = str(self.trainer.precision)
        if precision in ("bf16-true", "16-true"):
            raise ValueError(
                f"PDEModule computes in float64 and cannot train with precision={precision!r} "
                "(its weights would be converted to 16 bits). Use the default '32-true' or "
                "'64-true'; mixed precision ('bf16-mixed', '16-mixed') leaves float64 alone."
            )
        splits = isinstance(self.solver, HardConstraintMoE) and self.solver.expert_parallel
        sampler = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) or {}
        if splits and self.trainer.world_size > 1 and sampler.get("num_replicas", 1) > 1:
            raise ValueError(
                f"PDEModule splits its experts over the ranks (expert_parallel="
                f"{self.solver.expert_parallel!r}), which needs the same batches on every rank, "
                f"but {type(self.trainer.strategy).__name__} gives each rank its own shard of the "
                "data. Train with lightning_dyn.strategies.ExpertParallelStrategy, or pass "
                "expert_parallel=False for data parallelism (DDP, FSDP2)."
            )

    def _residual_fn(self, omega: Tensor, b: Tensor, *rows: Tensor) -> Tensor:
        """Residual rows of one sample (or block): stencils of ``u = a + B ω`` combined.

        ``rows`` are the other stencils of ``B`` (``(M, N)`` each) then all stencils of ``a``.
        """
        n = len(rows) // 2 + 1
        b_rows, a_rows = (b, *rows[: n - 1]), rows[n - 1 :]
        return self.problem.combine(*(a + bb @ omega for a, bb in zip(a_rows, b_rows, strict=True)))

    def basis(self, u0: Tensor) -> Tensor:
        """``B = f(τ) · Φ``, ``Φ_b[p, n] = trunk[p, n] branch_b[n]`` (see the module docstring)."""
        branch = self.branch(u0)
        phi = self.trunk(self.coords)[None] * branch[:, None, :]
        return self.times[None, :, None] * phi

    @override
    def forward(self, u0: Tensor) -> tuple[Tensor, Any]:
        """Fields ``u (B, T, X)`` for initial conditions ``u0 (B, X)``, and the solver result.

        The result is ``None`` for ``soft``, else the ``LeastSquaresResult`` of the solve.
        """
        if self.problem is None:
            raise RuntimeError(
                "PDEModule has no network yet: problem, n_x and n_t come from the data module "
                "when the Trainer sets the module up; pass them to build it at once."
            )
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
        dt = 1.0 / (n_t - 1)  # in τ = t / t_final, as pde_residual
        a = u0[:, None, :].expand(batch, n_t, n_x)
        rows = (n_t - 1) * n_x
        b_rows = self.problem.stencils(b_full.reshape(batch, n_t, n_x, -1), dt, affine=False)
        a_rows = self.problem.stencils(a, dt, affine=True)
        b_rows = tuple(v.reshape(batch, rows, -1) for v in b_rows)
        a_rows = tuple(v.reshape(batch, rows) for v in a_rows)
        start = time.perf_counter()
        if isinstance(self.solver, HardConstraintMoE):
            # a is common to every expert: the C1 rows match the traces of a + B ω_k.
            u_rest, result = self.solver(b_rows[0], (*b_rows[1:], *a_rows), offset=a_rows[0])
        else:
            u_rows, result = self.solver(b_rows[0], (*b_rows[1:], *a_rows))
            u_rest = a_rows[0] + u_rows
        self.last_solve_seconds = time.perf_counter() - start
        self._last_basis = b_rows[0]
        u = torch.cat([u0[:, None, :], u_rest.reshape(batch, n_t - 1, n_x)], dim=1)
        return u, result

    def face_jumps(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Per sample, the largest normalised value and slope jump of ``u`` ``(B, T, X)``
        across the faces of ``partition`` on the rows after ``t = 0`` (the MoE's grid), the
        wrap in space included for Burgers: ``face_jumps`` reduced over faces, ``(B,)`` each."""
        periodic = (False, self.problem.periodic_x)
        jumps = face_jumps(u[:, 1:], self.jump_partition, periodic)
        return jumps.value.amax(1), jumps.slope.amax(1)

    def _step(self, batch: Any, stage: str) -> Tensor:
        u0, u_ref = batch
        u, result = self(u0)
        if u_ref.shape[1:] != u.shape[1:]:
            raise ValueError(
                f"u_ref has shape {tuple(u_ref.shape)}, but the module's grid is (B, n_t="
                f"{self.n_t}, n_x={self.n_x}): the data module's grid must match the module's."
            )
        loss = pde_residual(self.problem, u).pow(2).mean()
        n = len(u0)
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True, prog_bar=stage == "train")
        rel = relative_l2(u.detach(), u_ref.to(torch.float64))
        self.log(f"{stage}/rel_l2", rel, batch_size=n, sync_dist=True, prog_bar=True)
        value, slope = self.face_jumps(u.detach())
        self.log(f"{stage}/face_value_jump", value.mean(), batch_size=n, sync_dist=True)
        self.log(f"{stage}/face_slope_jump", slope.mean(), batch_size=n, sync_dist=True)
        if result is not None:
            iters = result.iterations.to(torch.float64).mean()
            self.log(f"{stage}/lm_iterations", iters, batch_size=n, sync_dist=True)
            res = result.residual_norm.detach().mean()
            self.log(f"{stage}/lm_residual", res, batch_size=n, sync_dist=True)
            # Wall time of this rank's forward solve (the implicit backward is not included).
            solve_ms = 1e3 * self.last_solve_seconds
            self.log(f"{stage}/solve_ms", solve_ms, batch_size=n, sync_dist=True)
        if self.constraint == "moe":
            jump = self.solver.interface_jump(self._last_basis.detach(), result.omega.detach())
            self.log(f"{stage}/interface_jump", jump.mean(), batch_size=n, sync_dist=True)
            # Where the residual sits: next to block edges (interface jumps) or in the bulk.
            r2 = pde_residual(self.problem, u.detach()).pow(2)
            shape, periodic = tuple(r2.shape[1:]), self.problem.periodic_x
            mask = interface_mask(shape, self.solver.partition, periodic).to(r2.device)
            # A ratio of sums over every rank's samples: the mean of per-rank ratios that
            # sync_dist would log is not the share of the whole batch.
            sums = torch.stack([r2[:, mask].sum(), r2.sum()])
            if self._trainer is not None and self.trainer.world_size > 1:
                sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            share = sums[0] / sums[1].clamp_min(
                1e-300
            )  # the same on every rank: the sync is a no-op
            self.log(f"{stage}/interface_residual_share", share, batch_size=n, sync_dist=True)
        if stage == "val" and self._figure_batch is None:
            self._figure_batch = (u[:1].detach(), u_ref[:1].to(torch.float64))
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # The solver differentiates residual_fn (torch.func) even when no gradient is wanted.
        with torch.inference_mode(False), torch.enable_grad():
            self._step(tuple(t.clone() for t in batch), "val")

    @override
    def on_validation_epoch_start(self) -> None:
        self._figure_batch = None

    @override
    def on_validation_epoch_end(self) -> None:
        if self.figure and self._figure_batch is not None and not self.trainer.sanity_checking:
            u, u_ref = self._figure_batch
            partition = self.solver.partition if self.constraint == "moe" else (1, 1)
            figure = field_figure(u[0], u_ref[0], self.problem.t_final, partition, self.constraint)
            log_figure(self.trainer, "pde/field", figure)
        self._figure_batch = None

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_factory, self)
