"""Learning-rate schedules for the ``lr_scheduler`` config group: linear warm-up, then cosine."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from lightning_dyn._checks import check_fraction, check_int, check_positive_int


class WarmupCosineFactor:
    """The factor on each group's base learning rate at a step: ``(step + 1) / warmup_steps``
    during the warm-up, then a half cosine from 1 down to ``min_lr_ratio`` at ``total_steps``,
    held there after. An object rather than a closure, so that ``LambdaLR.state_dict`` keeps
    its settings in the checkpoint."""

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then cosine decay to
    ``min_lr_ratio`` times each group's learning rate at ``total_steps``.

    The factor multiplies every parameter group's own learning rate, so the groups of
    ``LANTON`` (hidden, sign and AdamW learning rates) keep their ratios. ``warmup_steps=0`` is
    plain cosine annealing (``CosineAnnealingLR`` with ``eta_min = min_lr_ratio * lr``). Step it
    once per optimizer step (Lightning: ``"interval": "step"``).
    """
    check_positive_int("total_steps", total_steps)
    check_int("warmup_steps", warmup_steps, low=0)
    if warmup_steps >= total_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} must be below total_steps={total_steps}: the cosine "
            "needs steps to decay over."
        )
    check_fraction("min_lr_ratio", min_lr_ratio)
    factor = WarmupCosineFactor(total_steps, warmup_steps, float(min_lr_ratio))
    return LambdaLR(optimizer, factor)
