"""How a monitor runs its own passes over probe data: as training runs them, and changing nothing.

Four rules every monitor follows (Lightning facts of a callback that runs forward passes):

- **The training's precision.** Under ``precision="64-true"`` or ``"bf16-true"`` the parameters
  are float64 / bfloat16, so probe inputs must be converted as Lightning converts a training
  batch: :func:`training_batch` applies the precision plugin's ``convert_input``, the module's
  ``on_before_batch_transfer`` hook and the strategy's ``batch_to_device`` (which runs
  ``transfer_batch_to_device`` and ``on_after_batch_transfer``), in Lightning's order. Mixed
  precision (``bf16-mixed``, ``16-mixed``) leaves the weights in float32 and the monitors' own
  passes run outside autocast, in float32: a measurement, not a training step.
- **Every module's own mode.** :func:`probe_pass` puts the model in eval mode and gives each
  submodule back its own ``training`` flag afterwards (``functional.measuring``), not the root's:
  a submodule the user froze in eval mode (a BatchNorm backbone) stays frozen.
- **Eager submodules.** Inside a monitor's pass every ``torch.compile``d submodule runs its
  original eager module (the same parameters): AOTAutograd, behind every compile backend but
  ``"eager"``, has no double backward, and hooks on modules inside a compiled region run only
  while dynamo traces it. The compiled training step is untouched.
- **Differentiable attention.** With ``differentiable=True`` (second derivatives, forward-mode
  AD), ``scaled_dot_product_attention`` is restricted to its math kernel: the fused CPU/GPU
  kernels that ``nn.MultiheadAttention`` and ``nn.Transformer`` pick have no double backward and
  no forward-mode AD.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_dyn.functional._dtensor import whole as gather_whole
from lightning_dyn.functional.hvp import measuring


def training_batch(trainer: pl.Trainer, batch: Any) -> Any:
    """``batch`` converted and moved as Lightning does a training batch (see module docstring)."""
    batch = trainer.precision_plugin.convert_input(batch)
    module = trainer.lightning_module
    if module is not None:
        batch = module.on_before_batch_transfer(batch, 0)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=0)


@contextlib.contextmanager
def probe_pass(model: nn.Module, differentiable: bool = False) -> Iterator[nn.Module]:
    """Eval mode and eager submodules for a monitor's pass, all restored after (see above)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(measuring(model))
        stack.enter_context(eager_submodules(model))
        if differentiable:
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield model


def _is_compiled(module: nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod")


@contextlib.contextmanager
def eager_submodules(model: nn.Module) -> Iterator[nn.Module]:
    """Every ``torch.compile``d submodule replaced by its eager original, put back after."""
    modules = dict(model.named_modules())
    swaps = []
    for name, module in modules.items():
        if name and _is_compiled(module):
            parent_name, _, child = name.rpartition(".")
            swaps.append((modules[parent_name] if parent_name else model, child, module))
    for parent, child, module in swaps:
        parent._modules[child] = module._orig_mod
    try:
        yield model
    finally:
        for parent, child, module in reversed(swaps):
            parent._modules[child] = module


def whole(t: Tensor | None) -> Tensor | None:
    """A parameter as one tensor: an FSDP2 shard (``DTensor``) gathered (a collective: every rank
    calls it), anything else as it is; detached."""
    return None if t is None else gather_whole(t).detach()


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are FSDP2 shards (``DTensor``)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def probe_gradients(
    module: nn.Module, loss: Tensor, params: list[Tensor]
) -> tuple[list[Tensor | None], bool]:
    """``∂loss/∂params`` of a monitor's probe loss, leaving every ``.grad`` as it was.

    Returns the gradients and whether they are already reduced over the ranks. Without sharding
    this is ``torch.autograd.grad``: this rank's gradient, not reduced. Under FSDP2 the sharded
    parameters are not in the autograd graph (FSDP's hooks reduce-scatter the gradient of the
    gathered weights into ``.grad``), so the loss is back-propagated with every parameter's
    ``.grad`` set aside and put back after: the result is the average over the ranks of each
    rank's gradient, sharded like the parameters. Every rank must call this, once per call on
    the others (the backward is a collective).
    """
    if not is_sharded(module):
        return list(torch.autograd.grad(loss, params, allow_unused=True)), False
    every = list(module.parameters())
    saved = [p.grad for p in every]
    for p in every:
        p.grad = None
    try:
        loss.backward()
        return [p.grad for p in params], True
    finally:
        for p, grad in zip(every, saved, strict=True):
            p.grad = grad
