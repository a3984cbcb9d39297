"""An optimizer factory that groups a module's parameters itself (for recipes and the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from lightning_dyn._checks import check_choice
from lightning_dyn.optim.lanton import LANTON
from lightning_dyn.optim.param_groups import param_groups

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
"""``params -> Optimizer``, or ``module -> Optimizer`` when it has ``wants_module = True``."""


class LayerwiseOptimizerFactory:
    """``module -> LANTON`` over :func:`param_groups` of the module.

    Recipes call a factory with ``wants_module = True`` on the LightningModule instead of on its
    parameters, since the groups depend on module types and names. With ``adaptive=False,
    spectral_scale="muon", embeddings_as="adamw"`` the result is torch's Muon on the hidden
    matrices (same update, see tests) plus AdamW for the rest, as Muon is usually run.

    Args:
        adaptive: noise-adaptive layerwise learning rates (LANTON) or not (Muon/Scion-style).
        lr: learning rate of the hidden matrices.
        sign_lr: learning rate of embeddings and heads (default ``lr``).
        adamw_lr: learning rate of vectors and the first conv (default ``lr``).
        weight_decay: decoupled weight decay of the matrices (vectors get none).
        embeddings_as: ``"sign"`` (Signum, as LANTON and Scion) or ``"adamw"`` (as Muon users).
        strict: refuse parameters :func:`param_groups` cannot classify.
        **optimizer_kwargs: further :class:`LANTON` arguments (``spectral_scale``, ``ns_steps``,
            ``momentum``, ``noise_beta``, ...).
    """

    wants_module = True

    def __init__(
        self,
        adaptive: bool = True,
        lr: float = 0.02,
        sign_lr: float | None = None,
        adamw_lr: float | None = None,
        weight_decay: float = 0.0,
        embeddings_as: Literal["sign", "adamw"] = "sign",
        strict: bool = False,
        **optimizer_kwargs: Any,
    ) -> None:
        check_choice("embeddings_as", embeddings_as, ("sign", "adamw"))
        self.adaptive, self.embeddings_as, self.strict = adaptive, embeddings_as, strict
        self.rates = {"lr": lr, "sign_lr": sign_lr, "adamw_lr": adamw_lr}
        self.weight_decay, self.optimizer_kwargs = weight_decay, optimizer_kwargs

    def __call__(self, module: nn.Module) -> LANTON:
        groups = param_groups(
            module, weight_decay=self.weight_decay, strict=self.strict, **self.rates
        )
        if self.embeddings_as == "adamw":
            for group in groups:
                if group["lmo"] == "sign":
                    group["lmo"] = "adamw"
                    group["lr"] = self.rates["adamw_lr"] or self.rates["lr"]
        return LANTON(groups, lr=self.rates["lr"], adaptive=self.adaptive, **self.optimizer_kwargs)


def build_optimizer(factory: OptimizerFactory, module: nn.Module) -> torch.optim.Optimizer:
    """Call an optimizer factory the way the recipes do.

    A factory with ``wants_module = True`` (such as :class:`LayerwiseOptimizerFactory`) gets the
    module, since its groups depend on module types and names; any other (e.g.
    ``functools.partial(torch.optim.AdamW, lr=...)``) gets ``module.parameters()``.
    """
    return factory(module if getattr(factory, "wants_module", False) else module.parameters())
