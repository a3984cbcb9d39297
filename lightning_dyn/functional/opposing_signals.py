"""Outliers with opposing signals: per-example losses, loss changes, group statistics.

Rosenfeld & Risteski, "Outliers with Opposing Signals Have an Outsized Effect on Neural Network
Optimization", arXiv 2311.04163. Paired groups of examples with a large, consistent feature pull
the weights in opposite directions; as the network sharpens, the two groups' losses oscillate in
antiphase. The pieces here are the measurements such a detector needs:

- ``per_example_loss`` on a fixed probe set, and ``top_loss_changes`` between two evaluations (the
  paper ranks examples by ``l_i(θ_{t+1}) - l_i(θ_t)``);
- ``group_losses`` (mean loss per group id) and ``antiphase_correlation`` of two groups' loss
  changes over a window;
- ``mean_loss_gradient`` and ``group_gradient_cosine`` (do the groups' gradients oppose?), with
  ``sketch_gradient`` as a random projection for models too large to hold two gradients;
- ``direction_alignment``: how much ``g_A - g_B`` lies along a given direction (for example the
  top Hessian eigenvector).

Gradients and directions are given either as a sequence of tensors (one per parameter) or as one
tensor; both are read as the concatenation of their flattened elements. Dot products accumulate
in float64 one tensor at a time, so no model-sized copy is made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dyn._checks import check_int, check_positive_int, check_seed, check_vector
from lightning_dyn.functional.losses import LossFn

GradLike = Tensor | Sequence[Tensor]

DEFAULT_SKETCH_BLOCK_NUMEL = 1 << 22
"""Largest random block (elements) generated at once by ``sketch_gradient`` (16 MiB in float32)."""


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape; got {tuple(a.shape)} and "
            f"{tuple(b.shape)}."
        )


@torch.no_grad()
def per_example_loss(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    batch_size: int | None = None,
) -> Tensor:
    """Loss of each example of a probe set, without building a graph.

    The model's mode is left as it is: call ``model.eval()`` first, since BatchNorm and dropout
    make loss changes noisy (and BatchNorm in train mode would update its running statistics).

    Args:
        model: Maps ``inputs`` (or a chunk of them) to the predictions ``loss_fn`` expects.
        inputs: Probe inputs, examples along dimension 0.
        targets: Probe targets, examples along dimension 0.
        loss_fn: Called as ``loss_fn(outputs, targets, reduction="none")``; must return one loss
            per example (any extra dimensions are averaged).
        batch_size: Evaluate at most this many examples at once; ``None`` evaluates all at once.

    Returns:
        A float ``(N,)`` tensor of per-example losses, ``N = len(inputs)``.
    """
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    n = inputs.shape[0]
    if targets.shape[0] != n:
        raise ValueError(
            f"inputs and targets must have the same number of examples; got {n} and "
            f"{targets.shape[0]}."
        )
    step = n if batch_size is None or n == 0 else batch_size
    chunks = []
    for start in range(0, n, max(step, 1)):
        rows = slice(start, start + step)
        chunks.append(losses_per_example(model(inputs[rows]), targets[rows], loss_fn))
    if not chunks:
        return torch.empty(0, device=inputs.device)
    return torch.cat(chunks)


def losses_per_example(
    outputs: Tensor, targets: Tensor, loss_fn: LossFn = F.cross_entropy
) -> Tensor:
    """``(N,)`` losses of ``N`` examples' outputs: ``loss_fn(outputs, targets, reduction="none")``
    with any extra (token, pixel) dimensions averaged, as :func:`mean_per_example` does."""
    return mean_per_example(loss_fn(outputs, targets, reduction="none"))


def mean_per_example(losses: Tensor) -> Tensor:
    """One loss per example from ``reduction="none"`` losses, ``(N, ...)`` -> ``(N,)``.

    Token- or pixel-level losses are averaged over their extra dimensions, like the mean-reduced
    loss; ``(N,)`` losses are returned as they are.
    """
    return losses.reshape(losses.shape[0], -1).mean(dim=1) if losses.ndim > 1 else losses


def top_loss_changes(before: Tensor, after: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Examples whose loss rose most and fell most between two evaluations.

    Args:
        before: ``(N,)`` per-example losses at the earlier step.
        after: ``(N,)`` per-example losses at the later step, same examples in the same order.
        k: How many examples to return in each direction, ``1 <= k <= N``.

    Returns:
        ``(rising, falling)``: ``(k,)`` index tensors of the ``k`` largest increases of
        ``after - before``, largest first, and of the ``k`` largest decreases, largest first.
    """
    check_vector("before", before)
    check_vector("after", after)
    _check_same_shape("before", before, "after", after)
    n = before.shape[0]
    check_int("k", k, 1, n, note=" (the number of examples)")
    delta = after - before
    rising = torch.topk(delta, k, largest=True, sorted=True).indices
    falling = torch.topk(delta, k, largest=False, sorted=True).indices
    return rising, falling


