"""Batched, differentiable nonlinear least squares: the solve inside a hard-constraint layer.

A hard-constraint layer (Chalapathi, Du & Krishnapriyan, arXiv 2402.13412; issue 8) does not
predict the coefficients ``ω`` of its basis functions: it solves for them,
``ω* = argmin_ω ½‖r(ω, θ)‖²``, where ``θ`` is what the network produced (basis values, PDE
inputs). Training then needs ``∂L/∂θ`` through that ``argmin``. This module provides both halves:

- the forward solve is Levenberg-Marquardt in float64 (the paper needs float64), batched over a
  leading problem axis with ``torch.func.vmap`` (one problem per expert, per sample, ...), with
  per-problem damping, accept/reject and convergence masks so that an easy problem stops while a
  hard one keeps iterating; it ends with a few Newton steps on the full Hessian, which LM's
  Gauss-Newton model reaches only linearly when the residual at the optimum is not zero;
- the backward uses the implicit function theorem on the optimality condition
  ``g(ω, θ) = ∇_ω ½‖r‖² = J^T r = 0``: for an incoming ``v = ∂L/∂ω*``, solve ``H u = v`` with
  the FULL Hessian ``H = ∂g/∂ω = J^T J + Σ_i r_i ∇²r_i`` and return ``∂L/∂θ = -(∂g/∂θ)^T u``.
  No iteration is unrolled, so memory does not grow with the iteration count. The Gauss-Newton
  Hessian ``J^T J`` (Theseus' "implicit" mode) is exact only at zero residual; a PDE residual
  sampled at many points is not zero at the optimum, and ``J^T J`` then gives a biased gradient.

Everything is written for ONE problem with ``torch.func`` (``jacfwd``, ``hessian``, ``grad``,
``vjp``) and vmapped over problems, so ``residual_fn`` must be vmap-compatible (no ``.item()``,
no data-dependent Python control flow).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.func import grad, hessian, jacfwd, vjp, vmap

from lightning_dyn._checks import (
    check_callable,
    check_choice,
    check_positive_int,
    check_real,
    shape_of,
)

ResidualFn = Callable[[Tensor, Any], Tensor]
OnFailure = Literal["warn", "raise", "ignore"]
ON_FAILURE: tuple[str, ...] = get_args(OnFailure)

_DAMPING_MIN = 1e-300
_DAMPING_MAX = 1e300
_MAX_LISTED = 10
_ROUNDING = 16 * torch.finfo(torch.float64).eps


def _improves(f_try: Tensor, g_try: Tensor, f: Tensor, g: Tensor) -> Tensor:
    """Per problem: ``½‖r‖²`` drops, or stays within its rounding while ``‖J^T r‖`` drops.

    Near the optimum the objective changes by ``O(‖J^T r‖²)``, below its own rounding error: a
    strict decrease test would then reject the steps that finish the job.
    """
    flat = (f_try <= f * (1 + _ROUNDING)) & (g_try.norm(dim=-1) < g.norm(dim=-1))
    return torch.isfinite(f_try) & torch.isfinite(g_try).all(-1) & ((f_try < f) | flat)


@dataclass(frozen=True)
class LeastSquaresResult:
    """What ``solve_least_squares`` found, one row per problem.

    Attributes:
        omega: ``(B, N)`` float64 solutions. Differentiable with respect to the ``params`` tensors
            that require grad (implicit gradient), not with respect to ``omega0``.
        iterations: ``(B,)`` int64 Levenberg-Marquardt iterations each problem took (accepted
            and rejected steps; the Newton polish steps are not counted).
        residual_norm: ``(B,)`` float64 ``‖r(ω)‖`` at the returned ``omega``.
        gradient_norm: ``(B,)`` float64 ``‖J^T r‖`` at the returned ``omega``.
        converged: ``(B,)`` bool, ``gradient_norm <= tol · max(1, residual_norm)``.
    """

    omega: Tensor
    iterations: Tensor
    residual_norm: Tensor
    gradient_norm: Tensor
    converged: Tensor


def _indices(mask: Tensor) -> str:
    idx = mask.nonzero().flatten().tolist()
    shown = ", ".join(str(i) for i in idx[:_MAX_LISTED])
    more = f", ... ({len(idx)} in all)" if len(idx) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _check_inputs(residual_fn: Any, params: Any, omega0: Any) -> tuple[tuple[Tensor, ...], bool]:
    check_callable("residual_fn", residual_fn, optional=False)
    if not isinstance(omega0, Tensor) or omega0.ndim != 2 or not omega0.is_floating_point():
        got = (
            f"a {omega0.dtype} tensor of shape {tuple(omega0.shape)}"
            if isinstance(omega0, Tensor)
            else type(omega0).__name__
        )
        raise ValueError(f"omega0 must be a floating (B, N) tensor; got {got}.")
    if omega0.shape[0] == 0 or omega0.shape[1] == 0:
        raise ValueError(
            f"omega0 must have B >= 1 problems and N >= 1 unknowns; got {tuple(omega0.shape)}."
        )
    single = isinstance(params, Tensor)
    if single:
        tensors: tuple[Tensor, ...] = (params,)
    elif isinstance(params, Sequence) and not isinstance(params, str):
        tensors = tuple(params)
    else:
        raise ValueError(
            f"params must be a tensor or a tuple of tensors; got {type(params).__name__}."
        )
    batch = omega0.shape[0]
    for i, p in enumerate(tensors):
        if not isinstance(p, Tensor) or p.ndim == 0 or p.shape[0] != batch:
            raise ValueError(
                f"params[{i}] must be a tensor with a leading problem axis of size B={batch} "
                f"(the size of omega0's first dimension); got {shape_of(p)}."
            )
    return tensors, single


def _caller(
    residual_fn: ResidualFn, single: bool
) -> Callable[[Tensor, tuple[Tensor, ...]], Tensor]:
    """``residual_fn`` with params always as a tuple (one problem)."""

    def call(w: Tensor, p: tuple[Tensor, ...]) -> Tensor:
        return residual_fn(w, p[0] if single else p)

    return call


def _to64(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(
        t.detach().to(torch.float64) if t.is_floating_point() else t.detach() for t in tensors
    )


def _objective_gradient(call: Callable) -> Callable[[Tensor, tuple[Tensor, ...]], Tensor]:
    """``g(ω, θ) = ∇_ω ½‖r(ω, θ)‖²`` for one problem."""

    def objective(w: Tensor, p: tuple[Tensor, ...]) -> Tensor:
        return 0.5 * call(w, p).square().sum()

    return grad(objective)


def _batched_residual_and_jacobian(call: Callable) -> Callable:
    """``(ω (B, N), θ) -> (J (B, M, N), r (B, M))``, one forward-mode pass per problem."""

    def one(w: Tensor, p: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        def with_aux(w_: Tensor) -> tuple[Tensor, Tensor]:
            r = call(w_, p)
            return r, r

        return jacfwd(with_aux, has_aux=True)(w)

    return vmap(one)


def _gradient(jac: Tensor, r: Tensor) -> Tensor:
    return (jac.mT @ r.unsqueeze(-1)).squeeze(-1)


def _finite_problems(jac: Tensor, r: Tensor) -> Tensor:
    """``(B,)``: problems whose residual and Jacobian are finite."""
    return torch.isfinite(r).all(-1) & torch.isfinite(jac).flatten(1).all(-1)


def _try_step(
    rj: Callable,
    matrix: Tensor,
    g: Tensor,
    mask: Tensor,
    params: tuple[Tensor, ...],
    state: tuple[Tensor, Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Solve ``matrix · step = -g``, try it, keep it per problem where it improves (``_improves``).

    ``state`` is ``(ω, J, r, f)``; returns ``(solved, step, accept, new state)``. Problems outside
    ``mask``, or whose solve failed or is not finite, take no step.
    """
    omega, jac, r, f = state
    step, info = torch.linalg.solve_ex(matrix, -g)
    solved = mask & (info == 0) & torch.isfinite(step).all(-1)
    step = torch.where(solved[:, None], step, 0.0)
    jac_try, r_try = rj(omega + step, params)
    f_try = 0.5 * r_try.square().sum(-1)
    accept = solved & _improves(f_try, _gradient(jac_try, r_try), f, g)
    return (
        solved,
        step,
        accept,
        (
            torch.where(accept[:, None], omega + step, omega),
            torch.where(accept[:, None, None], jac_try, jac),
            torch.where(accept[:, None], r_try, r),
            torch.where(accept, f_try, f),
        ),
    )


