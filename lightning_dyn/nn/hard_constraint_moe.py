"""The mixture of hard-constraint experts: one ``ω_k`` per block of the grid (arXiv 2402.13412).

Split from ``hard_constraint.py``: the block partition, the blending of overlapping blocks, the
batched per-expert solves and the expert-parallel exchange over ``torch.distributed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_dyn._checks import (
    check_ints,
    check_partition,
    check_periodic,
    check_positive_int,
    check_real,
)
from lightning_dyn.functional.block_partition import block_bounds
from lightning_dyn.functional.face_jumps import block_faces
from lightning_dyn.functional.least_squares import (
    LeastSquaresResult,
    OnFailure,
    solve_least_squares,
)
from lightning_dyn.nn._constraint_inputs import check_basis, check_data
from lightning_dyn.nn._moe_interfaces import (
    interface_jump,
    interface_kind,
    interface_pairs,
    solve_coupled,
    trace_pairs,
)
from lightning_dyn.nn._moe_parallel import check_same_input, exchange
from lightning_dyn.nn.hard_constraint import HardConstraintLayer, HardResidualFn


def _axis_blocks(n: int, parts: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Per block along one axis: ``(start, end, lo, hi)``, core ``[start, end)``, support."""
    out = []
    for i, (start, end) in enumerate(block_bounds(n, parts)):
        lo = max(0, start - overlap) if i > 0 else start
        hi = min(n, end + overlap) if i < parts - 1 else end
        out.append((start, end, lo, hi))
    return out


def _ramp(x: Tensor, edge: int, overlap: int) -> Tensor:
    """Weight of the block right of ``edge``: linear across ``[edge - overlap, edge + overlap)``."""
    if overlap == 0:
        return (x >= edge).to(torch.float64)
    return ((x - (edge - overlap) + 0.5) / (2 * overlap)).clamp(0.0, 1.0)


def _stats(res: LeastSquaresResult) -> Tensor:
    """Iterations, residual norm, gradient norm, converged (0/1) stacked in float64: ``(…, 4)``.

    One tensor so that the diagnostics travel in one collective.
    """
    fields = (res.iterations, res.residual_norm, res.gradient_norm, res.converged)
    return torch.stack([f.to(torch.float64) for f in fields], dim=-1)


