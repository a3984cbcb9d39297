"""Batched differentiable least squares: lstsq, gradcheck, unrolled Newton and Gauss-Newton."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_dyn.functional import LeastSquaresResult, solve_least_squares

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- problems ---------------------------------------------------------------------------------


def _linear(omega: torch.Tensor, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
    a, b = params
    return a @ omega - b


def _exp_fit(omega: torch.Tensor, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``r_i = exp(ω·x_i)·θ_a - y_i`` plus a ridge ``1e-2·ω``: nonzero residual at the optimum."""
    scale, x, y = params
    return torch.cat([torch.exp(x @ omega) * scale - y, 1e-2 * omega])


def _exp_problem(batch: int = 3, m: int = 6, n: int = 2, seed: int = 0):
    g = _gen(seed)
    scale = 1 + 0.5 * torch.rand(batch, generator=g, dtype=F64)
    x = 0.5 * torch.randn(batch, m, n, generator=g, dtype=F64)
    truth = torch.tensor([0.3, -0.2], dtype=F64)[:n]
    y = torch.exp(x @ truth) + 0.3 * torch.randn(batch, m, generator=g, dtype=F64)
    return scale, x, y


def _newton_unrolled(scale, x, y, omega_start, steps: int = 25) -> torch.Tensor:
    """A plain differentiable Newton loop with the full Hessian, one problem, autograd only."""
    omega = omega_start.clone().requires_grad_(True)
    for _ in range(steps):
        f = 0.5 * _exp_fit(omega, (scale, x, y)).square().sum()
        (g,) = torch.autograd.grad(f, omega, create_graph=True)
        hess = torch.stack(
            [torch.autograd.grad(g[i], omega, create_graph=True)[0] for i in range(len(g))]
        )
        omega = omega - torch.linalg.solve(hess, g)
    return omega


# --- forward ----------------------------------------------------------------------------------


def test_linear_problem_matches_lstsq() -> None:
    g = _gen(1)
    batch, m, n = 4, 12, 5
    q, _ = torch.linalg.qr(torch.randn(batch, m, n, generator=g, dtype=F64))
    a = q * torch.linspace(1.0, 3.0, n, dtype=F64)  # singular values in [1, 3]
    b = torch.randn(batch, m, generator=g, dtype=F64)
    res = solve_least_squares(_linear, (a, b), torch.zeros(batch, n), on_failure="raise")
    assert isinstance(res, LeastSquaresResult)
    ref = torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1)
    assert res.omega.dtype == F64 and res.omega.shape == (batch, n)
    torch.testing.assert_close(res.omega, ref, atol=1e-10, rtol=0)
    assert res.converged.all()
    assert res.iterations.dtype == torch.int64 and res.iterations.shape == (batch,)
    torch.testing.assert_close(
        res.residual_norm, (a @ ref.unsqueeze(-1)).squeeze(-1).sub(b).norm(dim=-1)
    )
    assert (res.gradient_norm <= 1e-10 * res.residual_norm.clamp_min(1)).all()


