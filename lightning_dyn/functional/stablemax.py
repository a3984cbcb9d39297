"""StableMax: a softmax replacement whose gradient decays polynomially, not exponentially.

Prieto et al., "Grokking at the Edge of Numerical Stability", arXiv 2501.04697, Def. 4.
StableMax replaces ``exp`` by

    s(x) = x + 1        for x >= 0
    s(x) = 1 / (1 - x)  for x < 0

so ``StableMax(x)_i = s(x_i) / sum_j s(x_j)``. Since ``log s(x) = sign(x) * log1p(|x|)``,
StableMax is the softmax of ``sign(x) * log1p(|x|)``; every function here uses that form. It
never overflows (``log1p(3.4e38)`` is about 89) and reuses the max-shifted ``log_softmax`` kernel.

NaN trap in the direct form: the official code computes
``torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)``. ``torch.where`` differentiates both branches
and zeroes the unused one, but at a float32 logit of exactly ``1.0`` the unused branch's local
derivative ``-1 / (1 - x + 1e-30) ** 2`` is ``-1e60``, which overflows to ``-inf``, and the
chain rule gives ``0 * -inf = NaN`` (the ``1e-30`` protects nothing in float32 gradients). The
official loss escapes only because it casts logits to float64 first. Here both ``torch.where``
branches are finite everywhere, so no input produces a NaN gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dyn._checks import check_choice

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


def _log_s(x: Tensor) -> Tensor:
    """``log s(x) = sign(x) * log1p(|x|)`` with the correct gradient everywhere.

    ``torch.sign(x) * torch.log1p(x.abs())`` has gradient 0 at ``x == 0`` (autograd takes
    ``sign'(0) = abs'(0) = 0``) although ``d log s / dx = 1`` there; logits of exactly 0 are common
    (zero-initialised heads), so the absolute value is taken with ``torch.where``, whose derivative
    at 0 is the ``x >= 0`` branch's. Both branches are finite for every input, so the masked-out
    branch never contributes ``0 * inf``.
    """
    nonneg = x >= 0
    log_abs = torch.log1p(torch.where(nonneg, x, -x))
    return torch.where(nonneg, log_abs, -log_abs)


def stablemax(x: Tensor, dim: int = -1) -> Tensor:
    """StableMax probabilities ``s(x_i) / sum_j s(x_j)`` along ``dim``.

    Computed as ``softmax(sign(x) * log1p(|x|))`` in ``x``'s dtype; cast ``x`` first if more
    precision is wanted.

    Args:
        x: Logits, any shape and floating dtype.
        dim: Dimension along which the probabilities sum to 1.

    Returns:
        Tensor of the same shape and dtype as ``x``.
    """
    return torch.softmax(_log_s(x), dim=dim)


def log_stablemax(x: Tensor, dim: int = -1) -> Tensor:
    """Log of :func:`stablemax`, computed without forming ``s(x)`` so it cannot overflow.

    Args:
        x: Logits, any shape and floating dtype.
        dim: Dimension along which the probabilities sum to 1.

    Returns:
        Tensor of the same shape and dtype as ``x``.
    """
    return torch.log_softmax(_log_s(x), dim=dim)


def stablemax_cross_entropy(
    logits: Tensor,
    target: Tensor,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Cross-entropy with StableMax in place of softmax: ``-log StableMax(z)_y``.

    A drop-in for ``F.cross_entropy`` with class-index targets: the same shapes, ``reduction``
    and ``ignore_index`` semantics (ignored targets contribute 0 and are left out of the mean's
    denominator). Class probabilities as targets, ``weight`` and ``label_smoothing`` are not
    supported. Non-finite logits propagate as in ``F.cross_entropy`` (``+inf`` or NaN gives a NaN
    loss, ``-inf`` a zero probability).

    Why ``dtype`` defaults to float64: the official loss casts logits to float64 (the model stays
    float32), and the paper's runs were made that way. The backward pass of the loss then runs in
    float64, so a correct-class gradient that float32 would round to exactly 0 survives as a small
    float32 number (see ``softmax_collapse``); the cost is one float64 copy of the logits, which
    is negligible next to the model. Pass ``dtype=torch.float32`` to reproduce the later upstream
    default.

    The loss is returned in ``logits.dtype``, as ``F.cross_entropy`` does; gradients flow through
    the casts to the original logits. A per-sample float64 loss that is tiny but non-zero may
    round to 0 when ``logits`` are float32 or lower: pass float64 logits to see the exact values.

    Args:
        logits: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)`` unnormalised scores, class dim 1
            (dim 0 for ``(C,)``).
        target: Class indices of an integer dtype, shape ``(N,)``, ``()`` or ``(N, d1, ...)``.
        reduction: ``"none"`` (per-element losses, the shape of ``target``), ``"mean"`` (over the
            non-ignored targets) or ``"sum"``.
        ignore_index: Target value that contributes no loss and no gradient.
        dtype: Floating dtype the loss and its gradient are computed in.

    Returns:
        The loss in ``logits.dtype``: a scalar, or the shape of ``target`` for ``"none"``.

    Raises:
        ValueError: If ``reduction`` is not one of ``"none"``, ``"mean"``, ``"sum"``.
        TypeError: If ``target`` is not an integer tensor or ``dtype`` is not floating.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(
            "stablemax_cross_entropy expects class-index targets of an integer dtype, got "
            f"target.dtype={target.dtype} (class-probability targets are not supported)"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got dtype={dtype}")
    class_dim = 1 if logits.ndim > 1 else 0
    log_probs = log_stablemax(logits.to(dtype), dim=class_dim)  # Def. 4 of arXiv 2501.04697
    loss = F.nll_loss(log_probs, target.long(), ignore_index=ignore_index, reduction=reduction)
    return loss.to(logits.dtype)
