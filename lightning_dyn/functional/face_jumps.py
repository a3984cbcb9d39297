"""Jumps of a grid field and of its normal derivative across the faces of a block partition.

A field assembled from experts, each owning one block of the grid, may be continuous in value
and still kink where blocks meet; a single smooth field has no jump at all. To compare the two at
the same places, :func:`face_jumps` takes the partition to measure at and reads, on the field
alone, for every face between blocks:

* the **value jump** ``|u_L − u_R|``, where ``u_L`` extrapolates the three points left of the face
  to the face by their quadratic (weights ``EXTRAPOLATION`` on the points at distances ``h/2,
  3h/2, 5h/2``) and ``u_R`` does the same from the right;
* the **slope jump** ``h |∂u_L − ∂u_R|``, with ``∂u_L, ∂u_R`` the derivatives at the face of the
  same one-sided quadratics (weights ``SLOPE``, in grid units: a derivative times the spacing
  ``h``).

Each is the largest over the lines crossing the face and is normalised by the field's own
variation: the value jump by ``max u − min u`` over the grid, the slope jump by the largest
within-block difference ``h max |∂u/∂x_normal|`` along the axis crossing the face (differences
across a face are left out, so that a jump does not inflate its own normaliser). A face is
``(axis, edge)``: the plane between grid indices ``edge − 1`` and ``edge`` along ``axis``, for the
uniform blocks of ``HardConstraintMoE`` (``n // parts`` points, the remainder in the last); along
a periodic axis also the wrap (``edge = 0``, between ``n − 1`` and ``0``).

Closed forms (spacing ``h``; ``M_k = max |∂^k u / ∂x_normal^k|``). The one-sided stencils are
those of quadratic interpolation, so, by the interpolation error ``f − p = f'''(ξ) ω(x) / 6``
with ``ω(x) = Π (x − x_i)``:

* a field linear along the normal reads 0 in both, whatever its size;
* a smooth field: value jump ``≤ 2 · (5/16) M_3 h³`` (``|ω(face)| = 15 h³ / 8`` on each side),
  slope jump ``≤ 2 h ((23/24) M_3 h² + (5/64) M_4 h³)`` (``|ω'(face)| = 23 h² / 4``; the ``M_4``
  term from differentiating the divided difference), before normalisation;
* a value step of height ``s`` planted at a face on a linear field reads exactly ``s``, and a kink
  ``|x − x_face|`` reads a slope jump of exactly ``2 h`` (normalised: 2 over ``max |∂u/∂x|``
  in units of the kink's slope).

So a smooth field reads ``O(h³)`` in value and ``O(h²)`` in slope relative to its variation, and a
jump or a kink reads ``O(1)``. Every block must have at least 3 points along a partitioned axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_dyn._checks import check_partition, check_periodic
from lightning_dyn.functional.block_partition import block_edges

__all__ = ["EXTRAPOLATION", "SLOPE", "FaceJumps", "block_faces", "face_jumps"]

EXTRAPOLATION = (15 / 8, -5 / 4, 3 / 8)
"""Weights on the points ``h/2, 3h/2, 5h/2`` from a face (nearest first): the quadratic's value
at the face."""
SLOPE = (2.0, -3.0, 1.0)
"""Weights on the points ``h/2, 3h/2, 5h/2`` LEFT of a face (nearest first): ``h`` times the
quadratic's derivative at the face; the right side's weights are their negatives."""


class FaceJumps(NamedTuple):
    """Normalised jumps per sample and face: ``value`` and ``slope`` ``(B, F)``; ``faces``
    ``((axis, edge), …)`` in the same order."""

    value: Tensor
    slope: Tensor
    faces: tuple[tuple[int, int], ...]


def block_faces(
    grid_shape: Sequence[int], partition: Sequence[int], periodic: Sequence[bool] | None = None
) -> tuple[tuple[int, int], ...]:
    """Faces ``(axis, edge)`` between the uniform blocks of ``partition`` (see the module).

    Raises:
        ValueError: If ``partition`` does not give an int ``>= 1`` per axis, ``periodic`` not a
            bool per axis, or a block has fewer than 3 points along a partitioned axis.
    """
    grid = tuple(grid_shape)
    parts, periodic = check_partition(partition, grid), check_periodic(periodic, grid)
    faces = []
    for axis, (n, m) in enumerate(zip(grid, parts, strict=True)):
        if m == 1:
            continue
        if n // m < 3:
            raise ValueError(
                f"partition={parts} gives blocks of {n // m} points along axis {axis} (grid "
                f"{grid}); the one-sided stencils need at least 3 points per block, so use at "
                f"most {n // 3} blocks along that axis."
            )
        faces += [(axis, edge) for edge in block_edges(n, m)]
        if periodic[axis]:
            faces.append((axis, 0))
    return tuple(faces)


def face_jumps(
    u: Tensor, partition: Sequence[int], periodic: Sequence[bool] | None = None
) -> FaceJumps:
    """Normalised value and slope jumps of ``u`` across every face of ``partition``.

    Args:
        u: ``(B, *grid_shape)`` floating field; the grid is uniform along each axis.
        partition: Blocks along each axis of the grid (``HardConstraintMoE``'s ``partition``);
            all ones gives no face.
        periodic: One bool per axis; along a periodic axis the wrap is a face too.

    Returns:
        :class:`FaceJumps`: per sample and face, the largest value jump over the lines crossing
        the face over ``max u − min u``, and the largest slope jump over the largest
        within-block difference along the face's normal (see the module docstring).

    Raises:
        ValueError: If ``u`` is not floating with a batch axis, or the partition is invalid
            (see :func:`block_faces`).
    """
    if not isinstance(u, Tensor) or not u.is_floating_point() or u.ndim < 2:
        raise ValueError(
            "u must be a floating tensor (B, *grid_shape) with at least one grid axis; got "
            f"{type(u).__name__ if not isinstance(u, Tensor) else (u.dtype, tuple(u.shape))}."
        )
    grid = tuple(u.shape[1:])
    faces = block_faces(grid, partition, periodic)
    batch, tiny = u.shape[0], torch.finfo(u.dtype).tiny
    if not faces:
        empty = u.new_zeros(batch, 0)
        return FaceJumps(empty, empty.clone(), ())
    span = (u.flatten(1).amax(1) - u.flatten(1).amin(1)).clamp_min(tiny)
    extrapolation, slope = u.new_tensor(EXTRAPOLATION), u.new_tensor(SLOPE)
    values, slopes = [], []
    for axis in sorted({a for a, _ in faces}):
        n = grid[axis]
        v = u.movedim(axis + 1, 1).reshape(batch, n, -1)  # (B, n, lines)
        edges = [e for a, e in faces if a == axis]
        inner = torch.ones(n - 1, dtype=torch.bool, device=u.device)
        inner[[e - 1 for e in edges if e > 0]] = False  # the difference straddling a face
        scale = v.diff(dim=1)[:, inner].abs().flatten(1).amax(1).clamp_min(tiny)
        for edge in edges:
            left = v[:, [(edge - 1 - i) % n for i in range(3)]]  # nearest first
            right = v[:, [edge + i for i in range(3)]]
            jump = torch.einsum("i,bil->bl", extrapolation, left - right)
            kink = torch.einsum("i,bil->bl", slope, left + right)  # right weights: −SLOPE
            values.append(jump.abs().amax(1) / span)
            slopes.append(kink.abs().amax(1) / scale)
    # Faces in the order of block_faces: grouped by axis, as computed.
    return FaceJumps(torch.stack(values, 1), torch.stack(slopes, 1), faces)
