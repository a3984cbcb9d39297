"""Hessian-vector products and Lanczos spectra against exact Hessians and explicit matrices."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_dyn.functional import (
    EigenResult,
    HessianOperator,
    SpectralDensity,
    TraceResult,
    hessian_eigenvalues,
    hessian_spectral_density,
    hessian_trace,
    measuring,
)

METHODS = ("double_backward", "forward_over_reverse")
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ce(forward, batch):
    return F.cross_entropy(forward(batch[0]), batch[1])


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)
    ).double()


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(1)
    return torch.randn(n, 6, generator=g, dtype=F64), torch.randint(0, 4, (n,), generator=g)


def _full_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact Hessian of the mean cross-entropy over all parameters, flattened in order."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = [t.view(p.shape) for t, p in zip(flat.split(sizes), params, strict=True)]
        logits = torch.func.functional_call(model, dict(zip(names, pieces, strict=True)), (x,))
        return F.cross_entropy(logits, y)

    return torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))


@pytest.fixture(scope="module")
def mlp_problem() -> SimpleNamespace:
    model = _mlp()
    x, y = _data()
    hessian = _full_hessian(model, x, y)
    return SimpleNamespace(
        model=model, x=x, y=y, hessian=hessian, spectrum=torch.linalg.eigvalsh(hessian)
    )


def _operator(problem: SimpleNamespace, method: str = "double_backward") -> HessianOperator:
    x, y = problem.x, problem.y
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]  # unequal sizes: weighted mean
    return HessianOperator(problem.model, _ce, batches, method=method, dtype=F64)


def _sym_matrix(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = eigenvalues.shape[0]
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=F64))
    return (q * eigenvalues) @ q.T


def _counted(a: torch.Tensor) -> tuple[list[int], Callable[[torch.Tensor], torch.Tensor]]:
    """``v -> a v`` as a plain callable, and the list it appends to on every call."""
    calls: list[int] = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return a @ v

    return calls, matvec


# --- HessianOperator --------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_hvp_matches_full_hessian(mlp_problem: SimpleNamespace, method: str) -> None:
    op = _operator(mlp_problem, method)
    assert op.dim == mlp_problem.hessian.shape[0] == 368
    v = torch.randn(op.dim, generator=_gen(2), dtype=F64)
    hv = op(v)
    ref = mlp_problem.hessian @ v
    assert hv.dtype == F64 and hv.shape == (op.dim,) and not hv.requires_grad
    assert (hv - ref).norm() <= 1e-10 * ref.norm()
    assert op.num_hvps == 1


def test_hvp_methods_agree(mlp_problem: SimpleNamespace) -> None:
    v = torch.randn(368, generator=_gen(3), dtype=F64)
    a = _operator(mlp_problem, "double_backward").matvec(v)
    b = _operator(mlp_problem, "forward_over_reverse").matvec(v)
    assert (a - b).norm() <= 1e-6 * a.norm()


def test_keep_graph_reuses_the_gradient_graph(mlp_problem: SimpleNamespace) -> None:
    x, y = mlp_problem.x, mlp_problem.y
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    kept = HessianOperator(mlp_problem.model, _ce, batches, dtype=F64, keep_graph=True)
    forwards = []
    handle = mlp_problem.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        for seed in (5, 6, 7):
            v = torch.randn(368, generator=_gen(seed), dtype=F64)
            hv = kept.matvec(v)
            assert (hv - mlp_problem.hessian @ v).norm() <= 1e-10 * hv.norm()
    finally:
        handle.remove()
    assert len(forwards) == 2  # one forward per batch, on the first product only
    kept.release()
    assert not kept._kept
    with pytest.raises(ValueError, match=r"keep_graph=True applies to method='double_backward'"):
        HessianOperator(
            mlp_problem.model, _ce, batches, method="forward_over_reverse", keep_graph=True
        )


def test_batches_without_a_size_get_equal_weights(mlp_problem: SimpleNamespace) -> None:
    x, y, model = mlp_problem.x, mlp_problem.y, mlp_problem.model
    v = torch.randn(368, generator=_gen(4), dtype=F64)
    parts = [(x[:10], y[:10]), (x[10:], y[10:])]

    def loss(forward, batch):
        return F.cross_entropy(forward(batch.x), batch.y)

    no_size = [SimpleNamespace(x=a, y=b) for a, b in parts]
    equal = HessianOperator(model, loss, no_size, dtype=F64).matvec(v)
    each = [HessianOperator(model, _ce, [p], dtype=F64).matvec(v) for p in parts]
    torch.testing.assert_close(equal, 0.5 * (each[0] + each[1]))
    sized = HessianOperator(model, _ce, parts, dtype=F64).matvec(v)
    torch.testing.assert_close(sized, (10 * each[0] + 54 * each[1]) / 64)
    with_empty = HessianOperator(model, _ce, [*parts, (x[:0], y[:0])], dtype=F64).matvec(v)
    torch.testing.assert_close(with_empty, sized)  # weight 0, not a NaN mean


def test_flatten_unflatten_round_trip(mlp_problem: SimpleNamespace) -> None:
    op = _operator(mlp_problem)
    vec = torch.arange(op.dim, dtype=F64)
    pieces = op.unflatten(vec)
    assert [t.shape for t in pieces] == [p.shape for p in mlp_problem.model.parameters()]
    torch.testing.assert_close(op.flatten(pieces), vec)
    with pytest.raises(ValueError, match=r"vec must be a tensor of shape \(368,\); got \(3,\)"):
        op.unflatten(torch.zeros(3))
    with pytest.raises(ValueError, match=r"v must be a tensor of shape"):
        op.matvec(torch.zeros(367, dtype=F64))
    with pytest.raises(ValueError, match=r"tensors must have the shapes of params"):
        op.flatten(pieces[:-1])


def test_unused_parameter_gets_a_zero_block() -> None:
    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(5, 3)
            self.unused = nn.Linear(4, 4)  # PyHessian crashes on such parameters

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(torch.tanh(x)) ** 2

    torch.manual_seed(0)
    model = WithUnused().double()
    x = torch.randn(16, 5, generator=_gen(), dtype=F64)
    y = torch.randint(0, 3, (16,), generator=_gen(1))
    n_used = 18
    for method in METHODS:
        op = HessianOperator(model, _ce, [(x, y)], method=method, dtype=F64)
        assert op.dim == n_used + 20
        hv = op(torch.ones(op.dim, dtype=F64))
        assert torch.count_nonzero(hv[n_used:]) == 0
        assert torch.count_nonzero(hv[:n_used]) > 0
        used = HessianOperator(
            model, _ce, [(x, y)], params=model.used.parameters(), method=method, dtype=F64
        )
        full = hessian_eigenvalues(op, k=2, tol=1e-8)
        ref = hessian_eigenvalues(used, k=2, tol=1e-8)
        torch.testing.assert_close(full.values, ref.values, rtol=1e-7, atol=1e-12)
        assert torch.count_nonzero(full.vectors[:, n_used:].abs() > 1e-8) == 0


def test_loss_fn_must_return_a_scalar(mlp_problem: SimpleNamespace) -> None:
    def per_example(forward, batch):
        return F.cross_entropy(forward(batch[0]), batch[1], reduction="none")

    op = HessianOperator(mlp_problem.model, per_example, [(mlp_problem.x, mlp_problem.y)])
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar tensor; got \(64,\)"):
        op.matvec(torch.zeros(op.dim))


def test_matvec_refuses_inference_mode(mlp_problem: SimpleNamespace) -> None:
    op = _operator(mlp_problem)
    v = torch.zeros(op.dim, dtype=F64)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        op.matvec(v)
    with torch.no_grad():  # no_grad is fine: the product enables grad itself
        op.matvec(v)


def test_operator_rejects_bad_arguments(mlp_problem: SimpleNamespace) -> None:
    model, batch = mlp_problem.model, (mlp_problem.x, mlp_problem.y)
    with pytest.raises(ValueError, match=r"method='newton' is not supported"):
        HessianOperator(model, _ce, [batch], method="newton")
    with pytest.raises(ValueError, match=r"batches must contain at least one batch"):
        HessianOperator(model, _ce, [])
    with pytest.raises(ValueError, match=r"dtype must be a floating torch.dtype; got torch.int64"):
        HessianOperator(model, _ce, [batch], dtype=torch.int64)
    frozen = torch.zeros(3)
    with pytest.raises(ValueError, match=r"params must hold .* requires_grad=False"):
        HessianOperator(model, _ce, [batch], params=[frozen])
    outside = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"params must be parameters of model"):
        HessianOperator(model, _ce, [batch], params=[outside], method="forward_over_reverse")


# --- measuring: modes, buffers and .grad untouched --------------------------------------------


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)
    ).double()


@pytest.mark.parametrize("method", METHODS)
def test_measurement_leaves_modes_buffers_and_grads_unchanged(method: str) -> None:
    model = _bn_model()
    x = torch.randn(32, 5, generator=_gen(), dtype=F64)
    y = torch.randint(0, 3, (32,), generator=_gen(1))
    model.train()
    model(x)  # running statistics away from their initial values
    model[3].eval()  # a submodule with its own mode: must stay in eval mode
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(i + 1))
    grads = {id(p): (p.grad, p.grad.clone()) for p in model.parameters()}
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    op = HessianOperator(model, _ce, [(x[:12], y[:12]), (x[12:], y[12:])], method=method, dtype=F64)
    result = hessian_eigenvalues(op, k=2, tol=1e-6)
    hessian_trace(op, samples=4)
    hessian_spectral_density(op, steps=5, n_vectors=2)

    assert [m.training for m in model.modules()] == flags
    for key, value in model.state_dict().items():  # BN running_mean/var/num_batches_tracked
        assert torch.equal(value, state[key]), key
    for p in model.parameters():
        same_object, values = grads[id(p)]
        assert p.grad is same_object and torch.equal(p.grad, values)
    # The curvature measured is the eval-mode one (running statistics, no dropout).
    model.eval()
    reference = _full_hessian(model, x, y)
    top = torch.linalg.eigvalsh(reference).flip(0)[:2]
    torch.testing.assert_close(result.values, top, rtol=1e-6, atol=0)


def test_measuring_restores_modes_on_error() -> None:
    model = _bn_model()
    model.train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    with pytest.raises(KeyError), measuring(model) as inside:
        assert inside is model
        assert not any(m.training for m in model.modules())
        raise KeyError("boom")
    assert [m.training for m in model.modules()] == flags


# --- eigenvalues ------------------------------------------------------------------------------


@pytest.mark.parametrize("reorthogonalize", ["full", "partial"])
@pytest.mark.parametrize("method", METHODS)
def test_top_eigenvalues_match_exact(
    mlp_problem: SimpleNamespace, method: str, reorthogonalize: str
) -> None:
    op = _operator(mlp_problem, method)
    exact = mlp_problem.spectrum.flip(0)[:3]
    for tol in (1e-3, 1e-6):
        result = hessian_eigenvalues(op, k=3, tol=tol, reorthogonalize=reorthogonalize)
        assert isinstance(result, EigenResult) and result.converged
        assert result.values.dtype == F64 and result.vectors.shape == (3, op.dim)
        torch.testing.assert_close(result.values, exact, rtol=1e-4, atol=0)
        residual = result.vectors @ mlp_problem.hessian - result.values[:, None] * result.vectors
        assert bool((residual.norm(dim=1) <= 1.5 * tol * result.values.abs()).all())
        torch.testing.assert_close(result.vectors @ result.vectors.T, torch.eye(3, dtype=F64))
        # The recurrence's residual estimates are the true residuals (full orthogonality).
        torch.testing.assert_close(result.residuals, residual.norm(dim=1), rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("reorthogonalize", ["full", "partial"])
def test_smallest_and_both_match_exact(mlp_problem: SimpleNamespace, reorthogonalize: str) -> None:
    op = _operator(mlp_problem)
    spectrum = mlp_problem.spectrum
    low = hessian_eigenvalues(op, k=2, which="smallest", tol=1e-6, reorthogonalize=reorthogonalize)
    assert low.converged and bool((low.values < 0).all())
    torch.testing.assert_close(low.values, spectrum[:2], rtol=1e-4, atol=0)
    both = hessian_eigenvalues(op, k=2, which="both", tol=1e-6, reorthogonalize=reorthogonalize)
    expected = torch.cat([spectrum.flip(0)[:2], spectrum[:2]])
    torch.testing.assert_close(both.values, expected, rtol=1e-4, atol=0)
    assert both.vectors.shape == (4, op.dim) and both.residuals.shape == (4,)


def test_largest_is_signed_on_an_indefinite_quadratic() -> None:
    spectrum = torch.cat([torch.tensor([-5.0, 3.0, 1.0], dtype=F64), torch.linspace(-1, 0.5, 47)])
    a = _sym_matrix(spectrum)
    for reorthogonalize in ("full", "partial"):
        top = hessian_eigenvalues(
            lambda v: a @ v, dim=50, tol=1e-8, dtype=F64, reorthogonalize=reorthogonalize
        )
        assert top.values.tolist() == pytest.approx([3.0], rel=1e-10)  # PyHessian: -5
        low = hessian_eigenvalues(lambda v: a @ v, which="smallest", dim=50, tol=1e-8, dtype=F64)
        assert low.values.tolist() == pytest.approx([-5.0], rel=1e-10)
        torch.testing.assert_close(a @ low.vectors[0], -5.0 * low.vectors[0])


def test_small_operator_stops_with_exact_values() -> None:
    spectrum = torch.tensor([4.0, 2.0, 1.0, -1.0, -3.0], dtype=F64)
    a = _sym_matrix(spectrum, seed=1)
    result = hessian_eigenvalues(lambda v: a @ v, k=5, tol=1e-12, dim=5, dtype=F64)
    assert result.converged and result.num_hvps == 5
    torch.testing.assert_close(result.values, spectrum)
    # A start vector inside a 2-dimensional invariant subspace: the Krylov space closes after
    # two steps and Lanczos continues from a random vector orthogonal to it.
    d = torch.diag(spectrum)
    v0 = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=F64)
    result = hessian_eigenvalues(lambda v: d @ v, k=3, tol=1e-10, dim=5, v0=v0)
    torch.testing.assert_close(result.values, spectrum[:3])


def test_warm_start_needs_fewer_products(mlp_problem: SimpleNamespace) -> None:
    model = _mlp()
    x, y = mlp_problem.x, mlp_problem.y
    before = hessian_eigenvalues(HessianOperator(model, _ce, [(x, y)], dtype=F64), tol=1e-3)
    for _ in range(3):  # a few gradient steps: the Hessian moves a little
        grads = torch.autograd.grad(_ce(model, (x, y)), list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= 0.5 * g
    op = HessianOperator(model, _ce, [(x, y)], dtype=F64)
    warm = hessian_eigenvalues(op, tol=1e-3, v0=before.vectors[0])
    for seed in range(3):
        cold = hessian_eigenvalues(op, tol=1e-3, seed=seed)
        assert warm.num_hvps < cold.num_hvps
        assert warm.values.item() == pytest.approx(cold.values.item(), rel=1e-5)
    # (m, dim) previous eigenvectors: their sum is the start vector.
    several = hessian_eigenvalues(op, k=2, tol=1e-3, v0=before.vectors.expand(2, -1))
    assert several.converged


def test_autocast_is_disabled_inside(mlp_problem: SimpleNamespace) -> None:
    model = _mlp().float()
    batch = (mlp_problem.x.float(), mlp_problem.y)
    op = HessianOperator(model, _ce, [batch])
    plain = hessian_eigenvalues(op, k=2, tol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = hessian_eigenvalues(op, k=2, tol=1e-4)
        trace = hessian_trace(op, samples=4)
    assert under.vectors.dtype == torch.float32
    torch.testing.assert_close(under.values, plain.values, rtol=1e-6, atol=0)
    assert trace.mean == hessian_trace(op, samples=4).mean


def test_random_start_is_seeded_not_global() -> None:
    a = _sym_matrix(torch.linspace(-2, 5, 40, dtype=F64))
    torch.manual_seed(123)
    first = hessian_eigenvalues(lambda v: a @ v, dim=40, tol=1e-2, dtype=F64, seed=7)
    torch.manual_seed(456)
    second = hessian_eigenvalues(lambda v: a @ v, dim=40, tol=1e-2, dtype=F64, seed=7)
    assert torch.equal(first.values, second.values) and first.num_hvps == second.num_hvps


def test_num_hvps_counts_every_product(mlp_problem: SimpleNamespace) -> None:
    calls, matvec = _counted(_sym_matrix(torch.linspace(-2, 5, 30, dtype=F64)))
    result = hessian_eigenvalues(matvec, k=2, dim=30, tol=1e-6, dtype=F64)
    assert result.num_hvps == len(calls) > 0
    calls.clear()
    assert hessian_trace(matvec, samples=7, dim=30, dtype=F64).num_hvps == len(calls) == 7
    calls.clear()
    assert (
        hessian_trace(matvec, samples=7, method="hutch++", dim=30, dtype=F64).num_hvps
        == len(calls)
        == 7
    )
    calls.clear()
    density = hessian_spectral_density(matvec, steps=6, n_vectors=3, dim=30, dtype=F64)
    assert density.num_hvps == len(calls) == 18
    op = _operator(mlp_problem)
    result = hessian_eigenvalues(op, tol=1e-3)
    assert op.num_hvps == result.num_hvps


def test_plain_callable_works_in_the_default_dtype() -> None:
    a = _sym_matrix(torch.linspace(-2, 5, 20, dtype=F64)).float()
    result = hessian_eigenvalues(lambda v: a @ v, dim=20, tol=1e-4)
    assert result.vectors.dtype == torch.float32 and result.values.dtype == F64
    assert result.values.item() == pytest.approx(5.0, rel=1e-5)


# --- trace --------------------------------------------------------------------------------------


def test_hutchinson_within_three_standard_errors(mlp_problem: SimpleNamespace) -> None:
    exact = float(mlp_problem.hessian.trace())
    result = hessian_trace(_operator(mlp_problem), samples=100)
    assert isinstance(result, TraceResult)
    assert result.num_hvps == result.samples == 100
    assert abs(result.mean - exact) <= 3 * result.stderr
    assert 0 < result.stderr < 0.5 * abs(exact)


def test_hutch_plus_plus_beats_hutchinson_on_a_low_rank_dominated_matrix() -> None:
    n = 200
    tail = 0.05 * torch.rand(n - 5, generator=_gen(5), dtype=F64)
    spectrum = torch.cat([torch.tensor([400.0, 200, 100, 50, 20], dtype=F64), tail])
    a = _sym_matrix(spectrum, seed=2)
    exact = float(spectrum.sum())
    for seed in range(3):
        plain = hessian_trace(lambda v: a @ v, samples=30, seed=seed, dim=n, dtype=F64)
        plus = hessian_trace(
            lambda v: a @ v, samples=30, method="hutch++", seed=seed, dim=n, dtype=F64
        )
        assert plus.num_hvps == 30 and plus.samples == 10
        assert abs(plain.mean - exact) <= 3 * plain.stderr
        assert abs(plus.mean - exact) <= 3 * plus.stderr
        assert plus.stderr < 0.01 * plain.stderr
        assert abs(plus.mean - exact) < 0.01 * plain.stderr


def _spanned_matrix() -> torch.Tensor:
    """A full-rank float32 matrix of dim 8, which a sketch of 10 vectors would span."""
    a = _sym_matrix(torch.linspace(-2, 5, 8, dtype=F64), seed=3).float()
    return (a + a.T) / 2  # exactly symmetric in float32


def _low_rank_matrix() -> torch.Tensor:
    """Rank 3 < sketch 10 in dim 60, with small-integer entries: exact in float32, so the only
    error left is the rounding of the products and of the sketch's basis."""
    b = torch.randint(0, 2, (60, 3), generator=_gen(4)).float().mul_(2).sub_(1)
    return b @ b.T


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize(
    ("matrix", "num_hvps", "samples"),
    [(_spanned_matrix, 8, 0), (_low_rank_matrix, 30, 10)],
    ids=["sketch-spans-the-space", "rank-below-the-sketch"],
)
def test_hutch_plus_plus_stderr_covers_rounding_of_the_exact_part(
    matrix: Callable[[], torch.Tensor], num_hvps: int, samples: int, dtype: torch.dtype, seed: int
) -> None:
    # The sketch captures the whole trace: all the error left is rounding. When it would span
    # the space the trace is computed exactly with dim products, else the budget is spent.
    a = matrix().to(dtype)
    exact = float(a.double().trace())
    calls, matvec = _counted(a)
    result = hessian_trace(
        matvec, samples=30, method="hutch++", seed=seed, dim=a.shape[0], dtype=dtype
    )
    assert abs(result.mean - exact) <= 3 * result.stderr
    assert 0 < result.stderr < 1e-5 * abs(exact)
    assert result.num_hvps == len(calls) == num_hvps
    assert result.samples == samples and result.exact == (samples == 0)


