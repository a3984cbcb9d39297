"""⊥Grad projection and NLM cosines against dense float64 references (arXiv 2501.04697)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dyn.functional.perp_grad import (
    SMALL_TENSOR_NUMEL,
    nlm_cosine,
    nlm_cosines,
    perp_grad_,
)

# A big tensor (handled alone), small ones (flattened together) and a 0-dim one.
SHAPES = [(3, 4), (5,), (2, 3, 4), (300, 300), ()]


def _make(
    shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32, seed: int = 0
) -> list[torch.nn.Parameter]:
    """Parameters whose gradients lean against the weights, so the projection matters."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        p = torch.nn.Parameter(w.to(dtype))
        p.grad = (torch.randn(shape, generator=gen, dtype=torch.float64) - 0.7 * w).to(dtype)
        params.append(p)
    return params


def _reference_per_tensor(w: Tensor, g: Tensor, rescale: bool) -> Tensor:
    """The official OrthoGrad formula, one tensor at a time, in float64 and without eps.

    A one-element tensor has no direction orthogonal to its weight: its exact projection is 0.
    """
    w64, g64 = w.detach().double().flatten(), g.double().flatten()
    if w64.numel() == 1:
        return torch.zeros_like(w64).view(w.shape)
    g_perp = g64 - (w64 @ g64) / (w64 @ w64) * w64
    if rescale:
        g_perp = g_perp * g64.norm() / g_perp.norm()
    return g_perp.view(w.shape)


def _reference_global(params: list[Tensor], rescale: bool) -> list[Tensor]:
    """Eq. 12 of arXiv 2501.04697 on the concatenated parameter vector, in float64."""
    theta = torch.cat([p.detach().double().flatten() for p in params])
    g = torch.cat([p.grad.double().flatten() for p in params])
    g_perp = g - (theta @ g) / (theta @ theta) * theta
    if rescale:
        g_perp = g_perp * g.norm() / g_perp.norm()
    return [
        c.view(p.shape)
        for c, p in zip(g_perp.split([p.numel() for p in params]), params, strict=True)
    ]


def test_shapes_cover_both_code_paths() -> None:
    sizes = [torch.Size(s).numel() for s in SHAPES]
    assert max(sizes) > SMALL_TENSOR_NUMEL > min(sizes)


@pytest.mark.parametrize("rescale", [True, False])
def test_per_tensor_is_orthogonal_and_matches_reference(rescale: bool) -> None:
    params = _make(SHAPES)
    before = [p.grad.clone() for p in params]
    grad_objects = [p.grad for p in params]
    perp_grad_(params, rescale=rescale)
    for p, g0, obj in zip(params, before, grad_objects, strict=True):
        assert p.grad is obj  # in place: optimizers and hooks keep their references
        w, g = p.detach().double().flatten(), p.grad.double().flatten()
        assert abs(w @ g) <= 1e-6 * w.norm() * g.norm()
        expected = _reference_per_tensor(p, g0, rescale)
        torch.testing.assert_close(p.grad.double(), expected, rtol=1e-5, atol=1e-6)
        if p.numel() == 1:
            assert g.item() == 0.0
        elif rescale:
            assert g.norm().item() == pytest.approx(g0.double().norm().item(), rel=1e-5)
        else:
            assert g.norm() < g0.double().norm()


@pytest.mark.parametrize("rescale", [True, False])
def test_global_matches_dense_reference_and_differs_from_per_tensor(rescale: bool) -> None:
    params = _make(SHAPES)
    expected = _reference_global(params, rescale)
    per_tensor = _make(SHAPES)
    perp_grad_(params, mode="global", rescale=rescale)
    perp_grad_(per_tensor, mode="per_tensor", rescale=rescale)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad.double(), e, rtol=1e-5, atol=1e-6)
    theta = torch.cat([p.detach().double().flatten() for p in params])
    g = torch.cat([p.grad.double().flatten() for p in params])
    assert abs(theta @ g) <= 1e-6 * theta.norm() * g.norm()
    # Globally orthogonal is not orthogonal per tensor, so the two modes disagree.
    w0, g0 = params[0].detach().double().flatten(), params[0].grad.double().flatten()
    assert abs(w0 @ g0) > 1e-3 * w0.norm() * g0.norm()
    assert not torch.allclose(params[0].grad, per_tensor[0].grad, rtol=1e-3)


def test_single_tensor_global_equals_per_tensor() -> None:
    a, b = _make([(4, 5)]), _make([(4, 5)])
    perp_grad_(a, mode="global")
    perp_grad_(b, mode="per_tensor")
    torch.testing.assert_close(a[0].grad, b[0].grad)


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_zero_weight_keeps_gradient_and_zero_gradient_stays_zero(
    mode: str, dtype: torch.dtype
) -> None:
    zero_w = torch.nn.Parameter(torch.zeros(3, 4, dtype=dtype))
    zero_w.grad = torch.randn(3, 4).to(dtype)
    zero_g = torch.nn.Parameter(torch.randn(6).to(dtype))
    zero_g.grad = torch.zeros(6, dtype=dtype)
    kept = zero_w.grad.clone()
    perp_grad_([zero_w] if mode == "global" else [zero_w, zero_g], mode=mode)
    assert torch.equal(zero_w.grad, kept)
    perp_grad_([zero_g], mode=mode)
    assert torch.equal(zero_g.grad, torch.zeros(6, dtype=dtype))


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
@pytest.mark.parametrize("rescale", [True, False])
def test_one_element_tensor_gradient_is_all_radial(mode: str, rescale: bool) -> None:
    """The official code returns rounding noise rescaled to ±||g|| here; the exact answer is 0."""
    scalar = torch.nn.Parameter(torch.tensor(0.1131))
    scalar.grad = torch.tensor(0.4302)
    perp_grad_([scalar], mode=mode, rescale=rescale)
    assert scalar.grad.item() == 0.0
    zero = torch.nn.Parameter(torch.zeros(1))
    zero.grad = torch.tensor([0.25])
    perp_grad_([zero], mode=mode, rescale=rescale)
    assert zero.grad.item() == 0.25


