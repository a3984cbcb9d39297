"""Reference solutions for the 1D PDE recipe (issue 8): viscous Burgers and diffusion-sorption.

Everything here is pure torch in float64 (scipy only for the implicit diffusion-sorption solve),
deterministic, and download-free: the recipe generates its own trajectories.

Conventions
-----------
* Burgers lives on the periodic unit interval ``[0, 1)`` with ``n_x`` equispaced nodes
  ``x_j = j / n_x`` (``dx = 1 / n_x``; the node at ``x = 1`` is the node at ``x = 0`` and is not
  stored). Time and space are dimensionless; ``nu`` is the kinematic viscosity in the same units.
* Trajectories are ``(B, n_t, X)``: batch, saved time, space. The saved times are
  ``torch.linspace(0, t_final, n_t)``, both ends included, so index 0 is the initial condition.
* The reference is the *semi-discrete* solution: the PDE is first discretised in space with the
  central-difference stencil of :func:`burgers_operator`, and the resulting ODE system is
  integrated in time by classic RK4 with many small steps. A hard-constraint or physics residual
  that uses the same stencil is therefore exactly zero on the reference, up to the RK4 error.
"""

from __future__ import annotations

import math

import torch

from lightning_dyn._checks import check_positive_int, check_real, check_seed

__all__ = [
    "DIFFUSION_SORPTION_DEFAULTS",
    "burgers_grid",
    "burgers_operator",
    "diffusion_sorption_operator",
    "random_sine_ics",
    "retardation",
    "rk4_stability_margin",
    "solve_burgers",
    "solve_diffusion_sorption",
]

# Where the classic RK4 stability region crosses the negative real axis and the imaginary axis.
_RK4_REAL_LIMIT = 2.785
_RK4_IMAG_LIMIT = 2.0 * math.sqrt(2.0)


def _as_f64(u: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(u).__name__}.")
    if u.dim() != 2 or u.shape[0] < 1 or u.shape[1] < 3:
        raise ValueError(
            f"{name} must have shape (B, X) with B >= 1, X >= 3; got {tuple(u.shape)}."
        )
    if not torch.isfinite(u).all():
        raise ValueError(f"{name} must be finite.")
    return u.to(torch.float64)


