"""Continuity rows between neighbouring experts of ``HardConstraintMoE`` (beyond the paper).

The paper's experts share nothing, so the assembled field jumps where blocks meet. With
``interface_rows=True`` the ``K`` solves become one least-squares problem in ``(ω_1, …, ω_K)``:
every expert's own rows (its block residual and ridge rows, exactly as in the independent solve)
plus, for every pair of blocks sharing a face, ``weight · Φ_p (ω_k − ω_j)`` at the points ``p``
next to that face, which ask both experts to give the same field there. The price is a coupled
solve of ``K·N`` unknowns (it cannot be split over ranks), against ``K`` solves of ``N``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


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
    strides = [math.prod(grid[a + 1 :]) for a in range(len(grid))]
    cores = [
        [(i * (n // m), n if i == m - 1 else (i + 1) * (n // m)) for i in range(m)]
        for n, m in zip(grid, parts, strict=True)
    ]
    width = max(1, overlap)
    pairs = []
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
            flat = torch.zeros((), dtype=torch.long)
            for a, ia in enumerate(combo):
                if a == axis:  # modulo: the wrap of a periodic axis
                    coords = torch.arange(edge - width, edge + width) % grid[a]
                else:
                    coords = torch.arange(*cores[a][ia])
                flat = flat.unsqueeze(-1) + coords * strides[a]
            j = k - i * step if last else k + step
            pairs.append((k, j, flat.reshape(-1)))
    return pairs


def coupled_residual(
    block_residual: Callable[[Tensor, tuple[Tensor, ...]], Tensor],
    indices: list[Tensor],
    per_point: list[bool],
    pairs: list[tuple[int, int, Tensor]],
    weight: float,
    n_basis: int,
) -> Callable[[Tensor, tuple[Tensor, ...]], Tensor]:
    """Residual of the joint problem in ``ω = (ω_1, …, ω_K)`` flattened, for ONE sample.

    ``block_residual(ω_k, (basis_k, *data_k))`` gives expert ``k``'s rows (ridge included);
    ``indices[k]`` are its block's flat points; ``per_point`` says which data tensors are
    restricted to the block (the others are passed whole).
    """

    def residual(omega: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        basis, *data = params
        omegas = omega.reshape(len(indices), n_basis)
        rows = []
        for k, idx in enumerate(indices):
            block = tuple(d[idx] if f else d for d, f in zip(data, per_point, strict=True))
            rows.append(block_residual(omegas[k], (basis[idx], *block)))
        for k, j, points in pairs:
            rows.append(weight * (basis[points] @ (omegas[k] - omegas[j])))
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
