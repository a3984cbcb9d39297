"""Split a model's parameters into the groups a geometry-aware optimizer needs.

Grouping by ``ndim == 2`` alone is wrong: embeddings and output heads are matrices too, but their
geometry is ℓ1→ℓ∞ (sign updates), not the RMS→RMS operator norm of hidden layers (arXiv
2510.14009, Scion arXiv 2502.07529). So groups come from the module type and the name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from lightning_dyn._checks import check_choice

HEAD_NAMES = ("head", "lm_head", "classifier", "unembed", "output", "fc_out", "decoder")
"""Last name components of ``nn.Linear`` modules treated as output heads."""

GROUPING_KEYS = ("sign_lr", "adamw_lr", "weight_decay", "head_names", "strict", "embeddings_as")
"""The arguments of :func:`param_groups` besides ``model`` and ``lr``."""

_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _classify(
    module: nn.Module,
    module_name: str,
    param_name: str,
    ndim: int,
    first_conv: bool,
    heads: set[str],
) -> str | None:
    """``"spectral"``, ``"sign"``, ``"adamw"``, or None when the rule does not know the tensor."""
    leaf = module_name.rsplit(".", 1)[-1].lower()
    if ndim < 2 or param_name == "bias" or isinstance(module, _NORMS):
        return "adamw"  # vectors: biases, norm scales and shifts
    if param_name != "weight":
        return None
    if isinstance(module, nn.Embedding):
        return "sign"
    if isinstance(module, nn.Linear):
        return "sign" if leaf in heads else "spectral"
    if isinstance(module, _CONVS):
        return "adamw" if first_conv else "spectral"  # the first conv sees raw pixels
    return None


def param_groups(
    model: nn.Module,
    lr: float = 0.02,
    sign_lr: float | None = None,
    adamw_lr: float | None = None,
    weight_decay: float = 0.0,
    head_names: Sequence[str] = HEAD_NAMES,
    strict: bool = False,
    embeddings_as: Literal["sign", "adamw"] = "sign",
) -> list[dict[str, Any]]:
    """Param groups for :class:`lightning_dyn.optim.LANTON` (or any optimizer that reads ``lmo``).

    - ``spectral``: weights of hidden ``nn.Linear`` layers and of every conv but the first
      (conv kernels are flattened to ``(out, -1)`` by the LMO).
    - ``sign``: ``nn.Embedding`` weights and output heads (``nn.Linear`` whose name ends in one of
      ``head_names``); tied weights are counted once, in the group of their first owner.
    - ``adamw``: biases, normalisation parameters, the first conv, and any other parameter the
      rule does not know (e.g. a bare ``nn.Parameter`` position embedding), unless ``strict``.

    Groups carry ``param_names`` (torch's named param groups), so the optimizer can report
    per-layer learning rates by name.

    Args:
        model: the model.
        lr: learning rate of the spectral group.
        sign_lr: learning rate of the sign group (default: ``lr``).
        adamw_lr: learning rate of the AdamW group (default: ``lr``).
        weight_decay: decoupled weight decay of the spectral and sign groups (AdamW's gets 0).
        head_names: last name components of output-head ``nn.Linear`` modules.
        strict: raise for parameters the rule does not know instead of sending them to AdamW.
        embeddings_as: ``"sign"`` (Signum, as LANTON and Scion) or ``"adamw"`` (as Muon users):
            the sign group's ``lmo`` becomes ``"adamw"`` with ``adamw_lr``.

    Raises:
        ValueError: in strict mode, naming every parameter that could not be classified.
    """
    check_choice("embeddings_as", embeddings_as, ("sign", "adamw"))
    heads = {name.lower() for name in head_names}
    groups: dict[str, tuple[list[nn.Parameter], list[str]]] = {
        "spectral": ([], []),
        "sign": ([], []),
        "adamw": ([], []),
    }
    seen: set[int] = set()
    unknown: list[str] = []
    first_conv = True
    for module_name, module in model.named_modules():
        is_conv = isinstance(module, _CONVS)
        for param_name, p in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            kind = _classify(module, module_name, param_name, p.ndim, first_conv and is_conv, heads)
            if kind is None:
                unknown.append(f"{full_name} {tuple(p.shape)} in {type(module).__name__}")
                kind = "adamw"
            groups[kind][0].append(p)
            groups[kind][1].append(full_name)
        first_conv = first_conv and not is_conv
    if strict and unknown:
        raise ValueError(
            "param_groups(strict=True) cannot classify: "
            + "; ".join(unknown)
            + ". Known: nn.Linear (hidden or head by name), nn.Embedding, convolutions, "
            "normalisation layers and biases."
        )
    adamw_lr = lr if adamw_lr is None else adamw_lr
    rates = {"spectral": lr, "sign": lr if sign_lr is None else sign_lr, "adamw": adamw_lr}
    decay = {"spectral": weight_decay, "sign": weight_decay, "adamw": 0.0}
    lmos = {"spectral": "spectral", "sign": embeddings_as, "adamw": "adamw"}
    return [
        {
            "params": params,
            "param_names": names,
            "lmo": lmos[kind],
            "lr": rates[kind] if lmos[kind] == kind else adamw_lr,
            "weight_decay": decay[kind],
        }
        for kind, (params, names) in groups.items()
        if params
    ]
