"""The uniform block partition shared by the experts, their interface rows and the face jumps."""

from __future__ import annotations

import itertools

import pytest

from lightning_dyn.functional import block_bounds, block_edges, block_faces
from lightning_dyn.nn import HardConstraintMoE


@pytest.mark.parametrize(("n", "parts"), [(12, 3), (13, 3), (64, 4), (7, 1), (10, 4)])
def test_blocks_cover_the_axis_with_the_remainder_last(n: int, parts: int) -> None:
    bounds = block_bounds(n, parts)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [end - start for start, end in bounds]
    assert sizes[:-1] == [n // parts] * (parts - 1) and sizes[-1] == n - (parts - 1) * (n // parts)
    assert block_edges(n, parts) == [start for start, _ in bounds[1:]]


def test_the_moe_blocks_and_the_face_jumps_agree_on_the_faces() -> None:
    grid, partition = (6, 14), (2, 3)
    moe = HardConstraintMoE(lambda w, b: b @ w, 6, partition, grid)
    faces = block_faces(grid, partition)
    for axis, edge in faces:
        # The face separates blocks: no expert's own block straddles it.
        for indices in moe._indices:
            coords = {(int(i) // grid[1], int(i) % grid[1])[axis] for i in indices}
            assert not (edge - 1 in coords and edge in coords), (axis, edge)
