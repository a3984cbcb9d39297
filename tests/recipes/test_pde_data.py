"""Reference PDE solvers of the issue-8 recipe, checked against independent references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from lightning_dyn.recipes.pde._data import (
    burgers_grid,
    burgers_operator,
    diffusion_sorption_operator,
    random_sine_ics,
    solve_burgers,
    solve_diffusion_sorption,
)

pytestmark = pytest.mark.usefixtures("one_thread")


NU = 0.02


def test_shapes_grid_and_initial_row() -> None:
    u0 = random_sine_ics(4, 64, 3, seed=0)
    traj = solve_burgers(u0, NU, 1.0, 33, 20)  # the calibration setting: 64 x 33
    assert traj.shape == (4, 33, 64) and traj.dtype == torch.float64
    assert torch.equal(traj[:, 0], u0)
    x, t = burgers_grid(64, 1.0, 33)
    assert x[0] == 0.0 and x[-1] == 63 / 64 and t[0] == 0.0 and t[-1] == 1.0 and len(t) == 33


def test_rk4_is_fourth_order_in_time() -> None:
    u0 = random_sine_ics(2, 32, 3, seed=1)
    ref = solve_burgers(u0, NU, 0.5, 2, 800)[:, -1]
    errors = [
        (solve_burgers(u0, NU, 0.5, 2, n)[:, -1] - ref).abs().max().item() for n in (25, 50, 100)
    ]
    for coarse, fine in itertools.pairwise(errors):
        assert 12.0 < coarse / fine < 20.0, errors


def test_matches_scipy_rk45_on_the_same_semi_discrete_system() -> None:
    b, n_x, n_t, t_final = 2, 32, 11, 0.5
    u0 = random_sine_ics(b, n_x, 3, seed=2)
    ours = solve_burgers(u0, NU, t_final, n_t, 50).numpy()

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        u = torch.from_numpy(y).view(b, n_x)
        return burgers_operator(u, 1.0 / n_x, NU).reshape(-1).numpy()

    sol = solve_ivp(
        rhs,
        (0.0, t_final),
        u0.reshape(-1).numpy(),
        method="RK45",
        rtol=1e-12,
        atol=1e-13,
        t_eval=np.linspace(0.0, t_final, n_t),
    )
    assert sol.success
    theirs = sol.y.T.reshape(n_t, b, n_x).transpose(1, 0, 2)
    assert np.abs(theirs - ours).max() < 1e-8


def test_operator_stencil_on_a_known_function() -> None:
    n_x, k = 16, 2
    x, _ = burgers_grid(n_x, 1.0, 2)
    u = torch.cos(2 * math.pi * k * x)[None]
    dx = 1.0 / n_x
    ux = torch.stack([(u[0, (j + 1) % n_x] - u[0, j - 1]) / (2 * dx) for j in range(n_x)])
    uxx = torch.stack(
        [(u[0, (j + 1) % n_x] - 2 * u[0, j] + u[0, j - 1]) / dx**2 for j in range(n_x)]
    )
    expected = -u[0] * ux + 0.3 * uxx
    torch.testing.assert_close(burgers_operator(u, dx, 0.3)[0], expected, rtol=0, atol=1e-12)


def test_mean_is_conserved() -> None:
    u0 = random_sine_ics(3, 64, 4, seed=3) + 0.25  # non-zero mean
    traj = solve_burgers(u0, NU, 1.0, 33, 20)
    means = traj.mean(dim=-1)
    assert (means - means[:, :1]).abs().max() < 1e-14
    assert (means[:, 0] - 0.25).abs().max() < 1e-12


def test_small_amplitude_sine_decays_like_the_discrete_laplacian() -> None:
    n_x, k, eps, t_final, n_t = 32, 3, 1e-9, 1.0, 11
    x, t = burgers_grid(n_x, t_final, n_t)
    u0 = eps * torch.sin(2 * math.pi * k * x)[None]
    traj = solve_burgers(u0, NU, t_final, n_t, 50)
    dx = 1.0 / n_x
    k_eff_sq = 4.0 / dx**2 * math.sin(math.pi * k * dx) ** 2  # symbol of the 3-point Laplacian
    exact = torch.exp(-NU * k_eff_sq * t)[:, None] * torch.sin(2 * math.pi * k * x)[None]
    assert (traj[0] / eps - exact).abs().max() < 1e-6


def test_random_sine_ics_seeded_and_private_rng() -> None:
    state = torch.get_rng_state()
    a = random_sine_ics(5, 64, 3, seed=7)
    b = random_sine_ics(5, 64, 3, seed=7)
    c = random_sine_ics(5, 64, 3, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == (5, 64) and a.dtype == torch.float64
    assert a.mean(dim=-1).abs().max() < 1e-12  # pure sine modes: zero mean
    assert a.abs().max() <= 1.0 + 1 / 2 + 1 / 3
    spectrum = torch.fft.rfft(a).abs()
    assert spectrum[:, 4:].max() < 1e-10  # only wavenumbers 1..3


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: solve_burgers(torch.zeros(2, 64), NU, 1.0, 33, 2), "substeps"),
        (lambda: solve_burgers(random_sine_ics(2, 64, 3, 0), NU, 1.0, 33, 2), "substeps"),
        (lambda: solve_burgers(torch.zeros(2, 64), NU, 1.0, 33, 0), "substeps"),
        (lambda: solve_burgers(torch.zeros(2, 64), 0.0, 1.0, 33, 20), "nu"),
        (lambda: solve_burgers(torch.zeros(2, 64), NU, -1.0, 33, 20), "t_final"),
        (lambda: solve_burgers(torch.zeros(2, 64), NU, 1.0, 1, 20), "n_t"),
        (lambda: solve_burgers(torch.zeros(64), NU, 1.0, 33, 20), "u0"),
        (lambda: solve_burgers(torch.full((1, 8), math.nan), NU, 1.0, 3, 20), "u0"),
        (lambda: random_sine_ics(0, 64, 3, 0), "batch"),
        (lambda: random_sine_ics(2, 64, 0, 0), "n_modes"),
        (lambda: random_sine_ics(2, 8, 4, 0), "n_modes"),
        (lambda: random_sine_ics(2, 64, 3, 1.5), "seed"),
        (lambda: solve_diffusion_sorption(torch.zeros(1, 8), D=-1.0), "D"),
        (lambda: solve_diffusion_sorption(torch.zeros(1, 8), bogus=1.0), "bogus"),
    ],
)
def test_bad_arguments_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_diffusion_sorption_matches_explicit_rk45_and_stays_bounded() -> None:
    # PDEBench: constant IC in [0, 0.2], u = 1 at x = 0; a coarse grid keeps RK45 non-stiff.
    n_x, t_final, n_t = 32, 100.0, 11
    u0 = torch.tensor([[0.05], [0.15]]).expand(2, n_x)
    ours = solve_diffusion_sorption(u0, t_final, n_t)
    assert ours.shape == (2, n_t, n_x)
    for b in range(2):
        sol = solve_ivp(
            lambda _t, y: diffusion_sorption_operator(torch.from_numpy(y)).numpy(),
            (0.0, t_final),
            u0[b].numpy().copy(),
            method="RK45",
            rtol=1e-11,
            atol=1e-12,
            t_eval=np.linspace(0.0, t_final, n_t),
        )
        assert sol.success
        assert np.abs(sol.y.T - ours[b].numpy()).max() < 1e-6
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    assert (ours[:, -1, 0] > ours[:, 0, 0] + 0.3).all()  # the x = 0 inflow raises the left cells
