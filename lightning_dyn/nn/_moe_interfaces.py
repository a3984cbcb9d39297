"""Continuity rows between neighbouring experts of ``HardConstraintMoE`` (beyond the paper).

The paper's experts share nothing, so the assembled field jumps where blocks meet. With
``interface_rows=True`` the ``K`` solves become one least-squares problem in ``(ω_1, …, ω_K)``:
every expert's own rows (its block residual and ridge rows, exactly as in the independent solve)
plus, for every pair of blocks sharing a face, ``weight · Φ_p (ω_k − ω_j)`` at the points ``p``
next to that face, which ask both experts to give the same field there. The price is a coupled
solve of ``K·N`` unknowns (it cannot be split over ranks), against ``K`` solves of ``N``.

Value rows leave kinks. ``interface_rows="c1"`` replaces them by trace rows (:func:`trace_pairs`):
per line crossing a face, the one-sided quadratic value and slope of expert ``k`` from its own
3 points next to the face against expert ``j``'s from the other side, the same stencils that
``functional.face_jumps`` reads on the assembled field, so its jumps are the rows' residuals.
A field common to all experts (``HardConstraintMoE.forward``'s ``offset``, e.g. the particular
part ``a`` of ``u = a + Φ ω``) enters the trace rows too: its values at one point cancel in a
value row, but its one-sided traces from either side of a face do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_dyn._checks import check_real
from lightning_dyn.functional.block_partition import block_bounds
from lightning_dyn.functional.face_jumps import EXTRAPOLATION, SLOPE
from lightning_dyn.functional.least_squares import LeastSquaresResult, solve_least_squares


def _faces(
    grid: tuple[int, ...], parts: tuple[int, ...], periodic: tuple[bool, ...]
) -> list[tuple[int, int, int, int, list[Tensor]]]:
    """Per face-sharing pair: ``(k, j, axis, edge, cores)``, ``cores[a]`` the common core along
    every other axis ``a`` (``edge`` is ``n`` at the wrap of a periodic axis)."""
    cores = [block_bounds(n, m) for n, m in zip(grid, parts, strict=True)]
    faces = []
    for k, combo in enumerate(
        torch.cartesian_prod(*[torch.arange(m) for m in parts])
        .reshape(math.prod(parts), len(parts))
        .tolist()
    ):
        for axis, i in enumerate(combo):
            last = i == parts[axis] - 1
            if parts[axis] == 1 or (last and not periodic[axis]):
                continue
            edge = grid[axis] if last else cores[axis][i + 1][0]
            step = math.prod(parts[axis + 1 :])
            j = k - i * step if last else k + step
            ranges = [torch.arange(*cores[a][ia]) for a, ia in enumerate(combo)]
            faces.append((k, j, axis, edge, ranges))
    return faces


def _flat(grid: tuple[int, ...], coords: list[Tensor]) -> Tensor:
    """C-order flat indices of the product of per-axis ``coords`` (the last axis fastest)."""
    strides = [math.prod(grid[a + 1 :]) for a in range(len(grid))]
    flat = torch.zeros((), dtype=torch.long)
    for a, c in enumerate(coords):
        flat = flat.unsqueeze(-1) + c * strides[a]
    return flat.reshape(-1)


def interface_pairs(
    grid_shape: Sequence[int],
    partition: Sequence[int],
    overlap: int,
    periodic: Sequence[bool] | None = None,
) -> list[tuple[int, int, Tensor]]:
    """Face-sharing block pairs ``(k, j, points)``, blocks numbered in C order over ``partition``.

    ``points`` are flat (C-order) grid indices within ``max(1, overlap)`` points of the face on
    either side along the axis that crosses it, and in the blocks' common core along the others.
    Blocks are uniform as in ``HardConstraintMoE`` (``n // parts`` points, remainder last). Along
    a ``periodic`` axis the last and first blocks also share the face at the wrap.
    """
    grid, parts = tuple(grid_shape), tuple(partition)
    periodic = tuple(periodic) if periodic is not None else (False,) * len(grid)
    width = max(1, overlap)
    pairs = []
    for k, j, axis, edge, ranges in _faces(grid, parts, periodic):
        # modulo: the wrap of a periodic axis
        ranges[axis] = torch.arange(edge - width, edge + width) % grid[axis]
        pairs.append((k, j, _flat(grid, ranges)))
    return pairs


def trace_pairs(
    grid_shape: Sequence[int], partition: Sequence[int], periodic: Sequence[bool] | None = None
) -> list[tuple[int, int, Tensor, Tensor]]:
    """Face-sharing block pairs ``(k, j, left, right)`` for the one-sided (``"c1"``) rows.

    ``left`` ``(L, 3)``: for each of the ``L`` lines crossing the face (the blocks' common core
    along the other axes), the flat indices of the 3 points of block ``k`` nearest the face,
    nearest first; ``right`` likewise in block ``j``. Pairs in the order of
    :func:`interface_pairs`.
    """
    grid, parts = tuple(grid_shape), tuple(partition)
    periodic = tuple(periodic) if periodic is not None else (False,) * len(grid)
    pairs = []
    for k, j, axis, edge, ranges in _faces(grid, parts, periodic):
        sides = []
        for points in ([edge - 1 - i for i in range(3)], [edge + i for i in range(3)]):
            stencil = []
            for p in points:
                ranges[axis] = torch.tensor([p % grid[axis]])
                stencil.append(_flat(grid, ranges))
            sides.append(torch.stack(stencil, dim=1))
        pairs.append((k, j, *sides))
    return pairs


INTERFACE_ROWS = (False, True, "value", "c1")


def interface_kind(
    interface_rows: object, slope_weight: object, overlap: object
) -> tuple[str | None, float | None]:
    """``(kind, slope weight)`` from ``HardConstraintMoE``'s arguments, or ``ValueError``.

    ``kind`` is ``None`` (no coupling), ``"value"`` (``True``) or ``"c1"``; the slope weight is a
    float for ``"c1"`` (``None`` there: that of the value rows, filled in by the caller).
    """
    if not any(
        interface_rows is c or (isinstance(c, str) and interface_rows == c) for c in INTERFACE_ROWS
    ):
        raise ValueError(
            f"interface_rows must be one of False, True (= 'value'), 'value' or 'c1'; got "
            f"{interface_rows!r}."
        )
    kind = {False: None, True: "value"}.get(interface_rows, interface_rows)  # type: ignore[call-overload]
    check_real("interface_slope_weight", slope_weight, strictly_positive=True, optional=True)
    if slope_weight is not None and kind != "c1":
        raise ValueError(
            f"interface_slope_weight={slope_weight!r} weighs the slope rows of "
            f"interface_rows='c1', but interface_rows={interface_rows!r}. Pass "
            "interface_rows='c1', or leave interface_slope_weight=None."
        )
    if kind == "c1" and overlap != 0:
        raise ValueError(
            f"interface_rows='c1' matches each expert's one-sided value and slope at the face, "
            f"which the assembled field shows only without overlap; got overlap={overlap!r}. "
            "Use overlap=0 with 'c1', or interface_rows='value'."
        )
    return kind, None if slope_weight is None else float(slope_weight)


def coupled_residual(
    block_residual: Callable[[Tensor, tuple[Tensor, ...]], Tensor],
    indices: list[Tensor],
    per_point: list[bool],
    pairs: list[tuple[int, int, Tensor]],
    weight: float,
    n_basis: int,
    traces: list[tuple[int, int, Tensor, Tensor]] = (),
    slope_weight: float = 0.0,
    offset: bool = False,
) -> Callable[[Tensor, tuple[Tensor, ...]], Tensor]:
    """Residual of the joint problem in ``ω = (ω_1, …, ω_K)`` flattened, for ONE sample.

    ``block_residual(ω_k, (basis_k, *data_k))`` gives expert ``k``'s rows (ridge included);
    ``indices[k]`` are its block's flat points; ``per_point`` says which data tensors are
    restricted to the block (the others are passed whole). Value rows
    ``weight · Φ_p (ω_k − ω_j)`` on the ``pairs``' points (``"value"``); for the ``traces`` of
    :func:`trace_pairs` (``"c1"``), per line crossing the face, with ``v_k = Φ ω_k``,
    ``weight · (E v_k,left − E v_j,right)`` and ``slope_weight · (D v_k,left − D' v_j,right)``,
    with ``E`` the one-sided quadratic extrapolation to the face and ``D``, ``D' = −D`` its
    derivative times the spacing from either side (``face_jumps``' ``EXTRAPOLATION`` and ``SLOPE``).
    With ``offset``, ``params`` is ``(basis, c, *data)`` and the trace rows read
    ``v_k = c + Φ ω_k``: a field ``c`` common to all experts (the caller's particular part) has
    its own one-sided traces, which do not cancel across a face as its value at one point does.
    """

    stencils = torch.tensor([EXTRAPOLATION, SLOPE], dtype=torch.float64)  # (2, 3)

    def residual(omega: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        basis, *data = params
        common = data.pop(0) if offset else None
        omegas = omega.reshape(len(indices), n_basis)
        rows = []
        for k, idx in enumerate(indices):
            block = tuple(d[idx] if f else d for d, f in zip(data, per_point, strict=True))
            rows.append(block_residual(omegas[k], (basis[idx], *block)))
        for k, j, points in pairs:
            rows.append(weight * (basis[points] @ (omegas[k] - omegas[j])))
        for k, j, left, right in traces:
            # (value, h ∂u) of expert k at the face from the left, of expert j from the right.
            st = stencils.to(basis)
            v_left, v_right = basis[left] @ omegas[k], basis[right] @ omegas[j]  # (L, 3)
            if common is not None:
                v_left, v_right = v_left + common[left], v_right + common[right]
            from_left, from_right = st @ v_left.mT, st @ v_right.mT  # (2, L)
            rows.append(weight * (from_left[0] - from_right[0]))
            rows.append(slope_weight * (from_left[1] + from_right[1]))  # right weights: −SLOPE
        return torch.cat(rows)

    return residual


def interface_jump(basis: Tensor, omega: Tensor, pairs: list[tuple[int, int, Tensor]]) -> Tensor:
    """Root-mean-square disagreement ``Φ_p (ω_k − ω_j)`` of neighbouring experts, per sample.

    ``basis`` ``(B, P, N)``, ``omega`` ``(B, K, N)``; zero for one expert. Measured on the
    points of :func:`interface_pairs`, where a jump of the assembled field would show.
    """
    if not pairs:
        return basis.new_zeros(basis.shape[0])
    diffs = [
        basis[:, points] @ (omega[:, k] - omega[:, j]).to(basis.dtype).unsqueeze(-1)
        for k, j, points in pairs
    ]
    return torch.cat(diffs, dim=1).square().mean(dim=(1, 2)).sqrt()


def solve_coupled(
    layer: Any,
    indices: list[Tensor],
    pairs: list[tuple[int, int, Tensor]],
    traces: list[tuple[int, int, Tensor, Tensor]],
    weight: float,
    slope_weight: float,
    basis: Tensor,
    data: tuple[Tensor, ...],
    per_point: list[bool],
    offset: Tensor | None = None,
) -> tuple[Tensor, LeastSquaresResult]:
    """All experts and their interface rows in one solve: ``ω`` ``(B, K, N)`` and the joint
    solve's result. ``layer`` is the ``HardConstraintLayer`` whose ``residual_rows`` are each
    expert's rows and whose settings drive the solve; ``indices`` are the experts' block points;
    with ``traces`` (``"c1"``) the ``pairs``' value rows are left out. ``offset`` ``(B, P)``:
    the field common to all experts, which the C1 rows' traces include."""
    batch, _, n_basis = basis.shape
    experts = len(indices)
    common = (offset,) if offset is not None and traces else ()  # only trace rows read it
    residual = coupled_residual(
        layer.residual_rows,
        indices,
        per_point,
        [] if traces else pairs,
        weight,
        n_basis,
        traces,
        slope_weight,
        offset=bool(common),
    )
    res = solve_least_squares(
        residual,
        (basis, *common, *data),
        basis.new_zeros(batch, experts * n_basis, dtype=torch.float64),
        max_iter=layer.max_iter,
        tol=layer.tol,
        on_failure=layer.on_failure,
    )
    return res.omega.reshape(batch, experts, n_basis), res
