"""What the optimiser in use makes of the curvature: per-coordinate step sizes and threshold.

Reads ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` as a diagonal step ``D`` (per parameter
element) and a dimensionless threshold (``functional.stability``), so that the optimiser is
stable on a quadratic while ``λ_max(D^{1/2} H D^{1/2}) < threshold``. Other optimisers get no
threshold: their edge of stability is not a known closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_dyn.functional.stability import adam_preconditioner, stability_threshold


@dataclass
class OptimizerScaling:
    """``steps``: one tensor per parameter (``D``), or ``None`` before Adam's first step."""

    kind: str
    beta: float
    threshold: float
    steps: list[Tensor] | None
    uniform_lr: float | None  # the step size when it is one scalar for every parameter

    @property
    def preconditioned(self) -> bool:
        return self.kind == "adam"


def _groups_by_param(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


def optimizer_scaling(
    optimizer: torch.optim.Optimizer, params: list[Tensor]
) -> tuple[OptimizerScaling | None, str]:
    """The scaling of ``params`` under ``optimizer``, or ``None`` and the reason why not."""
    groups = _groups_by_param(optimizer)
    missing = [i for i, p in enumerate(params) if id(p) not in groups]
    if missing:
        return None, f"{len(missing)} measured parameters are not in the optimiser"
    own = [groups[id(p)] for p in params]
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd(params, own)
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return _adam(optimizer, params, own)
    return None, f"no known stability threshold for {type(optimizer).__name__}"


def _sgd(params: list[Tensor], own: list[dict]) -> tuple[OptimizerScaling | None, str]:
    momenta = {(g["momentum"], g["nesterov"]) for g in own}
    if len(momenta) > 1:
        return None, "parameter groups use different momenta"
    momentum, nesterov = momenta.pop()
    kind = "gd" if momentum == 0 else ("nesterov" if nesterov else "heavy_ball")
    sizes = [float(g["lr"]) * (1.0 - float(g["dampening"])) for g in own]
    steps = [torch.full_like(p, s, dtype=torch.float32) for p, s in zip(params, sizes, strict=True)]
    uniform = sizes[0] if len(set(sizes)) == 1 else None
    return OptimizerScaling(kind, momentum, stability_threshold(kind, momentum), steps, uniform), ""


def _adam(
    optimizer: torch.optim.Optimizer, params: list[Tensor], own: list[dict]
) -> tuple[OptimizerScaling | None, str]:
    beta1s = {g["betas"][0] for g in own}
    if len(beta1s) > 1:
        return None, "parameter groups use different beta1"
    beta1 = beta1s.pop()
    lrs = {float(g["lr"]) for g in own}
    scaling = OptimizerScaling("adam", beta1, stability_threshold("adam", beta1), None, None)
    scaling.uniform_lr = lrs.pop() if len(lrs) == 1 else None
    states = [optimizer.state.get(p, {}) for p in params]
    if not any("exp_avg_sq" in state for state in states):
        return scaling, ""  # before the first step: no preconditioner yet
    steps = []
    for p, group, state in zip(params, own, states, strict=True):
        if "exp_avg_sq" not in state:
            # Never had a gradient, so Adam never stepped it: step size 0. Its Hessian block is
            # zero too (the loss does not depend on it), so it changes no eigenvalue.
            steps.append(torch.zeros_like(p, dtype=torch.float32))
            continue
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        beta1_, beta2 = group["betas"]
        pre = adam_preconditioner(v, float(state["step"]), beta1_, beta2, group["eps"])
        steps.append(float(group["lr"]) / pre)
    scaling.steps = steps
    return scaling, ""