def group_losses(losses: Tensor, groups: Tensor, num_groups: int | None = None) -> Tensor:
    """Mean loss of each group of examples.

    Args:
        losses: ``(N,)`` per-example losses.
        groups: ``(N,)`` integer group id of each example, in ``[0, num_groups)``.
        num_groups: Number of groups; ``None`` uses ``groups.max() + 1`` (a device sync).

    Returns:
        A ``(num_groups,)`` tensor of mean losses, in float32 or the float dtype of ``losses`` if
        wider. An empty group gets NaN, not 0: a loss of 0 would read as a perfectly fit group,
        and NaN propagates into any statistic that uses it instead of biasing it silently.
    """
    check_vector("losses", losses)
    check_vector("groups", groups)
    _check_same_shape("losses", losses, "groups", groups)
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise ValueError(f"groups must be an integer tensor; got dtype={groups.dtype}.")
    if num_groups is None:
        num_groups = int(groups.max()) + 1 if groups.numel() else 0
    else:
        check_positive_int("num_groups", num_groups)
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
        raise ValueError(
            f"groups must hold ids in [0, {num_groups}); got ids in "
            f"[{int(groups.min())}, {int(groups.max())}]."
        )
    dtype = torch.promote_types(losses.dtype, torch.float32)
    idx = groups.long()
    sums = torch.zeros(num_groups, dtype=dtype, device=losses.device)
    sums.index_add_(0, idx, losses.to(dtype))
    counts = torch.bincount(idx, minlength=num_groups).to(dtype)
    return sums / counts  # 0 / 0 = NaN for empty groups, as documented


