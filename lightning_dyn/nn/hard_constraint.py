"""Hard-constraint layers: solve for the basis coefficients instead of predicting them.

Chalapathi, Du & Krishnapriyan, "Scaling physics-informed hard constraints with
mixture-of-experts", arXiv 2402.13412. A network produces ``N`` basis functions ``Φ`` on the
``P`` points of a space-time grid; the field is ``u = Φ ω``, where ``ω`` is not an output of the
network but the solution of a least-squares problem built from the PDE residual, the
initial/boundary conditions and a ridge term. The constraint then holds (to the solver's
tolerance) at the sampled points whatever the network does, and training differentiates through
the ``argmin`` with the implicit function theorem
(:func:`lightning_dyn.functional.least_squares.solve_least_squares`), so memory does not grow
with the solver's iterations.

One solve over the whole domain couples every point and costs ``O(M N²)`` per problem with ``M``
residual rows; the mixture of experts (``HardConstraintMoE``) splits the grid into ``K`` blocks,
each with its own ``ω_k`` solved from the residual on its block only. The ``K`` solves are
independent, so they are batched (vmapped) together, and each is smaller (whether the experts
are also more accurate than one solve is what the issue-8 benchmark is to measure).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_dyn._checks import check_callable, check_choice, check_positive_int, check_real
from lightning_dyn.functional.least_squares import (
    ON_FAILURE,
    LeastSquaresResult,
    OnFailure,
    solve_least_squares,
)
from lightning_dyn.nn._constraint_inputs import check_basis, check_data

HardResidualFn = Callable[..., Tensor]


class HardConstraintLayer(nn.Module):
    """``u = Φ ω*`` with ``ω* = argmin_ω ½‖[r(ω, Φ, data); ridge · ω]‖²``, per sample.

    For each sample ``b`` the layer solves the nonlinear least-squares problem whose residual is
    the user's rows ``r = residual_fn(ω, basis[b], *(d[b] for d in constraint_data))`` followed by
    ``N`` ridge rows ``ridge · ω`` (the paper's ``1e-4 · ω``; the objective is therefore
    ``½‖r‖² + ½ ridge² ‖ω‖²``), by Levenberg-Marquardt in float64 starting from ``ω = 0``, all
    samples in one batched call. ``u = basis @ ω*`` is differentiable with respect to ``basis`` and
    every floating tensor in ``constraint_data`` through the implicit (full-Hessian) backward.

    Args:
        residual_fn: ``residual_fn(omega (N,), basis_b (P, N), *constraint_data_b) -> r (M,)``
            for ONE sample, in float64. Must be vmap-compatible (``torch.func``) and
            differentiable twice in ``omega``. Do not capture tensors to differentiate through
            in a closure: pass them in ``constraint_data``.
        ridge: Coefficient of the ridge rows (``>= 0``); it keeps the Hessian invertible when the
            residual rows do not determine all of ``ω``.
        max_iter: Most Levenberg-Marquardt iterations (``>= 1``).
        tol: Convergence tolerance on ``‖J^T r‖`` (see ``solve_least_squares``).
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` when some solves did not converge.

    Raises:
        ValueError: If an argument has the wrong type or value.
    """

    def __init__(
        self,
        residual_fn: HardResidualFn,
        ridge: float = 1e-4,
        max_iter: int = 50,
        tol: float = 1e-10,
        on_failure: OnFailure = "warn",
    ) -> None:
        super().__init__()
        check_callable("residual_fn", residual_fn, optional=False)
        check_real("ridge", ridge)
        check_positive_int("max_iter", max_iter)
        check_real("tol", tol)
        check_choice("on_failure", on_failure, ON_FAILURE)
        self.residual_fn = residual_fn
        self.ridge = float(ridge)
        self.max_iter = max_iter
        self.tol = float(tol)
        self.on_failure = on_failure

    def residual_rows(self, omega: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        """The rows solved for ONE sample: ``residual_fn``'s, then the ridge rows ``ridge · ω``.

        ``params`` is ``(basis_b, *constraint_data_b)``; ``HardConstraintMoE`` calls it per block.
        """
        r = self.residual_fn(omega, *params)
        return torch.cat([r, self.ridge * omega])

    def forward(
        self, basis: Tensor, constraint_data: Sequence[Tensor] = ()
    ) -> tuple[Tensor, LeastSquaresResult]:
        """Solve for ``ω*`` and return ``(u, result)``.

        Args:
            basis: ``(B, P, N)`` basis functions on ``P`` grid points.
            constraint_data: Tensors with leading dimension ``B`` passed, sliced per sample,
                after ``basis_b`` to ``residual_fn``.

        Returns:
            ``u`` of shape ``(B, P)`` in ``basis``'s dtype, and the ``LeastSquaresResult``
            (float64 ``omega`` of shape ``(B, N)``, convergence diagnostics).

        Raises:
            ValueError: If ``basis`` is not a floating ``(B, P, N)`` tensor, or an entry of
                ``constraint_data`` lacks the leading dimension ``B``.
        """
        check_basis(basis)
        data = check_data(constraint_data, basis.shape[0])
        result = solve_least_squares(
            self.residual_rows,
            (basis, *data),
            basis.new_zeros(basis.shape[0], basis.shape[2], dtype=torch.float64),
            max_iter=self.max_iter,
            tol=self.tol,
            on_failure=self.on_failure,
        )
        u = (basis @ result.omega.to(basis.dtype).unsqueeze(-1)).squeeze(-1)
        return u, result

    def extra_repr(self) -> str:
        return (
            f"ridge={self.ridge:g}, max_iter={self.max_iter}, tol={self.tol:g}, "
            f"on_failure={self.on_failure!r}"
        )
