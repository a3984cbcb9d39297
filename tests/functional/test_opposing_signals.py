"""Opposing-signals measurements against independent references (arXiv 2311.04163)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_dyn.functional import (
    antiphase_correlation,
    direction_alignment,
    group_gradient_cosine,
    group_losses,
    mean_loss_gradient,
    per_example_loss,
    sketch_gradient,
    top_loss_changes,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


# --- per_example_loss -------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 1, 4, 7, 100])
def test_per_example_loss_matches_loop(batch_size: int | None) -> None:
    model = _model()
    x = torch.randn(17, 5, generator=_gen())
    y = torch.randint(0, 3, (17,), generator=_gen(1))
    got = per_example_loss(model, x, y, batch_size=batch_size)
    with torch.no_grad():
        ref = torch.stack([F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) for i in range(17)])
    assert got.shape == (17,)
    assert not got.requires_grad
    torch.testing.assert_close(got, ref)


def test_per_example_loss_rejects_bad_batch_size() -> None:
    with pytest.raises(ValueError, match=r"batch_size.*>= 1.*0"):
        per_example_loss(
            _model(), torch.randn(3, 5), torch.zeros(3, dtype=torch.long), batch_size=0
        )


# --- top_loss_changes -------------------------------------------------------------------------


def test_top_loss_changes_matches_python_sort() -> None:
    before = torch.rand(50, generator=_gen())
    after = torch.rand(50, generator=_gen(1))
    delta = (after - before).tolist()
    order = sorted(range(50), key=lambda i: delta[i])
    rising, falling = top_loss_changes(before, after, k=6)
    assert rising.tolist() == order[::-1][:6]
    assert falling.tolist() == order[:6]


@pytest.mark.parametrize("k", [0, 11, -1, 2.0, True])
def test_top_loss_changes_rejects_bad_k(k: object) -> None:
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 10\].*" + str(k)):
        top_loss_changes(torch.zeros(10), torch.ones(10), k=k)  # type: ignore[arg-type]


def test_top_loss_changes_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"before and after.*\(10,\).*\(9,\)"):
        top_loss_changes(torch.zeros(10), torch.ones(9), k=1)
    with pytest.raises(ValueError, match=r"before must be a 1-D tensor"):
        top_loss_changes(torch.zeros(2, 5), torch.ones(2, 5), k=1)


# --- group_losses -----------------------------------------------------------------------------


def test_group_losses_matches_loop_and_empty_group_is_nan() -> None:
    losses = torch.rand(40, generator=_gen())
    groups = torch.randint(0, 4, (40,), generator=_gen(1))
    groups[groups == 2] = 0  # group 2 empty
    got = group_losses(losses, groups, num_groups=6)
    assert got.shape == (6,)
    for g in range(6):
        members = [losses[i].item() for i in range(40) if groups[i].item() == g]
        if members:
            assert got[g].item() == pytest.approx(sum(members) / len(members), rel=1e-6)
        else:
            assert math.isnan(got[g].item())
    torch.testing.assert_close(group_losses(losses, groups), got[:4], equal_nan=True)


def test_group_losses_rejects_bad_ids() -> None:
    with pytest.raises(ValueError, match=r"groups must hold ids in \[0, 2\).*\[0, 3\]"):
        group_losses(torch.zeros(4), torch.tensor([0, 1, 3, 0]), num_groups=2)
    with pytest.raises(ValueError, match=r"groups must be an integer tensor"):
        group_losses(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"num_groups.*>= 1.*0"):
        group_losses(torch.zeros(2), torch.zeros(2, dtype=torch.long), num_groups=0)


# --- antiphase_correlation --------------------------------------------------------------------


def test_antiphase_correlation_matches_numpy() -> None:
    a = torch.rand(30, generator=_gen(), dtype=torch.float64)
    b = torch.rand(30, generator=_gen(1), dtype=torch.float64)
    ref = np.corrcoef(np.diff(a.numpy()), np.diff(b.numpy()))[0, 1]
    got = antiphase_correlation(a, b)
    assert got.ndim == 0
    assert got.item() == pytest.approx(ref, abs=1e-12)


def test_antiphase_correlation_sign() -> None:
    t = torch.arange(40, dtype=torch.float32)
    trend = 2.0 - 0.01 * t  # both losses drift down; only the oscillation should count
    a = trend + 0.3 * torch.sin(0.9 * t)
    assert antiphase_correlation(a, trend - 0.3 * torch.sin(0.9 * t)).item() < -0.99
    assert antiphase_correlation(a, trend + 0.5 * torch.sin(0.9 * t)).item() > 0.99


def test_antiphase_correlation_constant_is_zero_and_short_rejected() -> None:
    got = antiphase_correlation(torch.ones(5), torch.rand(5, generator=_gen()))
    assert got.item() == 0.0
    # A linear series has constant changes too.
    assert antiphase_correlation(torch.arange(5.0), torch.rand(5, generator=_gen())).item() == 0.0
    with pytest.raises(ValueError, match=r"at least 3.*length 2"):
        antiphase_correlation(torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"a and b must have the same shape"):
        antiphase_correlation(torch.ones(4), torch.ones(5))


# --- gradients --------------------------------------------------------------------------------


def test_mean_loss_gradient_and_cosine_match_autograd_reference() -> None:
    model = _model()
    xa, xb = torch.randn(8, 5, generator=_gen()), torch.randn(8, 5, generator=_gen(1))
    ya = torch.randint(0, 3, (8,), generator=_gen(2))
    yb = torch.randint(0, 3, (8,), generator=_gen(3))
    ga = mean_loss_gradient(model, xa, ya)
    gb = mean_loss_gradient(model, xb, yb)
    assert all(p.grad is None for p in model.parameters())

    params = list(model.parameters())
    ref_a = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(model(xa), ya), params)]
    )
    ref_b = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(model(xb), yb), params)]
    )
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in ga]), ref_a)
    ref_cos = F.cosine_similarity(ref_a.double(), ref_b.double(), dim=0)
    torch.testing.assert_close(group_gradient_cosine(ga, gb), ref_cos)
    # A flat tensor is split like the per-parameter sequence.
    torch.testing.assert_close(group_gradient_cosine(ga, ref_b), ref_cos)


def test_mean_loss_gradient_unused_param_is_zero() -> None:
    model = torch.nn.Linear(3, 2)
    extra = torch.nn.Parameter(torch.ones(4))
    grads = mean_loss_gradient(
        model, torch.randn(5, 3), torch.zeros(5, dtype=torch.long), params=[model.weight, extra]
    )
    assert torch.equal(grads[1], torch.zeros(4))


def test_group_gradient_cosine_negative_for_planted_opposing_groups() -> None:
    # Linear classifier; both groups share a large feature x0 = +c but have opposite labels, so
    # their gradients pull the x0 weights in opposite directions. A control pair does not.
    gen = _gen()
    c, n = 5.0, 32
    model = torch.nn.Linear(6, 2)
    torch.nn.init.normal_(model.weight, std=0.1, generator=gen)
    torch.nn.init.zeros_(model.bias)
    noise = lambda: 0.3 * torch.randn(n, 6, generator=gen)  # noqa: E731
    xa, xb = noise(), noise()
    xa[:, 0] += c
    xb[:, 0] += c
    ya, yb = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    cos = group_gradient_cosine(
        mean_loss_gradient(model, xa, ya), mean_loss_gradient(model, xb, yb)
    )
    assert cos.item() < -0.9
    control = group_gradient_cosine(
        mean_loss_gradient(model, xa, ya), mean_loss_gradient(model, noise(), ya)
    )
    assert control.item() > cos.item() + 0.5


def test_cosine_of_zero_is_zero_and_size_mismatch_rejected() -> None:
    assert group_gradient_cosine([torch.zeros(3)], [torch.ones(3)]).item() == 0.0
    with pytest.raises(ValueError, match=r"grad_a: 3, grad_b: 4"):
        group_gradient_cosine([torch.zeros(3)], [torch.ones(4)])
    with pytest.raises(ValueError, match=r"grad_b must have tensors of the same sizes"):
        group_gradient_cosine([torch.zeros(3), torch.zeros(2)], [torch.ones(2), torch.ones(3)])


def test_direction_alignment_matches_reference() -> None:
    ga = [torch.randn(4, 3, generator=_gen()), torch.randn(7, generator=_gen(1))]
    gb = [torch.randn(4, 3, generator=_gen(2)), torch.randn(7, generator=_gen(3))]
    v = torch.randn(19, generator=_gen(4))
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs]).double()  # noqa: E731
    ref = F.cosine_similarity(flat(ga) - flat(gb), v.double(), dim=0)
    torch.testing.assert_close(direction_alignment(ga, gb, v), ref)
    # Along g_A - g_B itself the alignment is 1.
    d = [a - b for a, b in zip(ga, gb, strict=True)]
    assert direction_alignment(ga, gb, d).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"direction: 18"):
        direction_alignment(ga, gb, torch.ones(18))


# --- sketch_gradient --------------------------------------------------------------------------


def test_sketch_cosine_approximates_exact_and_is_deterministic() -> None:
    n, dim = 50_000, 2048
    a = torch.randn(n, generator=_gen())
    b = 0.6 * a + torch.randn(n, generator=_gen(1))  # exact cosine ~0.51
    exact = group_gradient_cosine(a, b).item()
    sa = sketch_gradient(a, dim=dim, seed=7)
    sb = sketch_gradient(b, dim=dim, seed=7)
    assert sa.shape == (dim,)
    assert abs(group_gradient_cosine(sa, sb).item() - exact) < 0.1
    # The norm is preserved in expectation (E||Sg||² = ||g||²).
    assert sa.norm().item() == pytest.approx(a.norm().item(), rel=0.1)
    # Same seed, same projection, whatever the split into tensors; another seed differs.
    small = a[:3000]
    s1 = sketch_gradient(small, dim=64, seed=3, block_numel=64 * 500)
    s2 = sketch_gradient(
        [small[:1234].reshape(2, 617), small[1234:]], dim=64, seed=3, block_numel=64 * 500
    )
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, sketch_gradient(small, dim=64, seed=4, block_numel=64 * 500))


def test_sketch_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match=r"dim must be an integer >= 1; got 0"):
        sketch_gradient(torch.ones(5), dim=0, seed=0)
    with pytest.raises(ValueError, match=r"seed must be an integer; got 1.5"):
        sketch_gradient(torch.ones(5), dim=4, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"grads must be a tensor or a non-empty sequence"):
        sketch_gradient([], dim=4, seed=0)
