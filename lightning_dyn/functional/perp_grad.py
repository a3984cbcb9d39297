"""⊥Grad (perpGrad): keep only the part of the gradient orthogonal to the weights.

Prieto et al., "Grokking at the Edge of Numerical Stability", arXiv 2501.04697, Def. 7. Once a
model fits its training set, the gradient aligns with the weights themselves ("naive loss
minimisation", NLM): scaling the weights up scales the logits and lowers the loss without changing
any prediction, until Softmax Collapse stops learning. Removing the radial component of the
gradient removes that direction.

Two variants:

- ``"per_tensor"`` (the official ``OrthoGrad`` code): each parameter tensor, flattened, is its own
  vector ``w``; ``g_perp = g - (w·g) / (w·w + eps) w``, optionally rescaled to ``||g||``.
- ``"global"`` (the paper's Eq. 12): one projection over the concatenation of all parameters.

Elementwise work and dot products run in float32 (float64 for float64 parameters) whatever the
gradient dtype, and the per-tensor scalars derived from them in float64: ``eps = 1e-30`` is 0 in
fp16/bf16, and the projection coefficient needs more than bf16's 8 mantissa bits.

Vectorisation: tensors of at most ``SMALL_TENSOR_NUMEL`` elements are flattened together per
(device, dtype), so a model's many biases and norm scales cost a handful of kernel launches in
all; larger tensors are handled one at a time, where launch overhead is small next to the work and
no model-sized copy is made (the flat vectors of a float32 tensor are views, not copies).

Sharded parameters (``DTensor``, as FSDP2's ``fully_shard`` makes them): every rank works on its
local shard and the per-tensor dot products are all-reduced over the mesh dimensions the tensor
is sharded on (replicated dimensions hold copies and are not summed). No parameter or gradient
is gathered: each bucket costs one all-reduce of a few scalars per tensor, two with ``rescale``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from lightning_dyn._checks import check_choice
from lightning_dyn.functional._dtensor import local

PerpGradMode = Literal["per_tensor", "global"]
PERP_GRAD_MODES: tuple[str, ...] = ("per_tensor", "global")

DEFAULT_EPS = 1e-30
"""The official code's guard: it only matters when a norm is exactly 0."""

_ANALYTIC_NORM_MIN = 1e-3
"""``||g_perp||² / ||g||²`` above which the projected norm is computed, not measured: float32 dot
products are accurate to ~1e-7 relative, so the cancellation costs at most ~1e-4 there."""

SMALL_TENSOR_NUMEL = 1 << 12
"""Tensors up to this many elements share one flattened buffer (see the module docstring)."""


