"""StableMax and its loss against hand-computed references (arXiv 2501.04697, Def. 4)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from lightning_dyn.functional.stablemax import log_stablemax, stablemax, stablemax_cross_entropy

# Rows include exactly 0 and 1 (the two points where a careless implementation breaks) and
# large magnitudes where s(x) spans twelve orders of magnitude.
ROWS = [
    [-3.0, -0.5, 0.0, 0.25, 1.0, 7.0],
    [1e6, -1e6, 2.0, -2.0, 0.0, 1.0],
    [1e4, -1e4, 1.0, 0.0, -1.0, 1e4],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
]


def _s(x: float) -> float:
    """Def. 4 of arXiv 2501.04697, in Python floats."""
    return x + 1.0 if x >= 0 else 1.0 / (1.0 - x)


def _ds(x: float) -> float:
    return 1.0 if x >= 0 else 1.0 / (1.0 - x) ** 2


def _loss(row: list[float], y: int) -> float:
    return math.log(math.fsum(_s(v) for v in row)) - math.log(_s(row[y]))


def _signed_log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def test_stablemax_matches_closed_form() -> None:
    x = torch.tensor(ROWS, dtype=torch.float64)
    probs, log_probs = stablemax(x), log_stablemax(x)
    for row, p, logp in zip(ROWS, probs, log_probs, strict=True):
        total = math.fsum(_s(v) for v in row)
        expected = [_s(v) / total for v in row]
        assert p.tolist() == pytest.approx(expected, rel=1e-12)
        assert logp.tolist() == pytest.approx([math.log(e) for e in expected], rel=1e-12)


def test_dim_argument() -> None:
    x = torch.tensor(ROWS, dtype=torch.float64)
    torch.testing.assert_close(stablemax(x.T, dim=0), stablemax(x).T)
    torch.testing.assert_close(log_stablemax(x.T, dim=0), log_stablemax(x).T)


def test_loss_matches_hand_computed() -> None:
    targets = [5, 1, 2, 3]
    logits = torch.tensor(ROWS, dtype=torch.float64)
    per_sample = [_loss(row, y) for row, y in zip(ROWS, targets, strict=True)]
    y = torch.tensor(targets)
    got = stablemax_cross_entropy(logits, y, reduction="none")
    assert got.tolist() == pytest.approx(per_sample, rel=1e-12)
    assert stablemax_cross_entropy(logits, y).item() == pytest.approx(
        math.fsum(per_sample) / len(ROWS), rel=1e-12
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_equals_softmax_cross_entropy_of_signed_log1p(reduction: str, ignore_index: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 10
    y = torch.randint(0, 5, (8,), generator=gen)
    y[[1, 4]] = ignore_index
    got = stablemax_cross_entropy(logits, y, reduction=reduction, ignore_index=ignore_index)
    expected = F.cross_entropy(
        _signed_log1p(logits), y, reduction=reduction, ignore_index=ignore_index
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if reduction == "none":
        assert got.shape == (8,)
        assert (got[y == ignore_index] == 0).all()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_spatial_and_unbatched_shapes(reduction: str) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 5, 2, generator=gen, dtype=torch.float64) * 5  # (N, C, d1, d2)
    y = torch.randint(0, 4, (3, 5, 2), generator=gen)
    y[0, 0, 0] = -100
    got = stablemax_cross_entropy(logits, y, reduction=reduction)
    torch.testing.assert_close(got, F.cross_entropy(_signed_log1p(logits), y, reduction=reduction))
    if reduction == "none":
        assert got.shape == (3, 5, 2)
    single = stablemax_cross_entropy(logits[0, :, 0, 1], y[0, 0, 1], reduction=reduction)
    assert single.item() == pytest.approx(_loss(logits[0, :, 0, 1].tolist(), int(y[0, 0, 1])))


def test_returns_logits_dtype_and_gradient_reaches_logits() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    loss = stablemax_cross_entropy(logits, torch.tensor([2]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.float32
    assert logits.grad.abs().sum() > 0


def test_gradient_matches_hand_derivative_at_kinks() -> None:
    rows, targets = [ROWS[0], [1.0, 0.0, -1.0, 1.0, 0.0, 3.0]], [2, 1]
    logits = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    stablemax_cross_entropy(logits, torch.tensor(targets), reduction="sum").backward()
    for row, y, grad in zip(rows, targets, logits.grad, strict=True):
        total = math.fsum(_s(v) for v in row)
        expected = [_ds(v) / total for v in row]
        expected[y] -= _ds(row[y]) / _s(row[y])
        assert grad.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_gradcheck_and_central_differences_at_zero() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(4, 6, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 6, (4,), generator=gen)
    assert torch.autograd.gradcheck(lambda z: stablemax_cross_entropy(z, y, "none"), (logits,))
    assert torch.autograd.gradcheck(lambda z: stablemax(z, dim=0), (logits,))

    z0 = torch.tensor([[0.0, 0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    stablemax_cross_entropy(z0, torch.tensor([1])).backward()
    h = 1e-6
    plus, minus = z0.detach().clone(), z0.detach().clone()
    plus[0, 0] += h
    minus[0, 0] -= h
    fd = (
        stablemax_cross_entropy(plus, torch.tensor([1]))
        - stablemax_cross_entropy(minus, torch.tensor([1]))
    ) / (2 * h)
    assert z0.grad[0, 0].item() == pytest.approx(fd.item(), rel=1e-5)
    assert z0.grad[0, 0].item() != 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_finite_at_one_zero_and_huge_float32_logits(dtype: torch.dtype) -> None:
    logits = torch.tensor(
        [[1.0, 0.0, -1.0, 1e30, -1e30], [1.0, 1.0, 0.0, 0.0, -3.0]], requires_grad=True
    )
    y = torch.tensor([3, 0])
    loss = stablemax_cross_entropy(logits, y, reduction="none", dtype=dtype)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    row = logits[1].tolist()
    assert loss[1].item() == pytest.approx(_loss(row, 0), rel=1e-6)
    assert loss[0].item() == pytest.approx(_loss(logits[0].tolist(), 3), abs=1e-6)


def test_naive_where_form_gives_nan_gradient_at_one_in_float32() -> None:
    """The official form's trap is real: both branches are differentiated, 0 * inf = NaN."""
    x = torch.tensor([1.0, 0.5, -2.0], requires_grad=True)
    naive = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    naive.sum().backward()
    assert torch.isnan(x.grad[0])
    assert x.grad[1:].tolist() == pytest.approx([1.0, 1.0 / 9.0])

    x64 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    torch.where(x64 < 0, 1 / (1 - x64 + 1e-30), x64 + 1).sum().backward()
    assert torch.isfinite(x64.grad).all()  # why the official float64 cast hid it

    ours = x.detach().clone().requires_grad_()
    stablemax(ours, dim=0)[0].backward()
    assert torch.isfinite(ours.grad).all()