class HardConstraintMoE(nn.Module):
    """Mixture of hard-constraint experts: one ``ω_k`` per block of the grid (arXiv 2402.13412).

    The grid of shape ``grid_shape`` (e.g. ``(T, X)``) is flattened in C order to the ``P``
    points of ``basis``. ``partition`` gives the number of blocks along each axis; blocks are
    uniform, ``n // parts`` points each, the remainder going to the last block of the axis.
    Expert ``k`` (blocks numbered in C order over ``partition``) owns its block's points, extended
    by ``overlap`` points on each side that touches another block (clipped at the domain), and
    solves ``ω_k`` as ``HardConstraintLayer`` does, from ``residual_fn`` evaluated on those points
    only: ``residual_fn(omega, basis_block (P_k, N), *data_block)``, points in C order.

    Which constraint data is restricted to the block: with ``shared_rows=None``, a tensor whose
    second dimension equals ``P`` is per-point (``(B, P, ...)``) and is restricted to the block's
    points; any other tensor (e.g. global initial/boundary-condition rows) is passed whole to every
    expert. ``shared_rows`` (indices into ``constraint_data``) overrides the rule: exactly those
    tensors are passed whole and every other one must be per-point. Use it when a global tensor
    happens to have ``P`` entries in its second dimension.

    Batching: experts whose blocks have the same shape are solved in one batched call over
    ``B × (experts in the group)`` problems; blocks differ in shape only through the remainder and
    the clipped overlap, so there are at most ``3 ** len(grid_shape)`` calls (one when the grid
    divides evenly and ``overlap=0``). Grouping, not padding, keeps ``residual_fn`` free of masks.

    Assembly: ``u = Σ_k w_k · Φ ω_k``, with ``w_k`` a partition of unity, the product over axes of
    one-dimensional weights. Without overlap each point takes its own block's expert. With
    overlap ``o``, across each interior edge the weight of the block on the right rises linearly
    from ``1/(4o)`` to ``1 - 1/(4o)`` over the ``2o`` points both blocks cover, the other block
    taking the rest, so the weights sum to 1 at every point. ``overlap`` is limited to half the
    smallest block along each partitioned axis so that the ramps do not meet.

    Interface rows (``interface_rows=True``, beyond the paper): the experts are solved as ONE
    problem in ``(ω_1, …, ω_K)`` whose rows are every expert's own rows plus, for each pair of
    blocks sharing a face, ``interface_weight · Φ_p (ω_k − ω_j)`` at the points within
    ``max(1, overlap)`` of the face (``_moe_interfaces.interface_pairs``), so that neighbours
    agree where they meet. The coupled solve has ``K·N`` unknowns and is not split over ranks.
    ``interface_jump`` measures the disagreement either way. Value rows leave kinks: the
    assembled field shows each expert on its own side only. ``interface_rows="c1"`` (overlap 0)
    instead matches, per line crossing each face, expert ``k``'s one-sided value AND normal slope
    at the face (quadratic through its own 3 nearest points) with expert ``j``'s from the other
    side, weights ``interface_weight`` and ``interface_slope_weight`` (slopes in grid units, so
    both kinds are of one scale): the discrete C1 condition that ``functional.face_jumps``
    reads on the assembled field. One-sided, not central: a central difference across the face
    compares the experts' extensions into each other's block, which the field never shows.
    Cost: 2 rows per line and face (``_moe_interfaces.trace_pairs``), still ``K·N`` unknowns.

    Expert parallelism (``expert_parallel``): the ``K`` solves are split over the ranks of the
    default ``torch.distributed`` process group; rank ``r`` of ``W`` solves experts ``r, r + W,
    r + 2W, ...`` only. This is expert parallelism, NOT data parallelism: every rank must call
    ``forward`` with the SAME ``basis`` and ``constraint_data`` (the same batch, e.g. the same
    seed and sampler on every rank, or a replicated basis network fed the same input); with
    Lightning, train with ``lightning_dyn.strategies.ExpertParallelStrategy``. Each forward
    checks this (one all-gather of the batch size and two sums of ``basis``) and raises
    ``ValueError`` on every rank if the inputs differ, e.g. under data-parallel DDP, where
    ``expert_parallel=False`` is what is wanted. The
    per-expert solutions ``ω`` (``(B, K_local, N)``, padded to the largest share ``ceil(K / W)``
    when ``W`` does not divide ``K``) are exchanged with the autograd-aware
    ``torch.distributed.nn.functional.all_gather``, put back in expert order, and every rank
    assembles the full ``u`` and returns the full ``LeastSquaresResult`` (the diagnostics are
    gathered with a plain ``all_gather``). Results equal the single-process ones up to rounding.

    Gradients under expert parallelism follow all-reduce-AVERAGE semantics (DDP's default): no
    scaling is applied. When every rank computes the same loss of the outputs, the backward of the
    autograd ``all_gather`` sums the ``W`` identical ``∂L/∂ω_k`` into the rank that solved expert
    ``k``, so the implicit (through-the-solve) part of a rank's ``basis`` / ``constraint_data``
    gradient is ``W ×`` that of its own experts, while the direct part (``u = Σ_k w_k Φ ω_k``
    differentiated in ``Φ``, and any other use of ``basis`` in the loss) is computed in full, once,
    on every rank. Averaging over ranks gives ``direct + Σ_r implicit_r`` = the single-process
    gradient, for ``basis``, ``constraint_data`` and the parameters of a replicated network that
    produced them. A single rank's gradient alone is NOT the single-process gradient: the
    gradients must be averaged over the group (DDP does this; without DDP call
    ``dist.all_reduce(g)`` and divide by ``W``). With all-reduce-SUM semantics instead, scale the
    loss by ``1 / W``.

    Args:
        residual_fn: As for ``HardConstraintLayer``, called on one block of one sample.
        experts: Number of experts ``K``; must equal the product of ``partition``.
        partition: Blocks along each axis of ``grid_shape``.
        grid_shape: Shape of the grid whose C-order flattening gives the ``P`` points.
        ridge: Coefficient of the ridge rows ``ridge · ω_k`` (``>= 0``).
        overlap: Grid points (``>= 0``) each block extends into its neighbours.
        shared_rows: Indices of ``constraint_data`` passed whole to every expert, or ``None`` for
            the shape rule above.
        max_iter: Most Levenberg-Marquardt iterations per solve (``>= 1``).
        tol: Convergence tolerance on ``‖J^T r‖``.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` when some solves did not converge.
        interface_rows: ``False``, ``True`` (= ``"value"``: value rows) or ``"c1"`` (value and
            slope rows at the faces, ``overlap=0``, blocks of >= 3 points); see above.
        interface_weight: Weight of the value rows (``> 0``).
        interface_slope_weight: Weight of ``"c1"``'s slope rows (``> 0``); ``None``:
            ``interface_weight``. Refused with any other ``interface_rows``.
        periodic: One bool per axis of ``grid_shape``: along a periodic axis the last and first
            blocks are neighbours too (continuity rows and ``interface_jump`` at the wrap);
            default none. Blocks and overlap do not wrap.
        expert_parallel: ``"auto"`` (default): split the experts over the ranks when
            ``torch.distributed`` is available and initialised with world size > 1, at each
            ``forward``; ``True``: always (``forward`` raises ``ValueError`` if no process group is
            initialised); ``False``: always solve every expert locally. With
            ``interface_rows`` the coupled solve runs whole on every rank (``"auto"``), and
            ``True`` is refused.

    Raises:
        ValueError: If an argument has the wrong type or value, e.g. ``experts`` is not the
            product of ``partition``, a block would be empty, or ``overlap`` is negative or more
            than half a block.
    """

    def __init__(
        self,
        residual_fn: HardResidualFn,
        experts: int,
        partition: Sequence[int],
        grid_shape: Sequence[int],
        ridge: float = 1e-4,
        overlap: int = 0,
        shared_rows: Sequence[int] | None = None,
        max_iter: int = 50,
        tol: float = 1e-10,
        on_failure: OnFailure = "warn",
        expert_parallel: bool | Literal["auto"] = "auto",
        interface_rows: bool | Literal["value", "c1"] = False,
        interface_weight: float = 1.0,
        periodic: Sequence[bool] | None = None,
        interface_slope_weight: float | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(expert_parallel, bool) or expert_parallel == "auto"):
            raise ValueError(
                f"expert_parallel must be True, False or 'auto'; got {expert_parallel!r}."
            )
        kind, slope_weight = interface_kind(interface_rows, interface_slope_weight, overlap)
        check_real("interface_weight", interface_weight, strictly_positive=True)
        if interface_rows and expert_parallel is True:
            raise ValueError(
                f"interface_rows={interface_rows!r} couples the experts into one solve, which "
                "cannot be split "
                "over ranks; use expert_parallel='auto' or False with it."
            )
        self.interface_rows = interface_rows
        self.interface_weight = float(interface_weight)
        self.interface_kind = kind
        self.interface_slope_weight = (
            self.interface_weight if slope_weight is None else slope_weight
        )
        self.expert_parallel = expert_parallel
        self.layer = HardConstraintLayer(residual_fn, ridge, max_iter, tol, on_failure)
        check_positive_int("experts", experts)
        grid = check_ints("grid_shape", grid_shape, 1, nonempty=True)
        parts = check_partition(partition, grid)
        if math.prod(parts) != experts:
            raise ValueError(
                f"partition={parts} makes {math.prod(parts)} blocks, but experts={experts}; the "
                "product of partition must equal experts."
            )
        for axis, (n, m) in enumerate(zip(grid, parts, strict=True)):
            if m > n:
                raise ValueError(
                    f"partition={parts} asks for {m} blocks along axis {axis}, which has only "
                    f"{n} points (grid_shape={grid})."
                )
        check_positive_int("overlap", overlap, minimum=0)
        for axis, (n, m) in enumerate(zip(grid, parts, strict=True)):
            if m > 1 and 2 * overlap > n // m:
                raise ValueError(
                    f"overlap={overlap} is more than half the {n // m}-point blocks along axis "
                    f"{axis}; use overlap <= {(n // m) // 2}."
                )
        shared = check_ints("shared_rows", shared_rows, 0, optional=True)
        self.experts = experts
        self.partition = parts
        self.grid_shape = grid
        self.overlap = overlap
        self.shared_rows = shared
        self._build_blocks()
        self.periodic = check_periodic(periodic, grid)
        self._pairs = interface_pairs(grid, parts, overlap, self.periodic)
        self._traces = []
        if kind == "c1":  # its value rows are the traces', not the shared points'
            block_faces(grid, parts, self.periodic)  # raises if a block is under 3 points wide
            self._traces = trace_pairs(grid, parts, self.periodic)

    def _build_blocks(self) -> None:
        """Per expert: flat point indices and blend weights on them; then groups by shape."""
        axes = [
            _axis_blocks(n, m, self.overlap)
            for n, m in zip(self.grid_shape, self.partition, strict=True)
        ]
        strides = [math.prod(self.grid_shape[a + 1 :]) for a in range(len(self.grid_shape))]
        self._indices: list[Tensor] = []
        self._weights: list[Tensor] = []
        shapes: list[tuple[int, ...]] = []
        for combo in torch.cartesian_prod(*[torch.arange(m) for m in self.partition]).reshape(
            self.experts, len(self.partition)
        ):
            flat = torch.zeros((), dtype=torch.long)
            weight = torch.ones((), dtype=torch.float64)
            shape = []
            for a, i in enumerate(combo.tolist()):
                blocks = axes[a]
                _, end, lo, hi = blocks[i]
                x = torch.arange(lo, hi)
                w = torch.ones(hi - lo, dtype=torch.float64)
                if i > 0:
                    w = w * _ramp(x, blocks[i][0], self.overlap)
                if i < len(blocks) - 1:
                    w = w * (1.0 - _ramp(x, end, self.overlap))
                flat = flat.unsqueeze(-1) + (x * strides[a])
                weight = weight.unsqueeze(-1) * w
                shape.append(hi - lo)
            self._indices.append(flat.reshape(-1))
            self._weights.append(weight.reshape(-1))
            shapes.append(tuple(shape))
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, s in enumerate(shapes):
            groups.setdefault(s, []).append(k)
        self._groups = list(groups.values())

    def blend_weights(self) -> Tensor:
        """``(K, P)`` float64 partition-of-unity weights (zero outside each expert's block)."""
        w = torch.zeros(self.experts, math.prod(self.grid_shape), dtype=torch.float64)
        for k in range(self.experts):
            w[k, self._indices[k]] = self._weights[k]
        return w

    def _per_point(self, data: tuple[Tensor, ...], points: int) -> list[bool]:
        if self.shared_rows is None:
            return [d.ndim >= 2 and d.shape[1] == points for d in data]
        bad = [i for i in self.shared_rows if i >= len(data)]
        if bad:
            raise ValueError(
                f"shared_rows={self.shared_rows} names indices {bad}, but constraint_data has "
                f"{len(data)} tensors."
            )
        flags = [i not in self.shared_rows for i in range(len(data))]
        for i, (d, f) in enumerate(zip(data, flags, strict=True)):
            if f and (d.ndim < 2 or d.shape[1] != points):
                raise ValueError(
                    f"constraint_data[{i}] is not in shared_rows, so it must be per-point with "
                    f"shape (B, P={points}, ...); got {tuple(d.shape)}."
                )
        return flags

    def forward(
        self,
        basis: Tensor,
        constraint_data: Sequence[Tensor] = (),
        offset: Tensor | None = None,
    ) -> tuple[Tensor, LeastSquaresResult]:
        """Solve every expert and blend: ``(u, result)``.

        Args:
            basis: ``(B, P, N)`` basis functions, ``P = prod(grid_shape)`` points in C order.
            constraint_data: Tensors with leading dimension ``B``; per-point ones (see the class
                docstring) are restricted to each expert's block.
            offset: ``(B, P)`` field common to every expert (e.g. the particular part ``a`` of
                ``u = a + Φ ω``), added to the blend. ``interface_rows="c1"`` then matches the
                traces of ``offset + Φ ω_k``: without it a curved ``offset`` keeps its own
                one-sided jumps at every face, whatever the weights. ``None``: zero.

        Returns:
            ``u = offset + Σ_k w_k Φ ω_k`` of shape ``(B, P)`` in ``basis``'s dtype, and a
            ``LeastSquaresResult`` whose fields have an expert axis after the batch axis:
            ``omega`` ``(B, K, N)``, the others ``(B, K)``.

        Raises:
            ValueError: If ``basis`` is not a floating ``(B, P, N)`` tensor with
                ``P = prod(grid_shape)``, or ``constraint_data`` or ``offset`` does not match it.
        """
        check_basis(basis)
        batch, points, _ = basis.shape
        if points != math.prod(self.grid_shape):
            raise ValueError(
                f"basis has P={points} points, but grid_shape={self.grid_shape} has "
                f"{math.prod(self.grid_shape)}; basis must be (B, prod(grid_shape), N)."
            )
        data = check_data(constraint_data, batch)
        per_point = self._per_point(data, points)
        if offset is not None and (
            not isinstance(offset, Tensor)
            or not offset.is_floating_point()
            or tuple(offset.shape) != (batch, points)
        ):
            got = (offset.dtype, tuple(offset.shape)) if isinstance(offset, Tensor) else offset
            raise ValueError(
                f"offset must be a floating (B, P) = {(batch, points)} tensor; got {got!r}."
            )
        if self.interface_rows and self.experts > 1:
            omega, joint = solve_coupled(
                self.layer,
                self._indices,
                self._pairs,
                self._traces,
                self.interface_weight,
                self.interface_slope_weight,
                basis,
                data,
                per_point,
                offset,
            )
            world, stats = 1, _stats(joint)[:, None].expand(batch, self.experts, 4)
        else:
            world, rank = self._world()
            if world > 1:
                check_same_input(basis, world)
            mine = list(range(rank, self.experts, world))
            omega, stats = self._solve(basis, data, per_point, mine)
        if world > 1:
            omega, stats = self._exchange(omega, stats, world)
        u = basis.new_zeros(batch, points) if offset is None else offset.to(basis.dtype)
        for group in self._groups:
            idx = torch.stack([self._indices[k] for k in group]).to(basis.device)  # (G, Pg)
            w = torch.stack([self._weights[k] for k in group]).to(basis)  # (G, Pg)
            om = omega[:, group].to(basis.dtype).unsqueeze(-1)  # (B, G, N, 1)
            contrib = (basis[:, idx] @ om).squeeze(-1) * w  # (B, G, Pg)
            u = u.index_add(1, idx.reshape(-1), contrib.reshape(batch, -1))
        result = LeastSquaresResult(
            omega=omega,
            iterations=stats[..., 0].round().long(),
            residual_norm=stats[..., 1],
            gradient_norm=stats[..., 2],
            converged=stats[..., 3] > 0.5,
        )
        return u, result

    def interface_jump(self, basis: Tensor, omega: Tensor) -> Tensor:
        """RMS of ``Φ_p (ω_k − ω_j)`` over neighbours' interface points, per sample: ``(B,)``.

        ``omega`` is ``result.omega`` ``(B, K, N)``; zero when there is one expert.
        """
        return interface_jump(basis, omega, self._pairs)

    def _world(self) -> tuple[int, int]:
        """``(world_size, rank)`` to split the experts over; ``(1, 0)`` when local."""
        initialised = dist.is_available() and dist.is_initialized()
        if self.expert_parallel is True and not initialised:
            raise ValueError(
                "expert_parallel=True needs an initialised torch.distributed process group "
                "(call torch.distributed.init_process_group first), or use "
                "expert_parallel='auto' or False."
            )
        if self.expert_parallel is False or not initialised:
            return 1, 0
        return dist.get_world_size(), dist.get_rank()

    def _solve(
        self,
        basis: Tensor,
        data: tuple[Tensor, ...],
        per_point: list[bool],
        experts: list[int],
    ) -> tuple[Tensor, Tensor]:
        """Solve ``experts``: float64 ``ω`` ``(B, len, N)`` and diagnostics ``(B, len, 4)``.

        The diagnostics are those of ``_stats``.
        """
        batch = basis.shape[0]
        where = {k: j for j, k in enumerate(experts)}
        omegas: list[Tensor | None] = [None] * len(experts)
        stats: list[Tensor | None] = [None] * len(experts)
        layer = self.layer
        for full_group in self._groups:
            group = [k for k in full_group if k in where]
            if not group:
                continue
            g = len(group)
            idx = torch.stack([self._indices[k] for k in group]).to(basis.device)  # (G, Pg)

            def restrict(t: Tensor, point: bool, idx: Tensor = idx, g: int = g) -> Tensor:
                # Per-point: (B, G, Pg, ...); shared: the whole tensor for each of the G experts.
                t = t[:, idx] if point else t.unsqueeze(1).expand(batch, g, *t.shape[1:])
                return t.reshape(batch * g, *t.shape[2:])

            block_basis = restrict(basis, True)
            block_data = tuple(restrict(d, f) for d, f in zip(data, per_point, strict=True))
            res = solve_least_squares(
                layer.residual_rows,
                (block_basis, *block_data),
                basis.new_zeros(batch * g, basis.shape[2], dtype=torch.float64),
                max_iter=layer.max_iter,
                tol=layer.tol,
                on_failure=layer.on_failure,
            )
            om = res.omega.reshape(batch, g, -1)
            st = _stats(res).reshape(batch, g, 4)
            for j, k in enumerate(group):
                omegas[where[k]] = om[:, j]
                stats[where[k]] = st[:, j]
        if not experts:  # more ranks than experts: this rank solves none
            empty = basis.new_zeros(batch, 0, basis.shape[2], dtype=torch.float64)
            # The gather's backward is a collective: take part in it whenever the others do.
            differentiable = any(t.requires_grad for t in (basis, *data))
            empty.requires_grad_(torch.is_grad_enabled() and differentiable)
            return empty, basis.new_zeros(batch, 0, 4, dtype=torch.float64)
        return torch.stack(omegas, dim=1), torch.stack(stats, dim=1)  # type: ignore[arg-type]

    def _exchange(self, omega: Tensor, stats: Tensor, world: int) -> tuple[Tensor, Tensor]:
        """All-gather every rank's experts ``r::world`` (padded) and return them in expert order."""
        return exchange(omega, stats, self.experts, world)

    def extra_repr(self) -> str:
        return (
            f"experts={self.experts}, partition={self.partition}, grid_shape={self.grid_shape}, "
            f"overlap={self.overlap}, shared_rows={self.shared_rows}, "
            f"expert_parallel={self.expert_parallel!r}, interface_rows={self.interface_rows}, "
            f"interface_weight={self.interface_weight}"
            + (f", interface_slope_weight={self.interface_slope_weight}" if self._traces else "")
        )