class _Bucket:
    """Same-(device, dtype) tensors flattened into one vector.

    Per-tensor dot products are then one ``segment_reduce`` instead of one kernel per tensor; it
    sums each segment sequentially, so it accumulates in float64. A bucket of one tensor uses
    ``torch.dot``, which is fused and blocked, as the official code does.

    Args:
        params: Tensors on one device, of one dtype.
        grads: Their dense gradients.
        indices: Position of each tensor in the caller's sequence.
    """

    def __init__(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        indices: list[int],
        groups: tuple[dist.ProcessGroup, ...] = (),
    ) -> None:
        self.groups = groups  # sum local dot products over these (DTensor shards)
        whole = [p.numel() for p in params]  # DTensor.numel() is the whole tensor's
        self.total_numel = sum(whole)
        params, grads = [local(p) for p in params], [local(g) for g in grads]
        self.grads = grads
        self.indices = indices
        self.sizes = [p.numel() for p in params]
        dtype = torch.promote_types(params[0].dtype, torch.float32)
        self.w = _flat_cat([p.detach() for p in params]).to(dtype)
        self.g = _flat_cat(self.grads).to(dtype)
        # Host-to-device copy, made once per bucket (one bucket per (device, dtype) of small
        # tensors); a lone tensor uses its Python numel and so never waits on the device.
        self.lengths = (
            torch.tensor(self.sizes, device=self.w.device) if len(params) > 1 else self.sizes[0]
        )
        # One big tensor whose flat gradient is already .grad itself (a view, same dtype): it is
        # projected in place, without the copies (see _project_in_place_).
        self.in_place = (
            not groups
            and len(params) == 1
            and self.sizes[0] > 1
            and self.g.data_ptr() == grads[0].data_ptr()
            and self.g.dtype == grads[0].dtype
        )
        # Whole-tensor sizes, for _perp_factor's one-element test (the local ones unless sharded).
        self.numels = torch.tensor(whole, device=self.w.device) if groups else self.lengths

    def dots(self, *pairs: tuple[Tensor, Tensor]) -> Tensor:
        """Per-tensor dot products of flat ``(numel,)`` vectors, float64 ``(len(pairs), n)``,
        summed over the ranks holding shards of the tensors (one all-reduce for all pairs)."""
        local = torch.stack([self._local_dots(a, b) for a, b in pairs])
        for group in self.groups:
            dist.all_reduce(local, group=group)
        return local

    def _local_dots(self, a: Tensor, b: Tensor) -> Tensor:
        if isinstance(self.lengths, int):
            return torch.dot(a, b).double().reshape(1)
        # unsafe=True skips a validation that reads the lengths back to the host (a device sync);
        # they are built from the sizes here, so they are valid.
        return torch.segment_reduce((a * b).double(), "sum", lengths=self.lengths, unsafe=True)

    def expand(self, per_tensor: Tensor) -> Tensor:
        """Broadcast a ``(n_tensors,)`` (or scalar) value to the flat layout, in the work dtype."""
        per_tensor = per_tensor.to(device=self.w.device, dtype=self.w.dtype)
        if isinstance(self.lengths, int) or per_tensor.ndim == 0:
            return per_tensor
        return torch.repeat_interleave(per_tensor, self.lengths, output_size=self.w.numel())

    def write_grads(self, flat: Tensor) -> None:
        """Copy a flat vector back into the ``.grad`` tensors, casting to their dtype."""
        chunks = flat.to(self.grads[0].dtype).split(self.sizes)
        shaped = [c.view(g.shape) for c, g in zip(chunks, self.grads, strict=True)]
        torch._foreach_copy_(self.grads, shaped)


def _shard_groups(t: Tensor) -> tuple[dist.ProcessGroup, ...]:
    """The process groups over which ``t``'s local shards add up to the whole tensor."""
    if not isinstance(t, DTensor):
        return ()
    placements = t.placements
    if any(p.is_partial() for p in placements):
        raise ValueError(
            "⊥Grad needs reduced gradients; got a DTensor with a Partial placement "
            f"{placements}: call it after the gradient reduction (on_before_optimizer_step)."
        )
    mesh = t.device_mesh
    return tuple(mesh.get_group(d) for d, p in enumerate(placements) if p.is_shard())


def _flat_cat(tensors: list[Tensor]) -> Tensor:
    if len(tensors) == 1:
        return tensors[0].reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


def _buckets(params: Iterable[Tensor]) -> list[_Bucket]:
    """Bucket the tensors that have a gradient; see the module docstring for the layout."""
    small: dict[tuple, tuple[list[Tensor], list[Tensor], list[int], tuple]] = {}
    buckets = []
    for i, p in enumerate(params):
        grad = p.grad
        if grad is None:
            continue
        if grad.layout != torch.strided:
            raise ValueError(
                f"⊥Grad and NLM cosines need dense gradients, got layout={grad.layout} for the "
                f"tensor of shape {tuple(p.shape)} at position {i}"
            )
        groups = _shard_groups(p)
        if _shard_groups(grad) != groups:
            raise ValueError(
                f"the gradient of the tensor at position {i} is sharded differently from the "
                "tensor itself; ⊥Grad needs both laid out alike (as FSDP makes them)."
            )
        if p.numel() > SMALL_TENSOR_NUMEL:
            buckets.append(_Bucket([p], [grad], [i], groups))
        else:
            key = (p.device, p.dtype, tuple(id(g) for g in groups))
            members, grads, indices, _ = small.setdefault(key, ([], [], [], groups))
            members.append(p)
            grads.append(grad)
            indices.append(i)
    buckets.extend(_Bucket(*lists) for lists in small.values())
    return buckets


