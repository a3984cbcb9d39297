"""⊥Grad (perpGrad) as a callback: gradients projected orthogonally to the weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_dyn._checks import (
    check_bool,
    check_callable,
    check_choice,
    check_positive_int,
    check_real,
)
from lightning_dyn.callbacks._intervals import warn_unless_multiple
from lightning_dyn.functional.perp_grad import (
    DEFAULT_EPS,
    PERP_GRAD_MODES,
    PerpGradMode,
    nlm_cosines,
    perp_grad_,
)

ParamFilter = Callable[[str, nn.Parameter], bool]

# Optimizers whose weight decay is added to the gradient inside ``step``, i.e. after the
# projection, where it puts the radial component back.
_COUPLED_DECAY = (torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adam)


class PerpGrad(pl.Callback):
    """⊥Grad of arXiv 2501.04697: keep only the gradient component orthogonal to the weights.

    Runs in ``on_before_optimizer_step``: after the closure (so after every micro-batch of
    gradient accumulation), after AMP unscaling and, under DDP, after the gradient all-reduce;
    before gradient clipping and ``optimizer.step``. This is why it works where the official
    ``OrthoGrad`` wrapper does not under Lightning: a wrapper that projects in its ``step`` and
    then calls ``base.step(closure)`` lets the closure recompute the raw gradient.

    At every logging step (``log_every_n_steps``, default the trainer's) it logs the
    pre-projection NLM alignment cos(W, -∇L) of every projected tensor as
    ``perp_grad/cos_w_g/<parameter name>``.

    Args:
        mode: ``"per_tensor"`` (official code: each tensor against its own weights) or
            ``"global"`` (paper Eq. 12: one projection over all parameters of the optimizer).
        rescale: rescale the projected gradient to the original norm (official code); the
            paper's Eq. 12 does not.
        param_filter: ``(name, parameter) -> bool`` selecting the tensors to project, e.g.
            ``lambda name, p: p.ndim > 1`` to leave biases and norm scales alone. Default: all.
        log_every_n_steps: logging interval in optimizer steps, a multiple of the Trainer's
            ``log_every_n_steps`` (which it defaults to).
        eps: guard against zero norms, as :func:`lightning_dyn.functional.perp_grad_`.
    """

    def __init__(
        self,
        mode: PerpGradMode = "per_tensor",
        rescale: bool = True,
        param_filter: ParamFilter | None = None,
        log_every_n_steps: int | None = None,
        eps: float = DEFAULT_EPS,
    ) -> None:
        check_choice("mode", mode, PERP_GRAD_MODES)
        check_bool("rescale", rescale)
        check_callable("param_filter", param_filter, "(name, parameter) -> bool")
        if log_every_n_steps is not None:
            check_positive_int("log_every_n_steps", log_every_n_steps)
        check_real("eps", eps)
        self.mode, self.rescale, self.eps = mode, rescale, eps
        self.param_filter = param_filter
        self.log_every_n_steps = log_every_n_steps
        self._names: dict[int, str] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in setup: configure_model (FSDP's fully_shard) may replace the parameters.
        self._names = {id(p): name for name, p in pl_module.named_parameters()}
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        for optimizer in trainer.optimizers:
            if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
                raise ValueError(
                    f"PerpGrad cannot be used with {type(optimizer).__name__} and a GradScaler: "
                    "the optimizer unscales gradients inside its own step (a 'fused' "
                    "optimizer), so in on_before_optimizer_step they are still multiplied by "
                    "the loss scale and may hold infs that the projection would turn into "
                    "NaNs. Build the optimizer with fused=False."
                )
            self._warn_on_coupled_weight_decay(optimizer)
        warn_unless_multiple("PerpGrad", self.log_every_n_steps, trainer)

    @staticmethod
    def _warn_on_coupled_weight_decay(optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, _COUPLED_DECAY):
            return
        for group in optimizer.param_groups:
            if group.get("weight_decay", 0) and not group.get("decoupled_weight_decay", False):
                rank_zero_warn(
                    f"PerpGrad: {type(optimizer).__name__} adds weight_decay="
                    f"{group['weight_decay']} to the gradient inside step(), after the "
                    "projection, which puts back a component along the weights. Use a "
                    "decoupled decay (AdamW) or weight_decay=0, as the paper's ⊥ runs do."
                )
                return

    def _selected(self, optimizer: torch.optim.Optimizer) -> list[tuple[str, nn.Parameter]]:
        selected = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                name = self._names.get(id(p), f"param_{len(selected)}")
                if self.param_filter is None or self.param_filter(name, p):
                    selected.append((name, p))
        return selected

    def _should_log(self, trainer: pl.Trainer) -> bool:
        # Lightning flushes step metrics to the loggers after optimizer step g when
        # (g + 1) % log_every_n_steps == 0; g is trainer.global_step here, before the step.
        interval = self.log_every_n_steps or trainer.log_every_n_steps
        return trainer.logger is not None and (trainer.global_step + 1) % max(interval, 1) == 0

    @staticmethod
    def _skipped_by_scaler(trainer: pl.Trainer, params: list[nn.Parameter]) -> bool:
        """Whether a GradScaler will skip this step: its unscaled gradients hold inf/NaN.

        That is the scaler calibrating its scale, not a divergence: nothing is logged for a step
        that does not happen.
        """
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            return False
        return not bool(torch.stack([p.grad.isfinite().all() for p in params]).all())

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        selected = self._selected(optimizer)
        if not selected:
            return
        params = [p for _, p in selected]
        if self._should_log(trainer) and not self._skipped_by_scaler(trainer, params):
            # Gradients are already averaged over ranks and parameters are identical, so every
            # rank computes the same cosines: no sync needed.
            cosines = nlm_cosines(params).tolist()
            for (name, _), cosine in zip(selected, cosines, strict=True):
                pl_module.log(f"perp_grad/cos_w_g/{name}", cosine, on_step=True, on_epoch=False)
        perp_grad_(params, mode=self.mode, rescale=self.rescale, eps=self.eps)

    @override
    def state_dict(self) -> dict[str, Any]:
        # No state beyond the settings; saved (non-empty) so a resume can check them. The
        # state key is the class name alone: one keyed by the settings would never be found
        # by a resume with other settings, and the check below could not fire.
        return {"mode": self.mode, "rescale": self.rescale}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = (state_dict.get("mode"), state_dict.get("rescale"))
        if saved != (self.mode, self.rescale):
            rank_zero_warn(
                f"PerpGrad resumes with mode={self.mode!r}, rescale={self.rescale} but the "
                f"checkpoint was made with mode={saved[0]!r}, rescale={saved[1]}."
            )
