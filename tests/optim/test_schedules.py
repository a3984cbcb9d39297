"""warmup_cosine: the learning rate at every step against the closed form, groups kept apart."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_dyn.optim import warmup_cosine


def _expected(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up to 1, then ½(1 + cos(π t)) from 1 to ``floor`` (written out anew)."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / (total - warmup))
    return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2


def _two_groups() -> torch.optim.SGD:
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    return torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.02}])


@pytest.mark.parametrize(("warmup", "floor"), [(0, 0.0), (5, 0.1), (3, 1.0)])
def test_the_rate_at_every_step_is_the_closed_form_in_every_group(warmup, floor) -> None:
    optimizer = _two_groups()
    scheduler = warmup_cosine(optimizer, total_steps=20, warmup_steps=warmup, min_lr_ratio=floor)
    for step in range(25):  # past the end it holds the floor
        factor = _expected(step, 20, warmup, floor)
        rates = [group["lr"] for group in optimizer.param_groups]
        assert rates == pytest.approx([0.1 * factor, 0.02 * factor], rel=1e-12), step
        optimizer.step()
        scheduler.step()


def test_no_warmup_is_torchs_cosine_annealing() -> None:
    ours, theirs = _two_groups(), _two_groups()
    schedule = warmup_cosine(ours, total_steps=12, min_lr_ratio=0.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=12)
    for _ in range(12):
        assert [g["lr"] for g in ours.param_groups] == pytest.approx(
            [g["lr"] for g in theirs.param_groups], abs=1e-12
        )
        for optimizer, scheduler in ((ours, schedule), (theirs, reference)):
            optimizer.step()
            scheduler.step()


def test_a_restored_schedule_continues_where_it_stopped() -> None:
    optimizer = _two_groups()
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_steps=2)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0] == {"total_steps": 10, "warmup_steps": 2, "min_lr_ratio": 0.0}
    fresh_optimizer = _two_groups()
    fresh = warmup_cosine(fresh_optimizer, total_steps=10, warmup_steps=2)
    fresh.load_state_dict(state)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    assert fresh.last_epoch == 4
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_steps": 0}, "total_steps must be an integer >= 1"),
        ({"total_steps": -1}, "total_steps must be an integer >= 1"),
        ({"total_steps": 10, "warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"total_steps": 10, "warmup_steps": 10}, "must be below total_steps=10"),
        ({"total_steps": 10, "min_lr_ratio": 1.5}, "min_lr_ratio must be a number in"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        warmup_cosine(_two_groups(), **kwargs)