def _total(parts: list[Tensor], device: torch.device) -> Tensor:
    """Sum of per-bucket partial sums, which may live on different devices."""
    return torch.cat([p.reshape(-1).to(device) for p in parts]).sum()


def _norm_ratio(gg: Tensor, pp: Tensor, eps: float) -> Tensor:
    """``||g|| / (||g_perp|| + eps)`` from squared norms: the official rescale to the old norm."""
    return gg.sqrt() / (pp.sqrt() + eps)


def _perp_factor(ww: Tensor, numel: Tensor | int, norm_ratio: Tensor | None) -> Tensor:
    """Factor applied to ``g - coef * w``, per projected vector.

    It is ``norm_ratio`` (1 without rescaling), except 0 for a one-element vector with a non-zero
    weight: there the exact projection is 0 (the gradient is all radial), while the computed one
    is rounding noise that the rescale would blow up to ``±||g||`` with a random sign.
    """
    factor = torch.ones_like(ww) if norm_ratio is None else norm_ratio
    return torch.where((ww > 0) & (numel == 1), 0.0, factor)


def _project_in_place_(w: Tensor, g: Tensor, rescale: bool, eps: float) -> None:
    """``g <- g - (w·g)/(w·w + eps) w``, rescaled to the old ``||g||``, on flat views, in place.

    For large tensors the projection is memory-bound: this reads ``w`` and ``g`` a few times and
    writes ``g`` twice, with no temporary the size of the tensor. On the CPU the projected norm
    comes from ``||g_perp||² = g·g - (w·g)²/(w·w)`` (one pass less) unless cancellation would
    cost accuracy (g within ~2° of ±w); elsewhere, where that test would need a device sync, it
    is measured.
    """
    ww, wg = torch.dot(w, w).double(), torch.dot(w, g).double()
    gg = torch.dot(g, g).double() if rescale else None
    coef = wg / (ww + eps)  # Eq. 12, one tensor at a time
    g.addcmul_(w, (-coef).to(g.dtype))
    if gg is None:
        return
    pp = gg - coef * wg
    if g.device.type != "cpu" or not pp >= _ANALYTIC_NORM_MIN * gg:
        pp = torch.dot(g, g).double()
    g.mul_(_norm_ratio(gg, pp, eps).to(g.dtype))


def _bucket_cosines(b: _Bucket, eps: float) -> Tensor:
    """Per-tensor ``cos(w, -g)``; 0 (not NaN) when either vector is 0."""
    wg, ww, gg = b.dots((b.w, b.g), (b.w, b.w), (b.g, b.g))
    return -wg / (ww.sqrt() * gg.sqrt()).clamp_min(eps)