# --- spectral density -------------------------------------------------------------------------


def test_slq_weights_and_smoothed_density(mlp_problem: SimpleNamespace) -> None:
    density = hessian_spectral_density(_operator(mlp_problem), steps=15, n_vectors=3)
    assert isinstance(density, SpectralDensity)
    assert density.nodes.shape == density.weights.shape == (3, 15)
    assert density.num_hvps == 45
    torch.testing.assert_close(density.weights.sum(dim=1), torch.ones(3, dtype=F64))
    spectrum = mlp_problem.spectrum
    assert float(density.nodes.max()) == pytest.approx(float(spectrum[-1]), rel=1e-6)
    grid = torch.linspace(float(spectrum[0]) - 1, float(spectrum[-1]) + 1, 4001, dtype=F64)
    values = density.on_grid(grid, sigma=0.02)
    assert values.shape == grid.shape and bool((values >= 0).all())
    assert float(torch.trapezoid(values, grid)) == pytest.approx(1.0, abs=1e-6)


def test_slq_moments_are_exact_gauss_quadrature() -> None:
    # For a diagonal H and a Rademacher start z/sqrt(n), q·H^p q = tr(H^p)/n for every z, and
    # steps Lanczos steps integrate degree <= 2 steps - 1 exactly: no randomness left.
    diagonal = torch.linspace(-1.0, 2.0, 40, dtype=F64) ** 3
    density = hessian_spectral_density(
        lambda v: diagonal * v, steps=3, n_vectors=2, dim=40, dtype=F64
    )
    for p in range(6):
        expected = float((diagonal**p).mean())
        assert density.moment(p) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_slq_moments_estimate_normalised_traces(mlp_problem: SimpleNamespace) -> None:
    h = mlp_problem.hessian
    n_vectors = 400
    density = hessian_spectral_density(
        lambda v: h @ v, steps=10, n_vectors=n_vectors, dim=368, dtype=F64
    )
    for p, exact in ((1, h.trace() / 368), (2, (h @ h).trace() / 368)):
        per_vector = (density.weights * density.nodes**p).sum(dim=1)
        stderr = float(per_vector.std()) / math.sqrt(n_vectors)
        assert density.moment(p) == pytest.approx(float(per_vector.mean()), rel=1e-12)
        assert abs(density.moment(p) - float(exact)) <= 3 * stderr
        assert density.moment(p) == pytest.approx(float(exact), rel=0.1)


