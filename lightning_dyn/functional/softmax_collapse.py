"""Softmax Collapse (SC): exact floating-point tests, per sample.

Prieto et al., "Grokking at the Edge of Numerical Stability", arXiv 2501.04697, Def. 3. When the
largest logit leads the others by enough, ``sum_k exp(z_k - max z)`` rounds to exactly 1 in the
loss dtype: the top class's probability is then exactly 1, so a correctly classified sample has a
loss of exactly 0 and a correct-class gradient of exactly 0, and learning from it stops. (The
gradient can round to 0 slightly before the sum does.) With 113 classes and the other logits
equal, the sum reaches 1 at a gap of about 19-21 in float32, 40 in float64 and 12 in float16; the
exact point depends on the summation order of the device's kernel.

These are measurements, not training code: they run without autograd and test exact equality on
purpose, because the rounding is the phenomenon.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dyn._checks import check_choice
from lightning_dyn.functional.stablemax import stablemax_cross_entropy

CollapseLoss = Literal["softmax", "stablemax"]
COLLAPSE_LOSSES: tuple[str, ...] = get_args(CollapseLoss)
"""The names of :data:`~lightning_dyn.functional.losses.CLASSIFICATION_LOSSES` with a softmax-like
normaliser whose collapse can be measured."""


def _cast(logits: Tensor, dtype: torch.dtype | None) -> Tensor:
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype or None, got dtype={dtype}")
    return logits.detach().to(dtype or logits.dtype)


def _fraction(hits: Tensor, counted: Tensor | None = None) -> Tensor:
    """``hits / counted`` as one correctly rounded float32 division of exact integer counts."""
    total = hits.numel() if counted is None else counted.sum()
    return hits.sum() / total


@torch.no_grad()
def softmax_collapse_mask(logits: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Per-sample Softmax Collapse test: ``sum_k exp(z_k - max z) == 1`` exactly in ``dtype``.

    Args:
        logits: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)`` scores, class dim 1 (0 for ``(C,)``),
            as in ``F.cross_entropy``.
        dtype: Dtype the softmax normaliser is computed in; use the dtype the softmax loss is
            computed in. ``None``: ``logits.dtype``.

    Returns:
        Boolean tensor of the logits' shape without the class dim. A sample with a NaN or
        ``+inf`` logit gives False.

    Raises:
        TypeError: If ``dtype`` is not floating.
    """
    z = _cast(logits, dtype)
    class_dim = 1 if z.ndim > 1 else 0
    shifted = z - z.amax(dim=class_dim, keepdim=True)
    return torch.exp(shifted).sum(dim=class_dim) == 1  # Def. 3 of arXiv 2501.04697


def softmax_collapse_fraction(logits: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Fraction of samples in Softmax Collapse (the official ``softmax_collapse`` metric).

    The paper measures it on eval-mode logits of the training set.

    Args:
        logits: As in :func:`softmax_collapse_mask`.
        dtype: As in :func:`softmax_collapse_mask`.

    Returns:
        0-dim float32 tensor in ``[0, 1]`` (NaN for an empty batch).
    """
    return _fraction(softmax_collapse_mask(logits, dtype))


@torch.no_grad()
def zero_loss_fraction(
    logits: Tensor,
    target: Tensor,
    loss: CollapseLoss = "softmax",
    dtype: torch.dtype | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Fraction of samples whose cross-entropy is exactly 0 when computed in ``dtype``.

    The official ``zero_terms`` metric. It is a consequence of collapse for correctly classified
    samples, and unlike :func:`softmax_collapse_mask` it also covers StableMax, which collapses
    only at far larger logits.

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)`` scores, as in ``F.cross_entropy``.
        target: Class indices, ``(N,)`` or ``(N, d1, ...)``.
        loss: ``"softmax"`` (``F.cross_entropy``) or ``"stablemax"``
            (:func:`stablemax_cross_entropy`).
        dtype: Dtype the loss is computed in. ``None``: ``logits.dtype``; note that
            :func:`stablemax_cross_entropy` trains in float64 by default, so pass
            ``torch.float64`` to measure what that loss sees.
        ignore_index: Targets with this value are left out of the fraction (``F.cross_entropy``
            gives them a loss of exactly 0, which would otherwise count).

    Returns:
        0-dim float32 tensor in ``[0, 1]`` (NaN if every target is ignored).

    Raises:
        ValueError: If ``loss`` is not ``"softmax"`` or ``"stablemax"``.
        TypeError: If ``dtype`` is not floating or ``target`` is not an integer tensor.
    """
    check_choice("loss", loss, COLLAPSE_LOSSES)
    z = _cast(logits, dtype)
    if loss == "softmax":
        per_sample = F.cross_entropy(z, target, reduction="none", ignore_index=ignore_index)
    else:
        per_sample = stablemax_cross_entropy(
            z, target, reduction="none", ignore_index=ignore_index, dtype=z.dtype
        )
    counted = target != ignore_index
    return _fraction((per_sample == 0) & counted, counted)