@torch.no_grad()
def perp_grad_(
    params: Iterable[Tensor],
    mode: PerpGradMode = "per_tensor",
    rescale: bool = True,
    eps: float = DEFAULT_EPS,
) -> None:
    """Project each ``.grad`` orthogonally to its parameter, in place.

    Call it after the gradient is final (after AMP unscaling) and before clipping and the
    optimizer step; under Lightning that is ``on_before_optimizer_step``. Weight decay is not
    projected: use a decoupled-decay optimizer (the official ⊥ runs use weight decay 0).

    Tensors without a gradient are skipped. A zero weight leaves its gradient unchanged (the
    projection coefficient is ``0 / eps = 0``), a zero gradient stays zero. A one-element tensor
    with a non-zero weight gets a zero gradient: its gradient is all radial. (The official code
    returns rounding noise rescaled to ``±||g||`` there; for larger tensors whose gradient is
    nearly parallel to the weight, both return such noise when ``rescale=True``.)

    Nothing is returned: the NLM cosines are wanted only at logging steps, and
    :func:`nlm_cosines` gives them, aligned with named tensors, at the cost of one more pass.

    Args:
        params: Parameters (any iterable, a generator included) whose ``.grad`` is projected.
        mode: ``"per_tensor"`` projects each tensor against its own weights (official code);
            ``"global"`` projects the concatenated gradient against the concatenated weights (the
            paper's Eq. 12; holds a float32 copy of all gradients at once).
        rescale: Rescale the projected gradient to the norm of the original one, per tensor in
            ``"per_tensor"`` mode and globally in ``"global"`` mode. The official code does; the
            paper's Eq. 12 does not.
        eps: Added to ``w·w`` and to ``||g_perp||`` so that zero norms give no NaN.

    Raises:
        ValueError: If ``mode`` is not one of ``"per_tensor"``, ``"global"``, or a gradient is
            sparse.
    """
    check_choice("mode", mode, PERP_GRAD_MODES)
    buckets = _buckets(params)
    if mode == "per_tensor":
        for b in buckets:
            if b.in_place:
                _project_in_place_(b.w, b.g, rescale, eps)
                continue
            ww, wg, gg = b.dots((b.w, b.w), (b.w, b.g), (b.g, b.g))
            coef = wg / (ww + eps)  # Eq. 12, one tensor at a time
            g_perp = b.g - b.expand(coef) * b.w
            ratio = None
            if rescale:
                ratio = _norm_ratio(gg, b.dots((g_perp, g_perp))[0], eps)
            g_perp *= b.expand(_perp_factor(ww, b.numels, ratio))
            b.write_grads(g_perp)
        return
    if not buckets:
        return
    device = buckets[0].w.device
    sums = [b.dots((b.w, b.g), (b.w, b.w), (b.g, b.g)).sum(dim=1) for b in buckets]
    wg, ww, gg = (_total([s[k] for s in sums], device) for k in range(3))
    coef = wg / (ww + eps)  # Eq. 12 of arXiv 2501.04697
    g_perps = [b.g - b.expand(coef) * b.w for b in buckets]
    ratio = None
    if rescale:
        pp = _total([b.dots((g, g)) for b, g in zip(buckets, g_perps, strict=True)], device)
        ratio = _norm_ratio(gg, pp, eps)
    factor = _perp_factor(ww, sum(b.total_numel for b in buckets), ratio)
    for b, g in zip(buckets, g_perps, strict=True):
        g *= b.expand(factor)
        b.write_grads(g)


@torch.no_grad()
def nlm_cosine(param: Tensor, grad: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Cosine between a weight and the negative gradient, over the flattened tensors.

    The naive-loss-minimisation alignment of arXiv 2501.04697 (Fig. 5): near 1 means the step
    mostly scales the weights up. Measure it on the raw gradient, before :func:`perp_grad_`.

    Args:
        param: Weight tensor.
        grad: Gradient of the loss with respect to ``param`` (same number of elements).
        eps: Lower bound on ``||w|| ||g||``; a zero weight or gradient gives 0, not NaN.

    Returns:
        A 0-dim float64 tensor on ``param``'s device.
    """
    bucket = _Bucket([param], [grad.to(param.device)], [0], _shard_groups(param))
    return _bucket_cosines(bucket, eps)[0]


@torch.no_grad()
def nlm_cosines(params: Sequence[Tensor], eps: float = DEFAULT_EPS) -> Tensor:
    """:func:`nlm_cosine` of every tensor against its ``.grad``, vectorised as :func:`perp_grad_`.

    Returns one tensor so that logging costs one device-to-host copy (``.tolist()``).

    Args:
        params: Tensors that all have a dense ``.grad``. To log by name, filter first:
            ``named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]``,
            then pass ``[p for _, p in named]``.
        eps: Lower bound on ``||w|| ||g||``; a zero weight or gradient gives 0, not NaN.

    Returns:
        A float64 tensor of shape ``(len(params),)``, in the order of ``params``, on the first
        tensor's device (empty and on the CPU for no tensors).

    Raises:
        ValueError: If a tensor has no gradient or a sparse one.
    """
    missing = [i for i, p in enumerate(params) if p.grad is None]
    if missing:
        raise ValueError(
            f"nlm_cosines needs a .grad on every tensor; positions {missing} have none"
        )
    device = params[0].device if params else torch.device("cpu")
    out = torch.zeros(len(params), dtype=torch.float64, device=device)
    for b in _buckets(params):
        out[b.indices] = _bucket_cosines(b, eps).to(device)
    return out