def test_slq_closes_early_on_a_small_operator() -> None:
    spectrum = torch.tensor([3.0, 1.0, -2.0, 0.5], dtype=F64)
    a = _sym_matrix(spectrum, seed=3)
    density = hessian_spectral_density(lambda v: a @ v, steps=10, n_vectors=2, dim=4, dtype=F64)
    assert density.num_hvps <= 2 * 5
    torch.testing.assert_close(density.weights.sum(dim=1), torch.ones(2, dtype=F64))
    for nodes, weights in zip(density.nodes, density.weights, strict=True):
        found = nodes[weights > 1e-12].sort().values
        torch.testing.assert_close(found, spectrum.sort().values)


# --- argument checks --------------------------------------------------------------------------


def _matvec(v: torch.Tensor) -> torch.Tensor:
    return 2.0 * v


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: hessian_eigenvalues(_matvec, k=0, dim=5), r"k must be an integer >= 1; got 0"),
        (lambda: hessian_eigenvalues(_matvec, k=6, dim=5), r"k must be <= 5 .* got 6"),
        (lambda: hessian_eigenvalues(_matvec, k=3, which="both", dim=5), r"k must be <= 2"),
        (lambda: hessian_eigenvalues(_matvec, tol=0, dim=5), r"tol must be a finite number > 0"),
        (lambda: hessian_eigenvalues(_matvec, tol=-1.0, dim=5), r"tol .* got -1.0"),
        (lambda: hessian_eigenvalues(_matvec, which="top", dim=5), r"which='top' is not supp"),
        (
            lambda: hessian_eigenvalues(_matvec, reorthogonalize="none", dim=5),
            r"reorthogonalize='none' is not supported",
        ),
        (lambda: hessian_eigenvalues(_matvec, k=2, max_iter=1, dim=5), r"max_iter must be .*>= 2"),
        (lambda: hessian_eigenvalues(_matvec, v0=torch.zeros(5), dim=5), r"v0 must be finite"),
        (lambda: hessian_eigenvalues(_matvec, v0=torch.ones(4), dim=5), r"v0 must be a \(5,\)"),
        (lambda: hessian_eigenvalues(_matvec), r"dim must be given"),
        (lambda: hessian_eigenvalues(_matvec, dim=0), r"dim must be an integer >= 1; got 0"),
        (lambda: hessian_eigenvalues(_matvec, dim=5, seed=1.5), r"seed must be an integer"),
        (lambda: hessian_eigenvalues("H", dim=5), r"operator must be a HessianOperator"),
        (lambda: hessian_eigenvalues(lambda v: v[:2], dim=5), r"operator must return .*\(5,\)"),
        (lambda: hessian_trace(_matvec, samples=1, dim=5), r"samples must be an integer >= 2"),
        (
            lambda: hessian_trace(_matvec, samples=3, method="hutch++", dim=5),
            r"samples must be an integer >= 4 with method='hutch\+\+'; got 3",
        ),
        (lambda: hessian_trace(_matvec, method="exact", dim=5), r"method='exact' is not supp"),
        (lambda: hessian_spectral_density(_matvec, steps=0, dim=5), r"steps must be .*>= 1"),
        (lambda: hessian_spectral_density(_matvec, n_vectors=0, dim=5), r"n_vectors must be"),
    ],
)
def test_bad_arguments_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_density_arguments_raise() -> None:
    density = hessian_spectral_density(_matvec, steps=2, n_vectors=1, dim=5)
    with pytest.raises(ValueError, match=r"sigma must be a finite number > 0; got 0"):
        density.on_grid(torch.zeros(3), sigma=0)
    with pytest.raises(ValueError, match=r"p must be an integer >= 0; got -1"):
        density.moment(-1)


def test_non_finite_products_raise() -> None:
    with pytest.raises(FloatingPointError, match="non-finite"):
        hessian_eigenvalues(lambda v: v * float("nan"), dim=4)
