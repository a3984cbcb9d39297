"""Finite-difference Hessian-vector products against the exact products of HessianOperator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_dyn.functional import HessianOperator, hessian_eigenvalues
from lightning_dyn.functional.finite_difference import FiniteDifferenceHessian


def _model_and_batch(dtype: torch.dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    model.to(dtype)
    x = torch.randn(40, 6, dtype=dtype)
    y = torch.randint(0, 3, (40,))
    return model, x, y


def _gradient(model, x, y):
    params = list(model.parameters())

    def gradient():
        loss = F.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, params)

    return gradient


def _loss(forward, batch):
    return F.cross_entropy(forward(batch[0]), batch[1])


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 2e-4), (torch.float64, 1e-9)])
def test_products_match_the_exact_hessian(dtype: torch.dtype, tolerance: float) -> None:
    model, x, y = _model_and_batch(dtype)
    exact = HessianOperator(model, _loss, [(x, y)], dtype=torch.float64)
    approx = FiniteDifferenceHessian(_gradient(model, x, y), list(model.parameters()), dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    errors = []
    for _ in range(5):
        v = torch.randn(exact.dim, generator=gen, dtype=torch.float64)
        hv = exact.matvec(v)
        errors.append(float((approx.matvec(v.to(dtype)).double() - hv).norm() / hv.norm()))
    assert max(errors) < tolerance, errors


def test_the_top_eigenvalue_matches_lanczos_on_the_exact_hessian() -> None:
    model, x, y = _model_and_batch(torch.float32)
    exact = HessianOperator(model, _loss, [(x, y)], dtype=torch.float64)
    approx = FiniteDifferenceHessian(_gradient(model, x, y), list(model.parameters()))
    top = hessian_eigenvalues(exact, k=1, tol=1e-6).values[0]
    fd = hessian_eigenvalues(approx, k=1, tol=1e-4, dim=approx.dim).values[0]
    assert float(fd) == pytest.approx(float(top), rel=2e-4)


def test_a_quadratic_is_differenced_exactly_and_the_weights_are_restored() -> None:
    torch.manual_seed(0)
    a = torch.randn(5, 5, dtype=torch.float64)
    hessian = a @ a.T
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    before = w.detach().clone()

    def gradient():
        return torch.autograd.grad(0.5 * w @ hessian @ w, [w])

    op = FiniteDifferenceHessian(gradient, [w], dtype=torch.float64)
    v = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), hessian @ v, rtol=1e-9, atol=1e-9)
    assert torch.equal(w.detach(), before)
    assert op.num_hvps == 1


def test_bad_arguments_are_refused() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="gradient must be callable"):
        FiniteDifferenceHessian("grad", [w])
    with pytest.raises(ValueError, match="step must be a positive number"):
        FiniteDifferenceHessian(lambda: [w], [w], step=-1.0)
    with pytest.raises(ValueError, match=r"v must be a tensor of shape \(3,\)"):
        FiniteDifferenceHessian(lambda: [w], [w]).matvec(torch.zeros(4))
