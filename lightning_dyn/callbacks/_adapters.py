"""The default adapters between a user's batches and a monitor, and their error messages.

Monitors run their own forward passes on the user's batches. By default they assume a batch
``(inputs, targets, ...)`` and a module whose ``forward(inputs)`` returns logits; anything else
needs an adapter (``logits_fn`` / ``loss_fn``). The defaults here check that assumption and, where
it does not hold, say which argument to pass instead of failing deep inside torch (``KeyError:
0`` for a dict batch, ``index 1 is out of bounds`` for a bare tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch.nn.functional as F
from torch import Tensor

from lightning_dyn.functional.losses import ClassificationLoss, classification_loss

LogitsFn = Callable[[pl.LightningModule, Any], tuple[Tensor, Tensor]]
"""``(pl_module, batch) -> (logits, targets)``."""

LOGITS_FN_SIGNATURE = "(pl_module, batch) -> (logits, targets)"


def describe_batch(batch: Any) -> str:
    """A short description of a batch's structure for error messages."""
    if isinstance(batch, Tensor):
        return f"a bare tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return f"a {type(batch).__name__} with keys {list(batch)[:8]}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)} element(s)"
    return f"a {type(batch).__name__}"


def inputs_and_targets(batch: Any, owner: str, argument: str, example: str) -> tuple[Any, Tensor]:
    """``(batch[0], batch[1])`` of an ``(inputs, targets, ...)`` batch, or a ``TypeError`` that
    names the adapter ``argument`` of ``owner`` to pass (``example`` shows one)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    raise TypeError(
        f"{owner}: the default {argument} expects batches (inputs, targets, ...) with a target "
        f"tensor second; got {describe_batch(batch)}. Pass {argument}= to say how to read "
        f"your batches, e.g. {example}."
    )


def call_forward(forward: Callable[..., Any], inputs: Any, owner: str, argument: str) -> Tensor:
    """``forward(inputs)``, with a hint naming ``argument`` when the call does not fit."""
    try:
        outputs = forward(inputs)
    except TypeError as err:  # e.g. forward(inputs, targets): a second positional argument
        raise TypeError(
            f"{owner}: the default {argument} calls the module's forward(batch[0]) and that call "
            f"failed ({err}). If your forward takes other arguments, pass {argument}= to call it "
            "the way your training_step does."
        ) from err
    if not isinstance(outputs, Tensor):
        raise TypeError(
            f"{owner}: the default {argument} needs forward(batch[0]) to return a logits tensor; "
            f"got {type(outputs).__name__}. Pass {argument}= to pick the logits out."
        )
    return outputs


class ForwardFirstInput:
    """Default ``logits_fn``: a batch ``(inputs, targets, ...)`` and ``pl_module(inputs)``.

    Args:
        owner: the monitor's name, for error messages.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def __call__(self, pl_module: pl.LightningModule, batch: Any) -> tuple[Tensor, Tensor]:
        example = "logits_fn=lambda module, batch: (module(batch['x']), batch['y'])"
        inputs, targets = inputs_and_targets(batch, self.owner, "logits_fn", example)
        return call_forward(pl_module, inputs, self.owner, "logits_fn"), targets

    def __repr__(self) -> str:
        return "ForwardFirstInput()"


def classes_last(logits: Tensor, targets: Tensor, owner: str) -> Tensor:
    """Logits shaped ``(*targets.shape, K)``: one row of ``K`` class scores per target.

    Accepts ``(N, K)`` with ``(N,)``, and for per-position targets (language models, taggers)
    ``(N, T, K)`` (classes last), ``(N, K, T)`` (``F.cross_entropy``'s layout) or logits already
    flattened to ``(N*T, K)``, with targets ``(N, T)``. Classes last wins when both fit.
    """
    shape = tuple(targets.shape)
    if logits.ndim == len(shape) + 1 and tuple(logits.shape[:-1]) == shape:
        return logits
    if (
        logits.ndim == len(shape) + 1
        and len(shape) >= 2
        and (logits.shape[0], *logits.shape[2:]) == shape
    ):
        return logits.movedim(1, -1)
    if logits.ndim == 2 and len(shape) >= 2 and logits.shape[0] == targets.numel():
        return logits.reshape(*shape, logits.shape[1])
    raise ValueError(
        f"{owner}: logits of shape {tuple(logits.shape)} do not match targets of shape "
        f"{shape}: expected (N, K) with (N,), or one row of K logits per target position, "
        "(N, T, K), (N, K, T) or (N*T, K) with (N, T). Pass logits_fn= to return them so."
    )


def per_position(
    logits: Tensor, targets: Tensor, owner: str, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """``(M, K)`` logits and ``(M,)`` targets, one row per classified position.

    Per-token targets (language models, taggers) count each position as one example; positions
    whose target is ``ignore_index`` (padding, as in ``F.cross_entropy``) are dropped.
    """
    shaped = classes_last(logits, targets, owner)
    flat_logits, flat_targets = shaped.reshape(-1, shaped.shape[-1]), targets.reshape(-1)
    keep = flat_targets != ignore_index
    if not bool(keep.all()):
        flat_logits, flat_targets = flat_logits[keep], flat_targets[keep]
    return flat_logits, flat_targets


def per_example_cross_entropy(logits: Tensor, targets: Tensor, owner: str) -> Tensor:
    """Cross-entropy without reduction, shaped like ``targets``, for any layout of
    :func:`classes_last`."""
    scores = classes_last(logits, targets, owner).movedim(-1, 1)  # F.cross_entropy's layout
    return F.cross_entropy(scores, targets, reduction="none")


class LossOfFirstInput:
    """``loss_fn(forward, batch)`` of ``SharpnessMonitor`` from a registry loss, for batches
    ``(inputs, targets)``: the loss (mean over examples, or target positions) of
    ``forward(inputs)``, for any logits layout of :func:`classes_last`.

    Args:
        owner: the monitor's name, for error messages.
        name: a name of :data:`~lightning_dyn.functional.CLASSIFICATION_LOSSES`.
    """

    def __init__(self, owner: str, name: ClassificationLoss) -> None:
        self.owner, self.name = owner, name
        self.loss = classification_loss(name, "loss_fn")

    def __call__(self, forward: Callable[..., Tensor], batch: Any) -> Tensor:
        example = "loss_fn=lambda forward, batch: F.cross_entropy(forward(batch['x']), batch['y'])"
        inputs, targets = inputs_and_targets(batch, self.owner, "loss_fn", example)
        logits = classes_last(
            call_forward(forward, inputs, self.owner, "loss_fn"), targets, self.owner
        )
        return self.loss(logits.movedim(-1, 1), targets)  # F.cross_entropy's layout

    def __repr__(self) -> str:
        return f"LossOfFirstInput({self.name!r})"