def test_skips_parameters_without_grad_and_accepts_a_generator() -> None:
    params = _make([(3, 3), (4,)])
    frozen = torch.nn.Parameter(torch.randn(5))
    perp_grad_(p for p in [params[0], frozen, params[1]])
    assert frozen.grad is None
    for p in params:
        assert abs((p.detach() * p.grad).sum()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["per_tensor", "global"])
def test_low_precision_grads_match_float64_reference(dtype: torch.dtype, mode: str) -> None:
    params = _make([(16, 8), (8,), (200, 400)], dtype=dtype)
    if mode == "global":
        expected = _reference_global(params, rescale=True)
    else:
        expected = [_reference_per_tensor(p, p.grad, rescale=True) for p in params]
    perp_grad_(params, mode=mode)
    for p, e in zip(params, expected, strict=True):
        assert p.grad.dtype == dtype
        # As good as the float64 answer rounded once to the gradient dtype: the work is wider.
        best = (e.to(dtype).double() - e).norm()
        assert (p.grad.double() - e).norm() <= 1.01 * best


def test_many_tensors_match_a_per_tensor_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    shapes = [
        tuple(torch.randint(1, 6, (int(i % 3) + 1,), generator=gen).tolist()) for i in range(200)
    ]
    params = _make(shapes, seed=4)
    doubles = _make(shapes[:20], dtype=torch.float64, seed=5)  # a second (device, dtype) group
    expected = [_reference_per_tensor(p, p.grad, rescale=True) for p in params + doubles]
    mixed = [t for pair in zip(params[:20], doubles, strict=True) for t in pair] + params[20:]
    perp_grad_(mixed)
    for p, e in zip(params, expected[:200], strict=True):
        torch.testing.assert_close(p.grad.double(), e, rtol=1e-5, atol=1e-6)
    for p, e in zip(doubles, expected[200:], strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-12)


def test_nlm_cosine_matches_cosine_similarity() -> None:
    params = _make(SHAPES)
    for p in params:
        expected = F.cosine_similarity(
            p.detach().double().flatten(), -p.grad.double().flatten(), dim=0, eps=1e-30
        )
        got = nlm_cosine(p, p.grad)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        assert got.item() > 0.1  # the gradients were built to lean towards the weights


def test_nlm_cosines_keep_input_order_across_groups() -> None:
    params = _make(SHAPES) + _make([(3,), (2, 2)], dtype=torch.bfloat16, seed=1)
    params.insert(2, _make([(7,)], dtype=torch.float64, seed=2)[0])
    cosines = nlm_cosines(params)
    assert cosines.shape == (len(params),)
    expected = [nlm_cosine(p, p.grad).item() for p in params]
    assert cosines.tolist() == pytest.approx(expected, rel=1e-6)
    assert len(set(expected)) == len(expected)  # distinct values, so order is really tested


def test_nlm_cosine_zero_weight_or_gradient_is_zero_not_nan() -> None:
    assert nlm_cosine(torch.zeros(4), torch.randn(4)).item() == 0.0
    assert nlm_cosine(torch.randn(4), torch.zeros(4)).item() == 0.0
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.zeros(4)
    assert nlm_cosines([p]).tolist() == [0.0]


def test_bad_arguments_raise() -> None:
    params = _make([(3,)])
    with pytest.raises(ValueError, match=re.escape("mode='paper'")) as info:
        perp_grad_(params, mode="paper")  # type: ignore[arg-type]
    assert "'per_tensor'" in str(info.value) and "'global'" in str(info.value)
    sparse = torch.nn.Parameter(torch.randn(4))
    sparse.grad = torch.randn(4).to_sparse()
    with pytest.raises(ValueError, match="dense gradients"):
        perp_grad_([sparse])
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        nlm_cosines([params[0], torch.nn.Parameter(torch.randn(2))])


def test_large_tensor_with_a_non_contiguous_grad_matches_the_reference() -> None:
    """The in-place fast path needs .grad itself as the flat vector; a transposed grad cannot."""
    gen = torch.Generator().manual_seed(7)
    p = torch.nn.Parameter(torch.randn(80, 90, generator=gen))
    p.grad = torch.randn(90, 80, generator=gen).t()  # (80, 90), not contiguous
    expected = _reference_per_tensor(p, p.grad.clone(), rescale=True)
    perp_grad_([p])
    torch.testing.assert_close(p.grad.double(), expected, rtol=1e-5, atol=1e-6)


def test_large_tensor_nearly_parallel_gradient_keeps_the_norm() -> None:
    """g within ~0.1° of w: the projected norm is measured, not derived by cancellation."""
    gen = torch.Generator().manual_seed(8)
    p = torch.nn.Parameter(torch.randn(100, 100, generator=gen))
    p.grad = 3.0 * p.detach() + 2e-3 * torch.randn(100, 100, generator=gen)
    g0 = p.grad.double().clone()
    perp_grad_([p])
    w, g = p.detach().double().flatten(), p.grad.double().flatten()
    assert abs(w @ g) < 1e-4 * w.norm() * g.norm()
    assert g.norm().item() == pytest.approx(g0.norm().item(), rel=1e-4)
    expected = _reference_per_tensor(p, g0.float(), rescale=True)
    cos = torch.dot(g, expected.flatten().double()) / (g.norm() * expected.norm())
    assert cos > 0.99  # the direction survives float32 rounding of a 1e-3 residual
