"""The two PDEs of the ``pde`` recipe: grids, initial conditions, references and residuals.

Each problem gives the discrete residual on rows ``1..T-1`` of a field ``u (B, T, X)`` as a
pointwise function (``combine``) of a few *linear* stencils of ``u`` (``stencils``), so that for
``u = a + B ω`` the stencils are applied once to ``a`` (with the boundary values: ``affine``)
and once to each basis column (without them), and the solver's residual only combines them.
Time: backward differences, backward Euler on row 1 and BDF2 on rows ``2..T-1``; row 0 is the
initial condition, which the recipe's ansatz meets exactly. Backward (A-stable) differences make
the residual equations an implicit time stepper, consistent with the stiff start of
diffusion-sorption (the boundary value 1 meets the initial level at ``t = 0``): stepping them
exactly gives 1.0-1.2% relative L2 error against the references on the 64 x 33 grid for both
problems, where central differences in time (leapfrog, unstable for diffusion) made the hard
solution of diffusion-sorption worse than zero.

Units: the residual is written in rescaled time ``τ = t / t_final``, ``r = u_τ + t_final · N(u)``
for ``u_t + N(u) = 0``, so that its rows are O(1) whatever the time unit. In days,
diffusion-sorption's rows away from the boundary layer are ~1e-4, as small as the solver's ridge
rows ``1e-4 · ω``, and the hard solution was poor (measured: 70% held-out error, one seed, 300
steps, against 31% in ``τ``).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_dyn._checks import check_choice, check_positive_int, check_real
from lightning_dyn.recipes.pde._data import (
    DIFFUSION_SORPTION_DEFAULTS,
    burgers_grid,
    random_sine_ics,
    retardation,
    rk4_stability_margin,
    solve_burgers,
    solve_diffusion_sorption,
)

Problem = Literal["burgers", "diffusion_sorption"]
PROBLEMS: tuple[str, ...] = get_args(Problem)
DEFAULT_T_FINAL = {"burgers": 1.0, "diffusion_sorption": 500.0}


def time_rows(v: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """``(v, v_t)`` on rows ``1..T-1`` (time at dim 1): backward Euler on row 1, then BDF2."""
    first = (v[:, 1:2] - v[:, :1]) / dt
    bdf2 = (3.0 * v[:, 2:] - 4.0 * v[:, 1:-1] + v[:, :-2]) / (2.0 * dt)
    return v[:, 1:], torch.cat([first, bdf2], dim=1)


class Burgers:
    """Periodic viscous Burgers ``u_t + u u_x = ν u_xx`` on ``[0, 1)``, points ``x_j = j / X``.

    Stencils: ``(u, u_τ, u_x, u_xx)``, periodic central differences in space, as the RK4
    reference (``solve_burgers``) uses. Initial conditions: random sine modes.
    """

    name = "burgers"
    periodic_x = True

    def __init__(self, nu: float = 0.02, t_final: float = 1.0) -> None:
        self.nu, self.t_final = float(nu), float(t_final)

    def grid(self, n_x: int, n_t: int) -> tuple[Tensor, Tensor]:
        return burgers_grid(n_x, self.t_final, n_t)

    def time_factor(self, tau: Tensor) -> Tensor:
        return tau

    def trunk_features(self, tt: Tensor, xx: Tensor) -> Tensor:
        angle = 2.0 * math.pi * xx  # periodic in x by construction
        return torch.stack([tt / self.t_final, torch.sin(angle), torch.cos(angle)], dim=-1)

    def initial_conditions(self, n: int, n_x: int, n_modes: int, seed: int) -> Tensor:
        return random_sine_ics(n, n_x, n_modes, seed)

    def reference(self, u0: Tensor, n_t: int) -> Tensor:
        dt = self.t_final / (n_t - 1)
        margin = rk4_stability_margin(dt, 1.0 / u0.shape[1], self.nu, float(u0.abs().max()))
        return solve_burgers(u0, self.nu, self.t_final, n_t, max(1, math.ceil(2.0 * margin)))

    def stencils(self, v: Tensor, dt: float, affine: bool) -> tuple[Tensor, ...]:
        dx = 1.0 / v.shape[2]
        up, um = torch.roll(v, -1, dims=2), torch.roll(v, 1, dims=2)
        v_x, v_xx = (up - um) / (2.0 * dx), (up - 2.0 * v + um) / (dx * dx)
        return (*time_rows(v, dt), v_x[:, 1:], v_xx[:, 1:])

    def combine(self, u: Tensor, u_tau: Tensor, u_x: Tensor, u_xx: Tensor) -> Tensor:
        return u_tau + self.t_final * (u * u_x - self.nu * u_xx)


class DiffusionSorption:
    """PDEBench's 1D diffusion-sorption ``u_t = D / R(u) u_xx`` on ``(0, 1)``, cell centres.

    Boundary values as in ``diffusion_sorption_operator``: ``u = sol`` at ``x = 0`` and the
    Cauchy condition at ``x = 1``, both through ghost cells of the three-point Laplacian, so the
    residual carries them (the ghost at ``x = 0`` is the affine part). Stencils: ``(u, u_τ,
    lap u)``. Initial conditions: constant ``U(0, 0.2)`` fields, as in PDEBench. Reference:
    implicit BDF (``solve_diffusion_sorption``).
    """

    name = "diffusion_sorption"
    periodic_x = False
    nu = None  # Burgers' viscosity; none here

    def __init__(self, t_final: float = 500.0) -> None:
        self.params, self.t_final = dict(DIFFUSION_SORPTION_DEFAULTS), float(t_final)

    def grid(self, n_x: int, n_t: int) -> tuple[Tensor, Tensor]:
        x = (torch.arange(n_x, dtype=torch.float64) + 0.5) / n_x
        return x, torch.linspace(0.0, self.t_final, n_t, dtype=torch.float64)

    def trunk_features(self, tt: Tensor, xx: Tensor) -> Tensor:
        return torch.stack([tt / self.t_final, xx], dim=-1)

    def time_factor(self, tau: Tensor) -> Tensor:
        return tau.sqrt()

    def initial_conditions(self, n: int, n_x: int, n_modes: int, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        level = 0.2 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
        return level.expand(n, n_x).contiguous()

    def reference(self, u0: Tensor, n_t: int) -> Tensor:
        return solve_diffusion_sorption(u0, self.t_final, n_t)

    def stencils(self, v: Tensor, dt: float, affine: bool) -> tuple[Tensor, ...]:
        n_x = v.shape[2]
        dx, d = 1.0 / n_x, self.params["D"]
        left = torch.zeros_like(v[:, :, :1])
        if affine:
            left = left + self.params["sol"]
        right = d * (v[:, :, -2:-1] - v[:, :, -1:]) / dx
        padded = torch.cat([left, v, right], dim=2)
        lap = (padded[:, :, 2:] - 2.0 * v + padded[:, :, :-2]) / (dx * dx)
        return (*time_rows(v, dt), lap[:, 1:])

    def combine(self, u: Tensor, u_tau: Tensor, lap: Tensor) -> Tensor:
        return u_tau - self.t_final * self.params["D"] / retardation(u, self.params) * lap


def check_setting(
    problem: Problem | None,
    n_x: int | None,
    n_t: int | None,
    t_final: float | None,
    nu: float | None,
) -> None:
    """The checks shared by the data module and the module: problem, grid and PDE arguments.

    ``None`` is not checked (the module takes such settings from its data module)."""
    if problem is not None:
        check_choice("problem", problem, PROBLEMS)
    if n_x is not None:
        check_positive_int("n_x", n_x, minimum=3)
    if n_t is not None:
        check_positive_int("n_t", n_t, minimum=3)
    if t_final is not None:
        check_real("t_final", t_final, strictly_positive=True)
    if nu is not None:
        check_real("nu", nu, strictly_positive=True)


def make_problem(
    problem: Problem, nu: float | None = None, t_final: float | None = None
) -> Burgers | DiffusionSorption:
    """The problem object. ``nu`` is Burgers' viscosity (``None``: 0.02) and has no meaning for
    diffusion-sorption; ``t_final=None`` takes the problem's default (``DEFAULT_T_FINAL``)."""
    check_choice("problem", problem, PROBLEMS)
    t_final = float(DEFAULT_T_FINAL[problem] if t_final is None else t_final)
    if problem == "burgers":
        return Burgers(0.02 if nu is None else nu, t_final)
    if nu is not None:
        raise ValueError(f"nu is Burgers' viscosity; problem={problem!r} takes nu=None, got {nu}.")
    return DiffusionSorption(t_final)


def pde_residual(problem: Burgers | DiffusionSorption, u: Tensor) -> Tensor:
    """Discrete residual ``(B, T - 1, X)`` of fields ``u (B, T, X)`` on rows ``1..T-1``, in
    rescaled time ``τ = t / t_final`` (see the module docstring)."""
    return problem.combine(*problem.stencils(u, 1.0 / (u.shape[1] - 1), affine=True))
