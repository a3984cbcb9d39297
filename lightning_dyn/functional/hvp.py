"""Hessian-vector products of a model's loss on fixed batches, and a safe measuring mode.

Curvature measurements (sharpness, trace, spectral density; see ``functional.lanczos``) only
ever need ``v -> H v``, where ``H`` is the Hessian of a scalar loss with respect to the model's
parameters: one product costs about three forward-backward passes and no ``dim x dim`` matrix is
formed. :class:`HessianOperator` provides that product two ways that agree to rounding:

- ``"double_backward"``: ``g = autograd.grad(loss, params, create_graph=True)``, then
  ``H v = autograd.grad(g · v, params)``. Works with any module, including those whose forward
  mutates state.
- ``"forward_over_reverse"``: ``torch.func.jvp(torch.func.grad(f), (params,), (v,))`` on a
  ``torch.func.functional_call`` of the module. Avoids building a double-backward graph, but
  ``torch.func`` refuses modules that mutate buffers in the forward pass (BatchNorm in train mode).

It is built to avoid the pitfalls of the usual tools (PyHessian, hand-written loops):

- ``.grad`` of the parameters is never read or written (``autograd.grad`` / ``torch.func`` only),
  so a measurement in the middle of training cannot corrupt the optimiser's gradients;
- parameters that the loss does not use get a zero block instead of an error;
- the loss over several batches is accumulated batch by batch, so only one batch's graph is alive
  at a time and memory does not grow with the probe set;
- autocast is disabled inside: curvature in reduced precision is mostly rounding noise.

:func:`measuring` puts a model in eval mode for a measurement (BatchNorm uses and keeps its
running statistics; dropout off, so the loss is a deterministic function of the parameters) and
restores every submodule's own mode afterwards. The spectral functions in ``functional.lanczos``
apply it themselves when given a :class:`HessianOperator`; :meth:`HessianOperator.matvec` alone
uses the model's current mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from lightning_dyn._checks import (
    check_callable,
    check_choice,
    check_float_dtype,
    check_vector,
    shape_of,
)
from lightning_dyn.functional._autocast import autocast_off

HVPMethod = Literal["double_backward", "forward_over_reverse"]
HVP_METHODS: tuple[str, ...] = get_args(HVPMethod)

BatchLossFn = Callable[[Callable[..., Tensor], Any], Tensor]
"""``(forward, batch) -> scalar loss``: a model's loss on one batch, ``forward`` running the model.
A :data:`~lightning_dyn.functional.losses.LossFn` on logits becomes one with
``lambda forward, batch: loss(forward(batch[0]), batch[1])``."""


@contextlib.contextmanager
def measuring(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for a curvature measurement; every submodule's own mode restored afterwards.

    In eval mode BatchNorm normalises with its running statistics and does not update them, and
    dropout is off, so the loss is a fixed function of the parameters whose Hessian is well
    defined. On exit each submodule gets back the ``training`` flag it had on entry (not the
    root's flag: a submodule frozen in eval mode stays in eval mode), also when the body raises.

    Args:
        model: The module to measure.

    Yields:
        ``model``, in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def _batch_size(batch: Any) -> int | None:
    """Number of examples in a batch, or ``None`` when the batch does not tell."""
    first = batch
    if isinstance(batch, Mapping):
        first = next(iter(batch.values()), None)
    elif isinstance(batch, Sequence) and not isinstance(batch, str | bytes):
        first = batch[0] if len(batch) else None
    if isinstance(first, Tensor):
        return int(first.shape[0]) if first.ndim else None
    try:
        return len(first)  # type: ignore[arg-type]
    except TypeError:
        return None


class HessianOperator:
    """``v -> H v`` for the Hessian of a model's mean loss over fixed batches.

    The loss is ``L(θ) = Σ_b w_b loss_fn(forward, batch_b)`` with ``w_b = n_b / Σ n`` where ``n_b``
    is a batch's size (``len`` of the batch for a tensor, of its first element for a tuple or
    list, of its first value for a dict), or equal weights ``1/B`` if any batch has no size. With
    a ``loss_fn`` that averages over its batch, ``L`` is then the mean loss over all examples;
    empty batches (weight 0) are skipped.

    ``H v`` is accumulated batch by batch: one batch's graph is alive at a time. The batches must
    already be on the parameters' device. Vectors are flattened over ``params`` in order (see
    :meth:`flatten` and :meth:`unflatten`); for each product ``v`` is cast to every parameter's
    dtype and device, and ``H v`` is returned in ``dtype`` on ``device``. The model's mode is used
    as it is: wrap calls in :func:`measuring` (the functions of ``functional.lanczos`` do).

    Attributes:
        model: The module.
        params: The tensors differentiated, in order.
        dim: Total number of elements of ``params``: the Hessian is ``dim x dim``.
        device: Device of the first parameter; vectors in and out live there.
        dtype: Dtype of the returned products.
        num_hvps: Number of :meth:`matvec` calls so far (one per call, whatever the number of
            batches).

    Args:
        model: The module, eager (not compiled, not wrapped in DDP/FSDP).
        loss_fn: ``loss_fn(forward, batch) -> Tensor``, a scalar. ``forward`` runs the model with
            the parameters being differentiated, e.g.
            ``lambda forward, batch: F.cross_entropy(forward(batch[0]), batch[1])``. It is the
            module itself with ``"double_backward"``, and with ``"forward_over_reverse"``
            ``forward(*args, **kwargs)`` is ``torch.func.functional_call(model, {buffers and
            params}, args, kwargs)``.
        batches: The batches, a non-empty sequence (an iterable is read once, into a list).
        params: The tensors to differentiate, each requiring a gradient; ``None`` takes every
            parameter of ``model`` that requires a gradient, in ``model.parameters()`` order,
            each tied parameter once. With ``"forward_over_reverse"`` they must be parameters of
            ``model``.
        method: ``"double_backward"`` or ``"forward_over_reverse"`` (see the module docstring).
        dtype: Floating dtype of the returned products (float32 by default; float64 for
            reference checks with a float64 model).
        keep_graph: With ``"double_backward"``, keep each batch's gradient graph after the
            first product and reuse it, so later products cost one backward pass instead of a
            forward and two backward passes (about half the time). Memory: every batch's graph
            stays alive until :meth:`release`. The parameters must not change in between.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: BatchLossFn,
        batches: Iterable[Any],
        params: Iterable[Tensor] | None = None,
        method: HVPMethod = "double_backward",
        dtype: torch.dtype = torch.float32,
        keep_graph: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        check_callable("loss_fn", loss_fn, optional=False)
        check_choice("method", method, HVP_METHODS)
        check_float_dtype("dtype", dtype)
        batches = list(batches)
        if not batches:
            raise ValueError("batches must contain at least one batch; got none.")
        chosen = (p for p in model.parameters() if p.requires_grad) if params is None else params
        unique: dict[int, Tensor] = {}
        for p in chosen:
            if not isinstance(p, Tensor) or not p.requires_grad or not p.is_floating_point():
                what = f"a {p.dtype} tensor" if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(
                    f"params must hold floating tensors that require a gradient; got {what}"
                    + (" with requires_grad=False." if isinstance(p, Tensor) else ".")
                )
            unique.setdefault(id(p), p)
        if not unique:
            raise ValueError("params must contain at least one tensor that requires a gradient.")
        self.model = model
        self.loss_fn = loss_fn
        self.batches = batches
        self.params: list[Tensor] = list(unique.values())
        self.method = method
        self.dtype = dtype
        self.device = self.params[0].device
        self.dim = sum(p.numel() for p in self.params)
        self.num_hvps = 0
        if keep_graph and method != "double_backward":
            raise ValueError(
                f"keep_graph=True applies to method='double_backward' only; got method={method!r}."
            )
        self.keep_graph = bool(keep_graph)
        self._kept: dict[int, list[Tensor | None]] = {}
        self._sizes = [p.numel() for p in self.params]
        sizes = [_batch_size(b) for b in batches]
        if all(s is not None for s in sizes) and sum(sizes) > 0:  # type: ignore[arg-type]
            total = sum(sizes)  # type: ignore[arg-type]
            self._weights = [s / total for s in sizes]  # type: ignore[operator]
        else:
            self._weights = [1.0 / len(batches)] * len(batches)
        self._names: list[str] = []
        if method == "forward_over_reverse":
            names = {id(p): name for name, p in model.named_parameters()}
            missing = [i for i, p in enumerate(self.params) if id(p) not in names]
            if missing:
                raise ValueError(
                    f"params must be parameters of model with method='forward_over_reverse' "
                    f"(torch.func.functional_call replaces them by name); params at positions "
                    f"{missing} are not."
                )
            self._names = [names[id(p)] for p in self.params]

    # --- vectors ---------------------------------------------------------------------------------

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Concatenate one tensor per parameter into a ``(dim,)`` vector in ``dtype``.

        Args:
            tensors: Tensors shaped like ``params``, in the same order.

        Returns:
            A new ``(dim,)`` tensor on ``device``.
        """
        tensors = list(tensors)
        shapes = [tuple(p.shape) for p in self.params]
        got = [shape_of(t) for t in tensors]
        if got != shapes:
            raise ValueError(f"tensors must have the shapes of params, {shapes}; got {got}.")
        return torch.cat([t.reshape(-1).to(self.device, self.dtype) for t in tensors])

    def unflatten(self, vec: Tensor) -> list[Tensor]:
        """Split a ``(dim,)`` vector (e.g. an eigenvector) into one tensor per parameter.

        Args:
            vec: A ``(dim,)`` tensor.

        Returns:
            Views of ``vec`` shaped like ``params``, in order (``vec``'s dtype and device).
        """
        check_vector("vec", vec, self.dim)
        pieces = vec.split(self._sizes)
        return [x.view(p.shape) for x, p in zip(pieces, self.params, strict=True)]

    # --- products --------------------------------------------------------------------------------

    def matvec(self, v: Tensor) -> Tensor:
        """``H v``.

        Args:
            v: A ``(dim,)`` tensor (any float dtype and device; cast per parameter).

        Returns:
            ``H v``, a detached ``(dim,)`` tensor in ``dtype`` on ``device``.
        """
        check_vector("v", v, self.dim)
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "HessianOperator.matvec cannot differentiate under torch.inference_mode() "
                "(Lightning's validation and test loops); measure in a training hook."
            )
        vs = [
            x.reshape(p.shape).to(p.device, p.dtype)
            for x, p in zip(v.split(self._sizes), self.params, strict=True)
        ]
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        product = self._double_backward if self.method == "double_backward" else self._fwd_rev
        with torch.enable_grad(), autocast_off(self.device):
            for index, (batch, weight) in enumerate(zip(self.batches, self._weights, strict=True)):
                if weight == 0.0:
                    continue  # an empty batch: its mean loss would be NaN
                hv = product(batch, vs, index)
                flat = torch.cat(
                    [
                        torch.zeros(p.numel(), dtype=self.dtype, device=self.device)
                        if h is None
                        else h.detach().reshape(-1).to(self.device, self.dtype)
                        for h, p in zip(hv, self.params, strict=True)
                    ]
                )
                out.add_(flat, alpha=weight)
        self.num_hvps += 1
        return out

    __call__ = matvec

    def _loss(self, forward: Callable[..., Tensor], batch: Any) -> Tensor:
        loss = self.loss_fn(forward, batch)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar tensor; got {shape_of(loss)}.")
        return loss

    def release(self) -> None:
        """Free the gradient graphs kept by ``keep_graph``."""
        self._kept.clear()

    def _double_backward(self, batch: Any, vs: list[Tensor], index: int) -> Sequence[Tensor | None]:
        grads = self._kept.get(index)
        if grads is None:
            loss = self._loss(self.model, batch)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            if self.keep_graph:
                self._kept[index] = list(grads)
        # A gradient that is None (unused parameter) or has no graph (loss linear in it)
        # contributes nothing to H v.
        terms = [(g * x).sum() for g, x in zip(grads, vs, strict=True) if g is not None]
        terms = [t for t in terms if t.requires_grad]
        if not terms:
            return [None] * len(self.params)
        return torch.autograd.grad(
            sum(terms), self.params, allow_unused=True, retain_graph=self.keep_graph
        )

    def _fwd_rev(self, batch: Any, vs: list[Tensor], index: int) -> Sequence[Tensor | None]:
        buffers = dict(self.model.named_buffers())
        model, names = self.model, self._names

        def loss_of(*params: Tensor) -> Tensor:
            state = {**buffers, **dict(zip(names, params, strict=True))}

            def forward(*args: Any, **kwargs: Any) -> Tensor:
                return torch.func.functional_call(model, state, args, kwargs)

            return self._loss(forward, batch)

        argnums = tuple(range(len(self.params)))
        grad = torch.func.grad(loss_of, argnums=argnums)
        primals = tuple(p.detach() for p in self.params)
        _, hv = torch.func.jvp(grad, primals, tuple(vs))
        return hv

    def __repr__(self) -> str:
        return (
            f"HessianOperator(dim={self.dim}, method={self.method!r}, dtype={self.dtype}, "
            f"batches={len(self.batches)}, num_hvps={self.num_hvps})"
        )
