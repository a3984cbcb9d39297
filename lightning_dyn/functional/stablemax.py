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
official loss escapes only because it casts logits to float64 first. Here the derivative
``1 / (1 + |x|)`` is written out (:class:`_LogS`), finite for every input, so no input produces
a NaN gradient.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dyn._checks import check_choice

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


class _LogS(torch.autograd.Function):
    """``log s(x) = sign(x) * log1p(|x|)`` with its derivative ``1 / (1 + |x|)`` written out.

    The derivative is exact everywhere, 0 included (where ``sign(x) * log1p(abs(x))`` would get
    autograd's ``sign'(0) = abs'(0) = 0`` although the true value is 1; logits of exactly 0 are
    common with zero-initialised heads), has no unused branch that could give ``0 * inf``, and
    costs one fused elementwise pass instead of the masked ``torch.where`` pair (about 4x faster
    for the loss's backward on a CPU). Backward and ``jvp`` are built from differentiable ops, so
    double backward and ``torch.func`` transforms work through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        # In place on one fresh buffer: this is memory-bound, and big temporaries cost page faults.
        return x.abs().log1p_().copysign_(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: keep the graph, no in-place
            return grad / (1 + x.abs())
        return torch.div(grad, x.abs().add_(1))

    @staticmethod
    def jvp(ctx: Any, x_tangent: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return x_tangent / (1 + x.abs())


def stablemax_scores(x: Tensor) -> Tensor:
    """``log s(x) = sign(x) * log1p(|x|)``: the logits whose softmax is StableMax of ``x``.

    Useful to reuse softmax tooling on a StableMax model, e.g. the Softmax Collapse test of
    :mod:`lightning_dyn.functional.softmax_collapse` applied to StableMax's own normaliser.
    """
    return _LogS.apply(x)


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
    return torch.softmax(stablemax_scores(x), dim=dim)


def log_stablemax(x: Tensor, dim: int = -1) -> Tensor:
    """Log of :func:`stablemax`, computed without forming ``s(x)`` so it cannot overflow.

    Args:
        x: Logits, any shape and floating dtype.
        dim: Dimension along which the probabilities sum to 1.

    Returns:
        Tensor of the same shape and dtype as ``x``.
    """
    return torch.log_softmax(stablemax_scores(x), dim=dim)


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
    float32 number (see ``softmax_collapse``). The cost is a float64 copy of the logits and
    float64 elementwise work: on the grokking problem (5107 x 113 logits, 1 CPU thread) the loss's
    forward+backward takes a few times longer than ``F.cross_entropy``'s, small next to the model
    (``benchmarks/RESULTS.md``). Pass ``dtype=torch.float32`` to reproduce the later upstream
    default.

    The loss is returned in ``logits.dtype``, as ``F.cross_entropy`` does; gradients flow through
    the casts to the original logits. A per-sample float64 loss that is tiny but non-zero may
    round to 0 when ``logits`` are float32 or lower: pass float64 logits to see the exact values.

    Args:
        logits: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)`` unnormalised scores of a floating
            dtype, class dim 1 (dim 0 for ``(C,)``). Integer logits are refused, as by
            ``F.cross_entropy``: the loss is returned in their dtype, so it would be truncated.
        target: Class indices of an integer dtype, shape ``(N,)``, ``()`` or ``(N, d1, ...)``.
        reduction: ``"none"`` (per-element losses, the shape of ``target``), ``"mean"`` (over the
            non-ignored targets) or ``"sum"``.
        ignore_index: Target value that contributes no loss and no gradient.
        dtype: Floating dtype the loss and its gradient are computed in.

    Returns:
        The loss in ``logits.dtype``: a scalar, or the shape of ``target`` for ``"none"``.

    Raises:
        ValueError: If ``reduction`` is not one of ``"none"``, ``"mean"``, ``"sum"``.
        TypeError: If ``logits`` is not floating, ``target`` is not an integer tensor or
            ``dtype`` is not floating.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    if not logits.dtype.is_floating_point:
        raise TypeError(
            "stablemax_cross_entropy expects logits of a floating dtype, got "
            f"logits.dtype={logits.dtype} (cast them first, as F.cross_entropy requires)"
        )
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