def _levenberg_marquardt(
    rj: Callable,
    omega: Tensor,
    params: tuple[Tensor, ...],
    max_iter: int,
    tol: float,
    damping: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Batched LM with per-problem damping and masks; returns ``(ω, J, r, f, iterations)``.

    Problems that are not finite at ``omega0`` (a diverged network upstream) take no step; their
    ``ω`` is NaN.
    """
    batch, n = omega.shape
    jac, r = rj(omega, params)
    if r.ndim != 2 or r.shape[1] == 0:
        raise ValueError(
            "residual_fn must return a non-empty 1-D residual (M,) for one problem; got shape "
            f"{tuple(r.shape[1:])}."
        )
    finite = _finite_problems(jac, r)
    omega = torch.where(finite[:, None], omega, torch.nan)
    f = 0.5 * r.square().sum(-1)
    lam = torch.full((batch,), damping, dtype=torch.float64, device=omega.device)
    active = finite.clone()
    iterations = torch.zeros(batch, dtype=torch.int64, device=omega.device)
    eye = torch.eye(n, dtype=torch.float64, device=omega.device)
    for _ in range(max_iter):
        g = _gradient(jac, r)
        active &= g.norm(dim=-1) > tol * r.norm(dim=-1).clamp_min(1.0)
        if not active.any():
            break
        iterations += active
        a = jac.mT @ jac + lam[:, None, None] * eye
        # A non-finite trial residual or Jacobian is a rejected step (the damping grows).
        solved, step, accept, (omega, jac, r, f) = _try_step(
            rj, a, g, active, params, (omega, jac, r, f)
        )
        lam = torch.where(accept, lam * 0.1, torch.where(active, lam * 10.0, lam))
        lam = lam.clamp(_DAMPING_MIN, _DAMPING_MAX)
        # Stop a problem whose step no longer moves it (stalled or converged to rounding); the
        # gradient test at the end decides whether it counts as converged.
        small = solved & (step.norm(dim=-1) <= tol * (omega.norm(dim=-1) + tol))
        active &= ~small
    return omega, jac, r, f, iterations


def _newton_polish(
    rj: Callable,
    call: Callable,
    omega: Tensor,
    params: tuple[Tensor, ...],
    jac: Tensor,
    r: Tensor,
    f: Tensor,
    steps: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Full-Hessian Newton steps, kept per problem only where they do not increase ``½‖r‖²``."""

    def objective(w: Tensor, p: tuple[Tensor, ...]) -> Tensor:
        return 0.5 * call(w, p).square().sum()

    batched_hessian = vmap(hessian(objective))
    for _ in range(steps):
        g = _gradient(jac, r)
        everyone = torch.ones_like(f, dtype=torch.bool)
        _, _, _, (omega, jac, r, f) = _try_step(
            rj, batched_hessian(omega, params), g, everyone, params, (omega, jac, r, f)
        )
    return omega, jac, r


class _ImplicitLeastSquares(torch.autograd.Function):
    """Identity on the solved ``ω*`` forward; implicit-function-theorem gradient backward."""

    @staticmethod
    def forward(ctx: Any, call: Callable, omega: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        ctx.call = call
        ctx.save_for_backward(omega, *params)
        return omega.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_omega: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        omega, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        wanted = [i for i, need in enumerate(needs) if need]
        if not wanted:
            return (None, None, *([None] * len(params)))
        p64 = _to64(tuple(params))
        g_fn = _objective_gradient(ctx.call)
        v = grad_omega.to(torch.float64)
        hess = vmap(jacfwd(g_fn))(omega, p64)  # full Hessian of ½‖r‖², (B, N, N)
        u, info = torch.linalg.solve_ex(hess, v)
        # A problem that was non-finite to begin with (NaN ω) passes NaN on, as a torch layer
        # would; a finite problem with a singular Hessian has no implicit gradient.
        bad = ((info != 0) | ~torch.isfinite(u).all(-1)) & torch.isfinite(omega).all(-1)
        if bad.any():
            raise RuntimeError(
                "solve_least_squares backward: the Hessian of 0.5*||r||^2 at the solution is "
                f"singular or non-finite for problems {_indices(bad)}, so the implicit gradient "
                "is undefined; add a ridge row (e.g. eps * omega) to the residual."
            )

        def one(w: Tensor, p: tuple[Tensor, ...], u_: Tensor) -> tuple[Tensor, ...]:
            def g_of(diff: tuple[Tensor, ...]) -> Tensor:
                q = list(p)
                for i, d in zip(wanted, diff, strict=True):
                    q[i] = d
                return g_fn(w, tuple(q))

            _, pull = vjp(g_of, tuple(p[i] for i in wanted))
            (cotangents,) = pull(u_)
            return cotangents

        cotangents = vmap(one)(omega, p64, u)
        grads: list[Tensor | None] = [None] * len(params)
        for i, c in zip(wanted, cotangents, strict=True):
            grads[i] = (-c).to(params[i].dtype)
        return (None, None, *grads)


def solve_least_squares(
    residual_fn: ResidualFn,
    params: Tensor | Sequence[Tensor],
    omega0: Tensor,
    *,
    max_iter: int = 50,
    tol: float = 1e-10,
    damping: float = 1e-3,
    polish_steps: int = 2,
    on_failure: OnFailure = "warn",
) -> LeastSquaresResult:
    """Solve ``B`` problems ``ω*_b = argmin_ω ½‖r(ω, θ_b)‖²``, differentiably in ``θ``.

    Forward (no graph): Levenberg-Marquardt in float64 with damping ``λ`` per problem (step
    ``(J^T J + λ I) δ = -J^T r``; a step is accepted when it lowers ``½‖r‖²``, or keeps it within
    its rounding while lowering ``‖J^T r‖``; then ``λ ×= 0.1``, otherwise ``λ ×= 10``). A problem
    stops once ``‖J^T r‖ <= tol · max(1, ‖r‖)`` or its step falls below ``tol · (‖ω‖ + tol)``;
    the others keep going. Then ``polish_steps`` Newton steps with the full Hessian of
    ``½‖r‖²``, each kept only for the problems where it lowers the objective (same test). The
    Jacobians come from ``torch.func.jacfwd`` (one pass per problem, so this suits ``N``
    unknowns much smaller than ``M`` residuals, the hard-constraint case).

    Backward: the implicit function theorem with the full Hessian (see the module docstring);
    gradients reach every tensor in ``params`` that requires grad, in that tensor's dtype. The
    gradient is that of the exact ``argmin``: it is only as good as the convergence, so do not
    train through problems reported as unconverged. ``omega0`` gets no gradient (the solution does
    not depend on the starting point), and neither do tensors that ``residual_fn`` captures from
    its closure: pass everything to differentiate through ``params``.

    Args:
        residual_fn: ``residual_fn(omega, params) -> r`` for ONE problem: ``omega`` is ``(N,)``,
            ``params`` is that problem's slice of ``params`` (a tensor if a tensor was given,
            otherwise a tuple), ``r`` is ``(M,)``. Must be vmap-compatible and differentiable
            twice in ``omega`` and once more in ``params``.
        params: A tensor or a tuple of tensors, each with the problem axis ``B`` first. Floating
            tensors are cast to float64 for the solve; integer tensors are passed unchanged.
        omega0: ``(B, N)`` starting points.
        max_iter: Most Levenberg-Marquardt iterations per problem (``>= 1``).
        tol: Convergence tolerance (``>= 0``) on ``‖J^T r‖`` relative to ``max(1, ‖r‖)``, and on
            the step relative to ``‖ω‖``. If rounding keeps ``‖J^T r‖`` above it (badly scaled
            residuals), raise it.
        damping: Initial Levenberg-Marquardt damping ``λ`` (``> 0``).
        polish_steps: Full-Hessian Newton steps after LM (``>= 0``).
        on_failure: What to do when some problems did not converge: ``"warn"`` (``warnings.warn``
            naming how many and the worst gradient norm), ``"raise"`` (``RuntimeError``) or
            ``"ignore"`` (check ``result.converged`` yourself). Problems whose residual (or its
            Jacobian) is non-finite at ``omega0``, as after a diverged network, are failures too:
            their ``ω`` is NaN, they are not converged, ``"raise"`` raises
            ``FloatingPointError`` naming them, and their gradients are NaN.

    Returns:
        A ``LeastSquaresResult`` with float64 ``omega`` on ``omega0``'s device.

    Raises:
        ValueError: An argument has the wrong type, shape or value, or ``residual_fn`` does not
            return a 1-D residual.
        FloatingPointError: ``on_failure="raise"`` and ``residual_fn`` (or its Jacobian) is
            non-finite at ``omega0``; the message names the problems. (A non-finite trial point
            later on is a rejected step.)
        RuntimeError: ``on_failure="raise"`` and some problems did not converge.
    """
    tensors, single = _check_inputs(residual_fn, params, omega0)
    check_positive_int("max_iter", max_iter)
    check_real("tol", tol)
    check_real("damping", damping, strictly_positive=True)
    check_positive_int("polish_steps", polish_steps, minimum=0)
    check_choice("on_failure", on_failure, ON_FAILURE)

    call = _caller(residual_fn, single)
    rj = _batched_residual_and_jacobian(call)
    p64 = _to64(tensors)
    with torch.no_grad():
        omega, jac, r, f, iterations = _levenberg_marquardt(
            rj, omega0.detach().to(torch.float64), p64, max_iter, tol, damping
        )
        omega, jac, r = _newton_polish(rj, call, omega, p64, jac, r, f, polish_steps)
        residual_norm = r.norm(dim=-1)
        gradient_norm = _gradient(jac, r).norm(dim=-1)
        converged = gradient_norm <= tol * residual_norm.clamp_min(1.0)

    if not bool(converged.all()) and on_failure != "ignore":
        not_finite = ~torch.isfinite(omega).all(-1)
        if not_finite.any():
            message = (
                f"solve_least_squares: residual_fn returned non-finite residuals (or Jacobian) "
                f"at omega0 for problems {_indices(not_finite)}; their omega is NaN."
            )
            if on_failure == "raise":
                raise FloatingPointError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        failed = ~converged & ~not_finite
        if failed.any():
            message = (
                f"solve_least_squares: {int(failed.sum())} of {len(converged)} problems did not "
                f"converge in max_iter={max_iter} iterations (worst gradient norm "
                f"{gradient_norm[failed].max().item():.3e}, tol={tol:g}); problems "
                f"{_indices(failed)}."
            )
            if on_failure == "raise":
                raise RuntimeError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        omega = _ImplicitLeastSquares.apply(call, omega, *tensors)
    return LeastSquaresResult(
        omega=omega,
        iterations=iterations,
        residual_norm=residual_norm,
        gradient_norm=gradient_norm,
        converged=converged,
    )