def _rosenbrock_like(omega: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    a, c = params[0], params[1]
    return torch.stack([a * (omega[1] - omega[0] ** 2), c - omega[0], 0.5 * a * (omega[1] - 1.5)])


def test_per_problem_masks_match_solving_alone() -> None:
    # Problem 0 is linear (a = 0): one Gauss-Newton step solves it. Problem 1 is curved.
    params = torch.tensor([[0.0, 2.0], [10.0, 1.0]], dtype=F64)
    omega0 = torch.tensor([[0.0, 0.0], [-1.2, 1.0]], dtype=F64)
    kwargs = {"damping": 1e-12, "on_failure": "raise"}
    both = solve_least_squares(_rosenbrock_like, params, omega0, **kwargs)
    assert both.converged.all()
    assert both.iterations[0] == 1
    assert both.iterations[1] >= 4
    for i in range(2):
        alone = solve_least_squares(
            _rosenbrock_like, params[i : i + 1], omega0[i : i + 1], **kwargs
        )
        assert alone.iterations.item() == both.iterations[i].item()
        torch.testing.assert_close(alone.omega[0], both.omega[i], atol=1e-12, rtol=0)


# --- backward ---------------------------------------------------------------------------------


def test_gradcheck_nonzero_residual() -> None:
    scale, x, y = _exp_problem(batch=2)
    omega0 = torch.zeros(2, 2, dtype=F64)

    def solve(scale: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return solve_least_squares(_exp_fit, (scale, x, y), omega0, on_failure="raise").omega

    res = solve_least_squares(_exp_fit, (scale, x, y), omega0, on_failure="raise")
    assert (res.residual_norm > 0.1).all()  # the residual at the optimum is far from zero
    inputs = (scale.requires_grad_(), x.requires_grad_(), y.requires_grad_())
    assert torch.autograd.gradcheck(solve, inputs, atol=1e-7, rtol=1e-6)


def _implicit_and_unrolled(weights: torch.Tensor):
    scale, x, y = _exp_problem(batch=3)
    scale.requires_grad_()
    y.requires_grad_()
    res = solve_least_squares(_exp_fit, (scale, x, y), torch.zeros(3, 2), on_failure="raise")
    implicit = torch.autograd.grad((res.omega * weights).sum(), (scale, y))
    unrolled_omega = torch.stack(
        [_newton_unrolled(scale[b], x[b], y[b], res.omega[b].detach() + 0.05) for b in range(3)]
    )
    torch.testing.assert_close(unrolled_omega, res.omega.detach(), atol=1e-12, rtol=0)
    unrolled = torch.autograd.grad((unrolled_omega * weights).sum(), (scale, y))
    return (scale, x, y), res.omega.detach(), implicit, unrolled


def test_implicit_gradient_matches_unrolled_newton() -> None:
    weights = torch.randn(3, 2, generator=_gen(5), dtype=F64)
    _, _, implicit, unrolled = _implicit_and_unrolled(weights)
    for got, ref in zip(implicit, unrolled, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-8, rtol=0)


def test_gauss_newton_hessian_gives_a_different_gradient() -> None:
    weights = torch.randn(3, 2, generator=_gen(5), dtype=F64)
    (scale, x, y), omega, implicit, unrolled = _implicit_and_unrolled(weights)

    # Gauss-Newton implicit gradient: H ≈ J^T J instead of the full Hessian.
    def grad_objective(w, s, yy, xx):
        return torch.func.grad(lambda w_: 0.5 * _exp_fit(w_, (s, xx, yy)).square().sum())(w)

    def gn_one(w, s, xx, yy, v):
        jac = torch.func.jacfwd(_exp_fit)(w, (s, xx, yy))
        u = torch.linalg.solve(jac.T @ jac, v)
        _, pull = torch.func.vjp(lambda s_, y_: grad_objective(w, s_, y_, xx), s, yy)
        return tuple(-c for c in pull(u))

    gn = torch.func.vmap(gn_one)(omega, scale.detach(), x, y.detach(), weights)
    for got, ref, wrong in zip(implicit, unrolled, gn, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-8, rtol=0)
        assert (wrong - ref).norm() > 1e-4 * ref.norm()


def test_float32_params_get_float32_gradients_and_omega0_none() -> None:
    scale, x, y = (t.float() for t in _exp_problem(batch=2))
    scale.requires_grad_()
    omega0 = torch.zeros(2, 2, requires_grad=True)
    res = solve_least_squares(_exp_fit, (scale, x, y), omega0, on_failure="raise")
    assert res.omega.dtype == F64
    res.omega.sum().backward()
    assert scale.grad is not None and scale.grad.dtype == torch.float32
    assert torch.isfinite(scale.grad).all()
    assert omega0.grad is None and x.grad is None


def test_no_graph_without_grad() -> None:
    scale, x, y = _exp_problem(batch=2)
    res = solve_least_squares(_exp_fit, (scale, x, y), torch.zeros(2, 2))
    assert not res.omega.requires_grad


# --- failures ---------------------------------------------------------------------------------


def test_unconverged_warns_or_raises() -> None:
    params = _exp_problem(batch=3)
    omega0 = torch.full((3, 2), 3.0, dtype=F64)
    with pytest.warns(RuntimeWarning, match=r"3 of 3 problems did not converge.*worst gradient"):
        res = solve_least_squares(_exp_fit, params, omega0, max_iter=1, polish_steps=0)
    assert not res.converged.any()
    assert (res.iterations == 1).all()
    with pytest.raises(RuntimeError, match=r"did not converge in max_iter=1"):
        solve_least_squares(_exp_fit, params, omega0, max_iter=1, on_failure="raise")
    res = solve_least_squares(_exp_fit, params, omega0, max_iter=1, on_failure="ignore")
    assert not res.converged.all()


def test_non_finite_problems_fail_alone_by_the_on_failure_policy() -> None:
    # A diverged network upstream: problem 1 is NaN, the others must still be solved.
    values = torch.tensor([1.0, float("nan"), 2.0], dtype=F64)

    def residual(omega: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return omega - p

    params = values[:, None].expand(3, 2).clone().requires_grad_(True)
    with pytest.raises(FloatingPointError, match=r"non-finite residuals.*omega0.*\[1\]"):
        solve_least_squares(residual, params, torch.zeros(3, 2), on_failure="raise")
    with pytest.warns(RuntimeWarning, match=r"non-finite residuals.*\[1\]"):
        result = solve_least_squares(residual, params, torch.zeros(3, 2), on_failure="warn")
    assert result.converged.tolist() == [True, False, True]
    assert torch.isnan(result.omega[1]).all()
    torch.testing.assert_close(result.omega[[0, 2]], params[[0, 2]].detach())
    # The backward does not refuse the batch: the others get their exact gradients.
    (grad,) = torch.autograd.grad(result.omega.sum(), params)
    torch.testing.assert_close(grad[[0, 2]], torch.ones(2, 2, dtype=F64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve_least_squares(residual, params.detach(), torch.zeros(3, 2), on_failure="ignore")


def test_non_finite_trial_points_are_rejected_steps() -> None:
    # log is NaN for omega <= 0; a long first step overshoots there and must be rejected.
    def residual(omega: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return torch.log(omega) - p

    target = torch.tensor([[-3.0], [2.0]], dtype=F64)
    res = solve_least_squares(residual, target, torch.full((2, 1), 0.5), on_failure="raise")
    torch.testing.assert_close(res.omega, target.exp(), atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iter": 0}, r"max_iter.*>= 1.*0"),
        ({"tol": -1.0}, r"tol.*>= 0.*-1"),
        ({"damping": 0.0}, r"damping.*> 0.*0"),
        ({"polish_steps": 1.5}, r"polish_steps.*>= 0.*1.5"),
        ({"on_failure": "skip"}, r"on_failure='skip'.*warn"),
        ({"omega0": torch.zeros(3)}, r"omega0.*\(B, N\).*\(3,\)"),
        ({"params": (torch.zeros(2, 6),)}, r"params\[0\].*B=3.*\(2, 6\)"),
        ({"params": 3.0}, r"params.*tensor.*float"),
        ({"residual_fn": None}, r"residual_fn.*callable"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"residual_fn": _exp_fit, "params": _exp_problem(batch=3), "omega0": torch.zeros(3, 2)}
    for key in ("residual_fn", "params", "omega0"):
        if key in kwargs:
            args[key] = kwargs.pop(key)
    with pytest.raises(ValueError, match=match):
        solve_least_squares(args["residual_fn"], args["params"], args["omega0"], **kwargs)


def test_residual_must_be_one_dimensional() -> None:
    with pytest.raises(ValueError, match=r"residual_fn must return.*1-D"):
        solve_least_squares(lambda w, p: w.sum() - p, torch.zeros(2), torch.zeros(2, 2))