def test_float64_compute_keeps_the_gradient_that_float32_rounds_away() -> None:
    logits = torch.zeros(1, 113)
    logits[0, 0] = 1e10  # log1p(1e10) = 23: past the float32 collapse gap, far from float64's
    grads = {}
    for dtype in (torch.float32, torch.float64):
        z = logits.clone().requires_grad_()
        stablemax_cross_entropy(z, torch.tensor([0]), dtype=dtype).backward()
        grads[dtype] = z.grad[0, 0].item()
    assert grads[torch.float32] == 0.0
    assert grads[torch.float64] < 0.0


def test_non_finite_logits_propagate_like_cross_entropy() -> None:
    logits = torch.tensor([[math.inf, 0.0], [-math.inf, 0.0]])
    got = stablemax_cross_entropy(logits, torch.tensor([0, 1]), reduction="none")
    expected = F.cross_entropy(logits, torch.tensor([0, 1]), reduction="none")
    assert torch.isnan(got[0]) and torch.isnan(expected[0])
    assert got[1].item() == 0.0 == expected[1].item()


def test_bad_arguments_raise() -> None:
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=re.escape("reduction='avg'")) as info:
        stablemax_cross_entropy(logits, y, reduction="avg")  # type: ignore[arg-type]
    assert "'mean'" in str(info.value)
    with pytest.raises(TypeError, match="integer dtype"):
        stablemax_cross_entropy(logits, y.float())
    with pytest.raises(TypeError, match="floating dtype"):
        stablemax_cross_entropy(logits, y, dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_non_floating_logits_raise_like_cross_entropy(dtype: torch.dtype) -> None:
    # Cast to float64 inside, integer logits would give a loss truncated back to an integer.
    logits, y = torch.tensor([[3, 1, 0], [0, 2, 1]]).to(dtype), torch.tensor([0, 1])
    with pytest.raises(NotImplementedError):
        F.cross_entropy(logits, y)
    with pytest.raises(TypeError, match=re.escape(f"logits.dtype={dtype}")):
        stablemax_cross_entropy(logits, y)
