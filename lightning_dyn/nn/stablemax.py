"""StableMax as ``nn.Module``s: a drop-in loss for ``nn.CrossEntropyLoss`` and a classifier head.

Prieto et al., "Grokking at the Edge of Numerical Stability", arXiv 2501.04697, Def. 4. Both
classes are thin wrappers over :mod:`lightning_dyn.functional.stablemax`, which holds the maths
(and the reasons for computing it as ``softmax(sign(x) * log1p(|x|))``); what they add is that
the arguments are checked once, when the module is built, instead of at the first training step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_dyn._checks import check_choice, check_int, check_positive_int
from lightning_dyn.functional.stablemax import (
    REDUCTIONS,
    Reduction,
    stablemax,
    stablemax_cross_entropy,
)

# The floating dtypes ``log_softmax`` supports on CPU and CUDA, widest first.
LOSS_DTYPES: tuple[torch.dtype, ...] = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


class StableMaxCrossEntropyLoss(nn.Module):
    """``-log StableMax(z)_y``: a drop-in for ``nn.CrossEntropyLoss`` with class-index targets.

    Softmax cross-entropy lets a classifier that already fits its training set keep lowering the
    loss by scaling its logits up, until ``exp`` absorbs every wrong class and the gradient is
    exactly zero (Softmax Collapse, arXiv 2501.04697). StableMax grows only linearly in the logit,
    so the same loss keeps a gradient that decays polynomially in the logit gap.

    Accepts the shapes ``nn.CrossEntropyLoss`` accepts (``(N, C)``, ``(C,)``, ``(N, C, d1, ...)``)
    and has the same ``reduction`` and ``ignore_index`` semantics. Class-probability targets,
    ``weight`` and ``label_smoothing`` are not supported. The loss is returned in the logits'
    dtype; ``dtype`` is only the precision it is computed in.

    Args:
        reduction: ``"none"``, ``"mean"`` (over the non-ignored targets) or ``"sum"``.
        ignore_index: Target value that contributes no loss and no gradient.
        dtype: Floating dtype of the computation. float64 by default, as in the paper's runs: the
            backward pass then keeps correct-class gradients that float32 would round to 0,
            for one float64 copy of the logits. ``torch.float32`` reproduces the later upstream
            default.

    Raises:
        ValueError: If ``reduction``, ``ignore_index`` or ``dtype`` is not one of the allowed
            values.
    """

    def __init__(
        self,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        check_int("ignore_index", ignore_index, note=" (a class index)")
        check_choice("dtype", dtype, LOSS_DTYPES)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.dtype = dtype

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss of ``input`` logits (class dim 1) against integer ``target`` class indices."""
        return stablemax_cross_entropy(
            input, target, self.reduction, ignore_index=self.ignore_index, dtype=self.dtype
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, dtype={self.dtype}"


class StableMaxHead(nn.Module):
    """A linear classifier head whose probabilities and loss are StableMax, not softmax.

    Keeping the output layer, the loss and the probabilities in one object avoids the easy
    mistake of training with StableMax and reporting ``softmax(logits)`` as confidences: the two
    rank classes identically (``s`` is increasing, so ``logits.argmax`` is the prediction) but
    give very different probabilities. ``forward`` returns raw logits, so the head also works
    with any other loss.

    ``probs`` and ``loss`` compute in ``dtype`` and return in the logits' dtype, as
    ``F.softmax`` and ``F.cross_entropy`` do: the extra precision matters inside the
    normalisation and the backward pass, and rounding the result once keeps float32 code
    float32 (no silent promotion of whatever the outputs are combined with).

    Args:
        in_features: Size of each input feature vector.
        num_classes: Number of classes (logits per input).
        bias: Whether the linear layer has a bias.
        dtype: Floating dtype ``probs`` and ``loss`` are computed in (default float64, see
            :class:`StableMaxCrossEntropyLoss`). Not the parameters' dtype: ``linear`` is
            created in torch's default dtype; move it with ``.to(...)`` as any module.

    Attributes:
        linear: The ``nn.Linear(in_features, num_classes)`` producing the logits; initialise it
            as you would any linear layer (e.g. ``nn.init.zeros_(head.linear.weight)``).

    Raises:
        ValueError: If ``in_features`` or ``num_classes`` is not a positive int, or ``dtype`` is
            not one of the allowed floating dtypes.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = True,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("num_classes", num_classes)
        check_choice("dtype", dtype, LOSS_DTYPES)
        self.linear = nn.Linear(in_features, num_classes, bias=bias)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(..., num_classes)`` of features ``x`` ``(..., in_features)``."""
        return self.linear(x)

    def probs(self, logits: Tensor) -> Tensor:
        """StableMax probabilities ``s(z_i) / sum_j s(z_j)`` over the last dim of ``logits``.

        Args:
            logits: Output of :meth:`forward`, shape ``(..., num_classes)``.

        Returns:
            Probabilities of the shape and dtype of ``logits``; each row sums to 1 up to the
            rounding of that dtype.
        """
        return stablemax(logits.to(self.dtype), dim=-1).to(logits.dtype)

    def loss(
        self,
        logits: Tensor,
        target: Tensor,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
    ) -> Tensor:
        """StableMax cross-entropy of ``logits`` ``(N, num_classes)`` against class indices.

        Args:
            logits: Output of :meth:`forward`, shape ``(N, num_classes)`` or ``(num_classes,)``.
            target: Integer class indices, shape ``(N,)`` or ``()``.
            reduction: ``"none"``, ``"mean"`` or ``"sum"``.
            ignore_index: Target value that contributes no loss and no gradient.

        Returns:
            The loss in ``logits.dtype``: a scalar, or per sample for ``"none"``.
        """
        return stablemax_cross_entropy(
            logits, target, reduction, ignore_index=ignore_index, dtype=self.dtype
        )

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"