def antiphase_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the step-to-step changes of two loss series.

    Near -1 when one group's loss goes up whenever the other's goes down (the paper's antiphase
    oscillation); near +1 when they move together. Changes rather than levels are correlated so
    that a shared downward trend does not count as agreement only because both losses fall.

    Args:
        a: ``(T,)`` loss of group A at ``T >= 3`` consecutive evaluations.
        b: ``(T,)`` loss of group B at the same evaluations.

    Returns:
        A 0-dim float tensor in ``[-1, 1]``; 0 when either series of changes is constant (the
        correlation is undefined there, and 0 means "no evidence" to a thresholding detector).
    """
    check_vector("a", a)
    check_vector("b", b)
    _check_same_shape("a", a, "b", b)
    if a.shape[0] < 3:
        raise ValueError(
            f"a and b must hold at least 3 values (2 changes) to correlate; got length "
            f"{a.shape[0]}."
        )
    # float64: the changes of a slowly moving loss are small differences of close numbers.
    da, db = a.double().diff(), b.double().diff()
    da, db = da - da.mean(), db - db.mean()
    denom = da.norm() * db.norm()
    corr = torch.where(denom > 0, (da * db).sum() / denom.clamp_min(1e-300), 0.0)
    return corr.clamp(-1.0, 1.0).to(torch.promote_types(a.dtype, torch.float32))


def mean_loss_gradient(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    params: Iterable[Tensor] | None = None,
) -> list[Tensor]:
    """Gradient of the mean loss over a group of examples, without touching ``.grad``.

    Args:
        model: Maps ``inputs`` to the predictions ``loss_fn`` expects.
        inputs: The group's inputs, examples along dimension 0.
        targets: The group's targets.
        loss_fn: Called as ``loss_fn(outputs, targets)``; must return the mean loss (a scalar).
        params: Parameters to differentiate with respect to; ``None`` uses every parameter of
            ``model`` that requires a gradient.

    Returns:
        One detached gradient per parameter, in order; zeros for a parameter the loss does not
        depend on, so gradients of two groups always line up.
    """
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not params:
        raise ValueError("params must contain at least one tensor that requires a gradient.")
    loss = loss_fn(model(inputs), targets)
    if loss.ndim != 0:
        raise ValueError(f"loss_fn must return a scalar; got shape {tuple(loss.shape)}.")
    # autograd.grad, not backward(): the caller's accumulated .grad stays as it was.
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [
        torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads, strict=True)
    ]


def _flat_pieces(name: str, x: GradLike) -> list[Tensor]:
    """Flat views of a gradient-like argument, one per tensor."""
    if isinstance(x, Tensor):
        return [x.reshape(-1)]
    pieces = list(x)
    if not pieces or not all(isinstance(t, Tensor) for t in pieces):
        raise ValueError(f"{name} must be a tensor or a non-empty sequence of tensors.")
    return [t.reshape(-1) for t in pieces]


def _aligned(*named: tuple[str, GradLike]) -> list[list[Tensor]]:
    """Flat pieces of several gradient-like arguments, split at the same boundaries.

    A single tensor is split like the first sequence argument (views, no copy), so a flat
    direction can be compared with per-parameter gradients.
    """
    flats = [_flat_pieces(name, x) for name, x in named]
    sizes = [[t.numel() for t in f] for f in flats]
    totals = [sum(s) for s in sizes]
    if len(set(totals)) > 1:
        got = ", ".join(f"{name}: {t}" for (name, _), t in zip(named, totals, strict=True))
        raise ValueError(f"gradients must have the same number of elements; got {got}.")
    ref = max(sizes, key=len)
    out = []
    for (name, _), f, s in zip(named, flats, sizes, strict=True):
        if s != ref:
            if len(f) != 1:
                raise ValueError(
                    f"{name} must have tensors of the same sizes as the other arguments, or be a "
                    f"single tensor; got sizes {s}, expected {ref}."
                )
            f = list(f[0].split(ref))
        out.append(f)
    return out


def _dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """Float64 dot product of two piece lists, accumulated per piece on the first device."""
    device = xs[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in zip(xs, ys, strict=True):
        total = total + torch.dot(x.double(), y.to(x.device).double()).to(device)
    return total


def _cosine(xx: Tensor, yy: Tensor, xy: Tensor) -> Tensor:
    """``xy / sqrt(xx yy)``; 0 (not NaN) when either vector is 0."""
    denom = (xx * yy).sqrt()
    return torch.where(denom > 0, xy / denom.clamp_min(1e-300), 0.0).clamp(-1.0, 1.0)


def group_gradient_cosine(grad_a: GradLike, grad_b: GradLike) -> Tensor:
    """Cosine between two groups' mean-loss gradients.

    Strongly negative for a pair of groups with opposing signals. Works the same on sketches
    from ``sketch_gradient`` (same ``dim`` and ``seed``).

    Args:
        grad_a: Gradient for group A (e.g. from ``mean_loss_gradient``), a sequence of tensors or
            one tensor.
        grad_b: Gradient for group B, with the same number of elements.

    Returns:
        A 0-dim float64 tensor in ``[-1, 1]``; 0 when either gradient is 0.
    """
    a, b = _aligned(("grad_a", grad_a), ("grad_b", grad_b))
    return _cosine(_dot(a, a), _dot(b, b), _dot(a, b))


def direction_alignment(grad_a: GradLike, grad_b: GradLike, direction: GradLike) -> Tensor:
    """Cosine between ``g_A - g_B`` and a direction, e.g. the top Hessian eigenvector.

    Args:
        grad_a: Gradient for group A, a sequence of tensors or one tensor.
        grad_b: Gradient for group B, with the same number of elements.
        direction: The direction ``v``, with the same number of elements (sign matters: the
            result flips sign with ``v``; take ``abs`` for an eigenvector).

    Returns:
        A 0-dim float64 tensor ``cos(g_A - g_B, v)`` in ``[-1, 1]``; 0 when either is 0.
    """
    a, b, v = _aligned(("grad_a", grad_a), ("grad_b", grad_b), ("direction", direction))
    # The difference is formed per tensor, so memory stays O(largest tensor).
    d = [x.double() - y.to(x.device).double() for x, y in zip(a, b, strict=True)]
    return _cosine(_dot(d, d), _dot(v, v), _dot(d, v))


def sketch_gradient(
    grads: GradLike,
    dim: int,
    seed: int,
    block_numel: int = DEFAULT_SKETCH_BLOCK_NUMEL,
) -> Tensor:
    """Random Gaussian projection ``S g`` of a gradient to ``dim`` numbers.

    ``S`` has i.i.d. ``N(0, 1/dim)`` entries, so ``E ||S g||² = ||g||²``; by Johnson–Lindenstrauss
    the cosine of two sketches approximates the cosine of the full gradients with an error of
    order ``1/sqrt(dim)`` (about 0.02 for ``dim = 2048``). Keep a model's gradients as sketches to
    compare many groups, or steps, without storing full gradients.

    ``S`` is never stored: its columns are regenerated from a generator seeded with ``seed``, in
    blocks of at most ``block_numel`` elements taken over the flattened, concatenated gradient, so
    memory is ``O(dim + block_numel)``. The same ``seed``, ``dim``, ``block_numel``, number of
    elements and device type give the same ``S`` (whatever the split into tensors); CPU and CUDA
    generators draw different numbers.

    Args:
        grads: The gradient, a sequence of tensors on one device or one tensor.
        dim: Sketch dimension ``r >= 1``.
        seed: Seed of the projection; use the same one for every sketch you compare.
        block_numel: Largest random block generated at once (at least ``dim`` elements are used).

    Returns:
        A ``(dim,)`` tensor, float32 (float64 if the gradient is float64).
    """
    check_positive_int("dim", dim)
    check_positive_int("block_numel", block_numel)
    check_seed(seed)
    pieces = _flat_pieces("grads", grads)
    device = pieces[0].device
    if any(p.device != device for p in pieces):
        raise ValueError(
            f"grads must all be on one device; got {sorted({str(p.device) for p in pieces})}."
        )
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in pieces) else torch.float32
    gen = torch.Generator(device=device).manual_seed(seed)
    cols = max(1, block_numel // dim)
    out = torch.zeros(dim, dtype=dtype, device=device)
    # Stream fixed-width column blocks over the concatenation, so S does not depend on how the
    # gradient is split into tensors; a block may gather pieces of several small tensors.
    buf: list[Tensor] = []
    filled = 0

    def flush(chunk: list[Tensor]) -> None:
        x = torch.cat(chunk) if len(chunk) > 1 else chunk[0]
        block = torch.randn(dim, x.numel(), generator=gen, dtype=dtype, device=device)
        out.add_(block @ x.to(dtype))

    for p in pieces:
        start = 0
        while start < p.numel():
            take = min(cols - filled, p.numel() - start)
            buf.append(p[start : start + take])
            filled += take
            start += take
            if filled == cols:
                flush(buf)
                buf, filled = [], 0
    if buf:
        flush(buf)
    return out / math.sqrt(dim)
