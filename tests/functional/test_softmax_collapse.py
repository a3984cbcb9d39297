"""Softmax Collapse tests on logits built to collapse in one dtype and not another (Def. 3)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from lightning_dyn.functional.softmax_collapse import (
    softmax_collapse_fraction,
    softmax_collapse_mask,
    zero_loss_fraction,
)

CLASSES = 113
GAPS = [0.0, 5.0, 15.0, 30.0, 30.0, 45.0, 60.0]  # top logit minus the 112 others (all equal)
TOP = [3, 0, 112, 7, 50, 1, 99]  # where the top logit sits, so no fixed column is special
MANTISSA_BITS = {torch.float16: 10, torch.float32: 23, torch.float64: 52}


def _collapses(gap: float, dtype: torch.dtype) -> bool:
    """Decide collapse for the normaliser 1 + 112 exp(-gap) whatever the summation order.

    Below half an ulp of 1 in total, the small terms are absorbed in any order; if each one alone
    exceeds half an ulp, no order can absorb them. The gaps are chosen so one of the two holds.
    """
    half_ulp = 2.0 ** -(MANTISSA_BITS[dtype] + 1)
    if (CLASSES - 1) * math.exp(-gap) < half_ulp:
        return True
    assert math.exp(-gap) > half_ulp, f"gap {gap} is too close to the {dtype} threshold"
    return False


def _logits(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    z = torch.zeros(len(GAPS), CLASSES, dtype=dtype)
    z[torch.arange(len(GAPS)), TOP] = torch.tensor(GAPS, dtype=dtype)
    return z - 3.0  # a common shift changes nothing


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_mask_and_fraction_per_dtype(dtype: torch.dtype) -> None:
    expected = [_collapses(gap, dtype) for gap in GAPS]
    assert any(expected) and not all(expected)  # both outcomes occur in every dtype
    logits = _logits(torch.float64)
    assert softmax_collapse_mask(logits, dtype=dtype).tolist() == expected
    fraction = softmax_collapse_fraction(logits, dtype=dtype)
    assert fraction.dtype == torch.float32 and fraction.ndim == 0
    assert fraction.item() == pytest.approx(sum(expected) / len(expected), rel=1e-7)


def test_gap_30_collapses_in_float32_but_not_float64() -> None:
    z = torch.zeros(1, CLASSES)
    z[0, 0] = 30.0
    assert softmax_collapse_mask(z).item() is True
    assert softmax_collapse_mask(z, dtype=torch.float64).item() is False
    assert softmax_collapse_mask(z.double()).item() is False  # None means the logits' dtype


def test_collapse_means_the_correct_class_gradient_is_exactly_zero() -> None:
    """What Def. 3 is about: the collapsed samples stop contributing gradient."""
    for dtype in (torch.float32, torch.float64):
        z = _logits(dtype).requires_grad_()
        F.cross_entropy(z, torch.tensor(TOP), reduction="sum").backward()
        dead = z.grad[torch.arange(len(GAPS)), TOP] == 0
        collapsed = softmax_collapse_mask(z)
        assert dead[collapsed].all()
        assert not dead[GAPS.index(5.0)]


def test_spatial_logits_give_a_mask_per_position() -> None:
    z = _logits().T.reshape(1, CLASSES, len(GAPS))  # (N, C, d)
    assert softmax_collapse_mask(z).shape == (1, len(GAPS))
    assert softmax_collapse_mask(z)[0].tolist() == softmax_collapse_mask(_logits()).tolist()


def test_non_finite_logits_are_not_counted_as_collapsed() -> None:
    z = torch.zeros(2, 4)
    z[0, 0], z[1, 1] = math.inf, math.nan
    assert softmax_collapse_mask(z).tolist() == [False, False]


def test_zero_loss_fraction_counts_collapsed_and_correct_samples() -> None:
    logits = _logits()
    # Correct on samples 0, 3, 5, 6, wrong elsewhere; sample 4 is ignored.
    target = torch.tensor([TOP[0], 1, 0, TOP[3], -100, TOP[5], TOP[6]])
    # Zero loss needs a collapsed softmax and the right class: samples 3, 5, 6 in float32,
    # 5 and 6 in float64; sample 0 is correct but not collapsed (gap 0).
    assert zero_loss_fraction(logits, target).item() == pytest.approx(3 / 6, rel=1e-7)
    got64 = zero_loss_fraction(logits, target, dtype=torch.float64)
    assert got64.item() == pytest.approx(2 / 6, rel=1e-7)
    kept = target != -100
    manual = F.cross_entropy(logits[kept], target[kept], reduction="none") == 0
    assert zero_loss_fraction(logits, target).item() == manual.float().mean().item()


def test_zero_loss_fraction_stablemax_needs_far_larger_logits() -> None:
    z = torch.zeros(2, CLASSES)
    z[0, 0] = 30.0  # collapses softmax in float32, not StableMax
    z[1, 0] = 1e10  # log1p(1e10) = 23: collapses StableMax in float32, not in float64
    target = torch.tensor([0, 0])
    assert zero_loss_fraction(z, target, loss="softmax").item() == 1.0
    assert zero_loss_fraction(z, target, loss="stablemax").item() == 0.5
    assert zero_loss_fraction(z, target, loss="stablemax", dtype=torch.float64).item() == 0.0


def test_bad_arguments_raise() -> None:
    z, y = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=re.escape("loss='mse'")) as info:
        zero_loss_fraction(z, y, loss="mse")  # type: ignore[arg-type]
    assert "'stablemax'" in str(info.value)
    with pytest.raises(TypeError, match="floating dtype"):
        softmax_collapse_fraction(z, dtype=torch.int32)
    with pytest.raises(TypeError, match="integer dtype"):
        zero_loss_fraction(z, y.float(), loss="stablemax")