def burgers_grid(n_x: int, t_final: float, n_t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(x, t)`` grids used by :func:`solve_burgers`: ``x_j = j / n_x``, ``t`` inclusive."""
    check_positive_int("n_x", n_x, minimum=3)
    check_positive_int("n_t", n_t, minimum=2)
    check_real("t_final", t_final, strictly_positive=True)
    x = torch.arange(n_x, dtype=torch.float64) / n_x
    return x, torch.linspace(0.0, t_final, n_t, dtype=torch.float64)


def burgers_operator(u: torch.Tensor, dx: float, nu: float) -> torch.Tensor:
    """Semi-discrete right-hand side of viscous Burgers, ``u_t = -u u_x + nu u_xx``, periodic.

    The stencil (second-order central differences on a periodic grid, index ``j`` mod ``X``)::

        u_x[j]  = (u[j+1] - u[j-1]) / (2 dx)
        u_xx[j] = (u[j+1] - 2 u[j] + u[j-1]) / dx**2
        rhs[j]  = -u[j] * u_x[j] + nu * u_xx[j]

    This is the stencil the recipe's hard-constraint residual is meant to reuse. In this
    (advective) form the sum over ``j`` of ``rhs`` is exactly zero, because
    ``sum_j u[j] u[j+1] = sum_j u[j] u[j-1]`` on a periodic grid, so the spatial mean of ``u`` is
    an invariant of the semi-discrete system (and RK4 preserves linear invariants).

    Args:
        u: values at the nodes, shape ``(..., X)``; the last dimension is space.
        dx: node spacing (``1 / X`` on the unit interval).
        nu: viscosity, ``>= 0``.
    """
    up = torch.roll(u, shifts=-1, dims=-1)  # u[j+1]
    um = torch.roll(u, shifts=1, dims=-1)  # u[j-1]
    u_x = (up - um) / (2.0 * dx)
    u_xx = (up - 2.0 * u + um) / (dx * dx)
    return -u * u_x + nu * u_xx


def rk4_stability_margin(dt: float, dx: float, nu: float, u_max: float) -> float:
    """``dt`` relative to the largest RK4-stable step for the central-difference Burgers RHS.

    The linearised spectrum lies in ``[-4 nu / dx**2, 0] x i [-u_max / dx, u_max / dx]``; the
    step is taken as stable when ``dt (4 nu / dx**2) / 2.785 + dt (u_max / dx) / 2.828 <= 1``
    (a convex combination of the real and imaginary RK4 limits). Values ``<= 1`` are stable.
    """
    return dt * (4.0 * nu / dx**2) / _RK4_REAL_LIMIT + dt * (u_max / dx) / _RK4_IMAG_LIMIT


def solve_burgers(
    u0: torch.Tensor, nu: float, t_final: float, n_t: int, substeps: int
) -> torch.Tensor:
    """Reference trajectories of periodic viscous Burgers: classic RK4 on :func:`burgers_operator`.

    Args:
        u0: initial values, shape ``(B, X)``, on the nodes ``x_j = j / X`` of ``[0, 1)``.
        nu: viscosity, ``> 0``.
        t_final: last saved time, ``> 0``.
        n_t: number of saved times ``linspace(0, t_final, n_t)`` (``>= 2``; index 0 is ``u0``).
        substeps: RK4 steps between consecutive saved times, so
            ``dt = t_final / ((n_t - 1) * substeps)``.

    Returns:
        float64 tensor ``(B, n_t, X)``.

    Raises:
        ValueError: on bad arguments, or when ``substeps`` is too small for RK4 stability given
            ``nu``, ``dx = 1 / X`` and ``max |u0|`` (see :func:`rk4_stability_margin`).
    """
    u = _as_f64(u0, "u0")
    check_real("nu", nu, strictly_positive=True)
    check_real("t_final", t_final, strictly_positive=True)
    check_positive_int("n_t", n_t, minimum=2)
    check_positive_int("substeps", substeps)
    n_x = u.shape[1]
    dx = 1.0 / n_x
    dt = t_final / ((n_t - 1) * substeps)
    u_max = float(u.abs().max())
    margin = rk4_stability_margin(dt, dx, nu, u_max)
    if margin > 1.0:
        needed = math.ceil(substeps * margin)
        raise ValueError(
            f"substeps={substeps} gives dt={dt:.3g}, unstable for RK4 with nu={nu}, "
            f"dx={dx:.3g}, max|u0|={u_max:.3g} (margin {margin:.2f} > 1); "
            f"use substeps >= {needed}."
        )
    out = torch.empty(u.shape[0], n_t, n_x, dtype=torch.float64)
    out[:, 0] = u
    half = 0.5 * dt
    for i in range(1, n_t):
        for _ in range(substeps):
            k1 = burgers_operator(u, dx, nu)
            k2 = burgers_operator(u + half * k1, dx, nu)
            k3 = burgers_operator(u + half * k2, dx, nu)
            k4 = burgers_operator(u + dt * k3, dx, nu)
            u = u + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        out[:, i] = u
    return out


def random_sine_ics(
    batch: int, n_x: int, n_modes: int, seed: int, amplitude: float = 1.0
) -> torch.Tensor:
    """Random smooth periodic initial conditions on ``[0, 1)``: a few sine modes per sample.

    ``u0(x) = amplitude * sum_{k=1..n_modes} a_k sin(2 pi k x + phi_k)`` with
    ``a_k ~ U(-1, 1) / k`` and ``phi_k ~ U(0, 2 pi)``, on the nodes ``x_j = j / n_x``. The samples
    have zero mean and ``max |u0| <= amplitude * H(n_modes)`` (harmonic number). A private
    ``torch.Generator`` seeded with ``seed`` is used; the global RNG is left untouched.

    Returns:
        float64 tensor ``(batch, n_x)``.
    """
    check_positive_int("batch", batch)
    check_positive_int("n_x", n_x, minimum=3)
    check_positive_int("n_modes", n_modes)
    if 2 * n_modes >= n_x:
        raise ValueError(f"n_modes must be < n_x / 2 (Nyquist); got n_modes={n_modes}, n_x={n_x}.")
    check_seed(seed)
    check_real("amplitude", amplitude, strictly_positive=True)
    gen = torch.Generator().manual_seed(seed)
    k = torch.arange(1, n_modes + 1, dtype=torch.float64)
    coef = (2.0 * torch.rand(batch, n_modes, generator=gen, dtype=torch.float64) - 1.0) / k
    phase = 2.0 * math.pi * torch.rand(batch, n_modes, generator=gen, dtype=torch.float64)
    x = torch.arange(n_x, dtype=torch.float64) / n_x
    arg = 2.0 * math.pi * k[None, :, None] * x[None, None, :] + phase[:, :, None]
    return amplitude * (coef[:, :, None] * torch.sin(arg)).sum(dim=1)


# PDEBench 1D diffusion-sorption (pdebench/data_gen/configs/diff-sorp.yaml and
# pdebench/data_gen/src/sim_diff_sorp.py in github.com/pdebench/PDEBench).
DIFFUSION_SORPTION_DEFAULTS: dict[str, float] = {
    "D": 5e-4,  # effective diffusion coefficient [m^2 / day]
    "por": 0.29,  # porosity phi [-]
    "rho_s": 2880.0,  # bulk density [kg / m^3]
    "k_f": 3.5e-4,  # Freundlich parameter
    "n_f": 0.874,  # Freundlich exponent [-]
    "sol": 1.0,  # solubility: the Dirichlet value at x = 0
}


def retardation(u: torch.Tensor, p: dict[str, float]) -> torch.Tensor:
    """The Freundlich retardation factor ``R(u)`` of diffusion-sorption with parameters ``p``."""
    # R(u) = 1 + (1 - phi)/phi * rho_s * k_f * n_f * (u + 1e-6)**(n_f - 1); u clipped at 0 so
    # tiny negative undershoots of the implicit solver cannot produce NaNs.
    base = u.clamp_min(0.0) + 1e-6
    return 1.0 + (1.0 - p["por"]) / p["por"] * p["rho_s"] * p["k_f"] * p["n_f"] * base ** (
        p["n_f"] - 1.0
    )


def diffusion_sorption_operator(u: torch.Tensor, **params: float) -> torch.Tensor:
    """Semi-discrete RHS of PDEBench's 1D diffusion-sorption, ``u_t = D / R(u) u_xx``.

    Domain ``x in (0, 1)`` with ``X`` cells of width ``dx = 1 / X`` and values at the cell centres
    ``x_j = (j + 1/2) dx``. Boundary conditions, as in PDEBench, through ghost values in the
    three-point Laplacian: ``u = sol`` at ``x = 0`` (ghost ``u[-1] = sol``) and the Cauchy
    condition ``u(1, t) = D u_x(1, t)`` (ghost ``u[X] = D (u[X-2] - u[X-1]) / dx``). ``R(u)`` is
    the Freundlich retardation factor of :data:`DIFFUSION_SORPTION_DEFAULTS`.

    Args:
        u: cell values, shape ``(..., X)``.
        **params: overrides of :data:`DIFFUSION_SORPTION_DEFAULTS`.
    """
    p = {**DIFFUSION_SORPTION_DEFAULTS, **params}
    dx = 1.0 / u.shape[-1]
    left = torch.full_like(u[..., :1], p["sol"])
    right = p["D"] * (u[..., -2:-1] - u[..., -1:]) / dx
    padded = torch.cat([left, u, right], dim=-1)
    lap = (padded[..., 2:] - 2.0 * u + padded[..., :-2]) / (dx * dx)
    return p["D"] / retardation(u, p) * lap


def solve_diffusion_sorption(
    u0: torch.Tensor,
    t_final: float = 500.0,
    n_t: int = 501,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    **params: float,
) -> torch.Tensor:
    """Reference trajectories of PDEBench's 1D diffusion-sorption by an implicit (BDF) solve.

    The system of :func:`diffusion_sorption_operator` (PDEBench's finite-volume stencil) is
    integrated per sample with ``scipy.integrate.solve_ivp(method="BDF")`` and a tridiagonal
    Jacobian sparsity; PDEBench itself used explicit RK45, which becomes stiff on fine grids.
    PDEBench's ICs are constant, ``u0 = U(0, 0.2)``, on 1024 cells, ``t_final = 500`` days,
    ``n_t = 501`` (here the grid is whatever ``u0`` has).

    Args:
        u0: initial cell values, shape ``(B, X)``, cell centres ``(j + 1/2) / X``.
        t_final: last saved time (days), ``> 0``; saved times are ``linspace(0, t_final, n_t)``.
        n_t: number of saved times, ``>= 2``.
        rtol, atol: BDF tolerances.
        **params: overrides of :data:`DIFFUSION_SORPTION_DEFAULTS`.

    Returns:
        float64 tensor ``(B, n_t, X)``.
    """
    import numpy as np
    from scipy.integrate import solve_ivp

    u = _as_f64(u0, "u0")
    check_real("t_final", t_final, strictly_positive=True)
    check_positive_int("n_t", n_t, minimum=2)
    check_real("rtol", rtol, strictly_positive=True)
    check_real("atol", atol, strictly_positive=True)
    unknown = set(params) - set(DIFFUSION_SORPTION_DEFAULTS)
    if unknown:
        raise ValueError(f"params has unknown names {sorted(unknown)}.")
    for name, value in params.items():
        check_real(name, value, strictly_positive=True)
    n_x = u.shape[1]
    t_eval = np.linspace(0.0, t_final, n_t)
    # Tridiagonal: each cell sees its neighbours (the Cauchy ghost couples only).
    sparsity = (
        np.eye(n_x, dtype=bool) | np.eye(n_x, k=1, dtype=bool) | np.eye(n_x, k=-1, dtype=bool)
    )

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        return diffusion_sorption_operator(torch.from_numpy(y), **params).numpy()

    out = torch.empty(u.shape[0], n_t, n_x, dtype=torch.float64)
    for b in range(u.shape[0]):
        sol = solve_ivp(
            rhs,
            (0.0, t_final),
            u[b].numpy(),
            method="BDF",
            t_eval=t_eval,
            rtol=rtol,
            atol=atol,
            jac_sparsity=sparsity,
        )
        if not sol.success:
            raise RuntimeError(f"diffusion-sorption BDF solve failed for sample {b}: {sol.message}")
        out[b] = torch.from_numpy(sol.y.T.copy())
    return out
