"""Stability thresholds checked against the optimisers themselves on a quadratic."""

from __future__ import annotations

import pytest
import torch

from lightning_dyn.functional.stability import adam_preconditioner, stability_threshold


def _diverges(optimizer_cls, curvature: float, steps: int = 3000, **kwargs) -> bool:
    """Run the optimiser on ``curvature θ²/2`` from θ = 1 and report whether θ blew up."""
    theta = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
    optimizer = optimizer_cls([theta], **kwargs)
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * curvature * theta**2).backward()
        optimizer.step()
    return not bool(theta.abs() < 1.0)


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("gd", {}),
        ("heavy_ball", {"momentum": 0.9}),
        ("heavy_ball", {"momentum": 0.5}),
        ("nesterov", {"momentum": 0.9, "nesterov": True}),
        ("nesterov", {"momentum": 0.3, "nesterov": True}),
    ],
)
def test_sgd_threshold_separates_convergence_from_divergence(kind: str, kwargs: dict) -> None:
    lr = 0.1
    threshold = stability_threshold(kind, kwargs.get("momentum", 0.0)) / lr  # in curvature units
    assert not _diverges(torch.optim.SGD, 0.98 * threshold, lr=lr, **kwargs)
    assert _diverges(torch.optim.SGD, 1.02 * threshold, lr=lr, **kwargs)


def test_dampening_scales_the_step() -> None:
    lr, momentum, dampening = 0.1, 0.9, 0.5
    threshold = stability_threshold("heavy_ball", momentum) / (lr * (1 - dampening))
    kwargs = {"lr": lr, "momentum": momentum, "dampening": dampening}
    assert not _diverges(torch.optim.SGD, 0.98 * threshold, **kwargs)
    assert _diverges(torch.optim.SGD, 1.02 * threshold, **kwargs)


def test_adam_threshold_is_38_over_lr_at_beta1_09() -> None:
    assert stability_threshold("adam", 0.9) == pytest.approx(38.0)


def test_adam_preconditioner_rebuilds_adams_step() -> None:
    # θ_{t+1} - θ_t == -η P^{-1} m_t with m_t the raw EMA in Adam's state.
    torch.manual_seed(0)
    theta = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    betas, eps, lr = (0.8, 0.95), 1e-3, 0.05
    optimizer = torch.optim.Adam([theta], lr=lr, betas=betas, eps=eps)
    for _ in range(5):
        before = theta.detach().clone()
        optimizer.zero_grad()
        (theta**4).sum().backward()
        optimizer.step()
        state = optimizer.state[theta]
        step = int(state["step"])
        p = adam_preconditioner(state["exp_avg_sq"], step, *betas, eps)
        torch.testing.assert_close(theta.detach() - before, -lr * state["exp_avg"] / p)


def test_adam_with_a_frozen_preconditioner_is_stable_below_its_threshold() -> None:
    # Adam's update with P held fixed is EMA momentum: m ← β1 m + (1-β1) g, θ ← θ - η m / P.
    beta1, lr, p = 0.9, 0.01, 3.0
    threshold = stability_threshold("adam", beta1) * p / lr  # λ_max(P^{-1} H) < thr/η

    def diverges(curvature: float) -> bool:
        theta, m = 1.0, 0.0
        for _ in range(5000):
            m = beta1 * m + (1 - beta1) * curvature * theta
            theta -= lr * m / p
        return not abs(theta) < 1.0  # NaN once it overflowed

    assert not diverges(0.98 * threshold)
    assert diverges(1.02 * threshold)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "lion"}, r"kind='lion' is not supported"),
        ({"kind": "adam", "beta": 1.0}, r"beta must be a number in \[0, 1\); got 1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stability_threshold(**kwargs)


def test_preconditioner_needs_a_step() -> None:
    with pytest.raises(ValueError, match=r"step must be >= 1"):
        adam_preconditioner(torch.ones(3), 0, 0.9, 0.999, 1e-8)
