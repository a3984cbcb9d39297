"""Stability thresholds of first-order optimisers on a quadratic (the edge of stability).

On a quadratic with curvature λ, gradient descent with step η diverges once λ > 2/η. Cohen et
al. (arXiv 2103.00065) observe that full-batch training drives the sharpness λ_max(H) up to
that threshold and keeps it there. Each optimiser has its own threshold; this module gives them
in a dimensionless form: the optimiser is stable on the quadratic when the largest eigenvalue of
``D^{1/2} H D^{1/2}`` is below ``threshold``, where ``D`` is the per-coordinate step size
(``η`` for SGD, ``η / P`` for Adam's preconditioner ``P``). With one step size for every
parameter this is the familiar ``λ_max(H) < threshold / η``.

- gradient descent: 2;
- heavy-ball momentum β (``torch.optim.SGD(momentum=β)``: ``v ← βv + g``, ``θ ← θ - ηv``):
  2(1 + β), i.e. ``2(1+β)/η``; dampening ``d`` scales the step to ``η(1 - d)``;
- Nesterov momentum β (``nesterov=True``: ``θ ← θ - η(g + βv)``): (2 + 2β)/(1 + 2β);
- Adam with β1 (arXiv 2207.14484): the preconditioned sharpness ``λ_max(P^{-1} H)`` is stable
  below ``(2 + 2β1)/((1 - β1) η)``, 38/η at β1 = 0.9, with ``P`` the diagonal by which Adam
  divides its exponential moving average of gradients (``adam_preconditioner``).

The momentum thresholds follow from the 2×2 linear recurrence of each method on ``λθ²/2``; the
tests check every one against the optimiser itself: ``torch.optim.SGD`` run on a quadratic just
below and just above the threshold, and Adam's update rebuilt from ``adam_preconditioner``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_dyn._checks import check_choice, check_fraction

OptimizerKind = Literal["gd", "heavy_ball", "nesterov", "adam"]
OPTIMIZER_KINDS: tuple[str, ...] = get_args(OptimizerKind)


def stability_threshold(kind: OptimizerKind, beta: float = 0.0) -> float:
    """Dimensionless threshold on ``λ_max(D^{1/2} H D^{1/2})`` for an optimiser.

    Args:
        kind: ``"gd"``, ``"heavy_ball"``, ``"nesterov"`` or ``"adam"``.
        beta: the momentum β (SGD) or β1 (Adam), in [0, 1).

    Returns:
        2 for gradient descent, 2(1+β) for heavy ball, (2+2β)/(1+2β) for Nesterov,
        (2+2β1)/(1-β1) for Adam.
    """
    check_choice("kind", kind, OPTIMIZER_KINDS)
    check_fraction("beta", beta, open_high=True)
    if kind == "gd":
        return 2.0
    if kind == "heavy_ball":
        return 2.0 * (1.0 + beta)
    if kind == "nesterov":
        return (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta)
    return (2.0 + 2.0 * beta) / (1.0 - beta)


def adam_preconditioner(
    exp_avg_sq: Tensor, step: int | float, beta1: float, beta2: float, eps: float
) -> Tensor:
    """The diagonal ``P`` of Adam's update ``θ ← θ - η P^{-1} m`` (``m`` the raw gradient EMA).

    ``torch.optim.Adam`` steps by ``η m̂ / (sqrt(v̂) + ε)`` with ``m̂ = m / (1 - β1^t)`` and
    ``v̂ = v / (1 - β2^t)``, so ``P = (1 - β1^t)(sqrt(v̂) + ε)`` (arXiv 2207.14484 writes the
    update this way, so that ``m`` is the EMA whose threshold is ``(2 + 2β1)/((1 - β1) η)``).

    Args:
        exp_avg_sq: Adam's ``v`` for one parameter (``state["exp_avg_sq"]``, or
            ``max_exp_avg_sq`` with ``amsgrad``).
        step: Adam's step count ``t >= 1``.
        beta1, beta2, eps: the optimiser's hyperparameters.

    Returns:
        ``P`` with the shape of ``exp_avg_sq``, float32 or wider.
    """
    if not step >= 1:
        raise ValueError(f"step must be >= 1 (Adam has stepped); got {step!r}.")
    v = exp_avg_sq.to(torch.promote_types(exp_avg_sq.dtype, torch.float32))
    bias2 = 1.0 - beta2**step
    return (1.0 - beta1**step) * ((v / bias2).sqrt() + eps)
