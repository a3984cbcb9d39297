"""Face jumps of a grid field against closed forms: smooth fields, planted steps and kinks."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_dyn.functional import block_faces, face_jumps

N = 64
H = 1.0 / N
X = (torch.arange(N, dtype=torch.float64) + 0.5) * H  # cell centres of [0, 1)


def test_smooth_field_reads_the_interpolation_error() -> None:
    # u = sin 2πx, periodic, 4 blocks: M3 = (2π)³, M4 = (2π)⁴. Bounds (module docstring):
    # value ≤ 2 (5/16) M3 h³ over the range, slope ≤ 2 h ((23/24) M3 h² + (5/64) M4 h³) over the
    # largest within-block difference. Sampled at cell centres the range is >= 2 cos(πh) and the
    # differences 2 sin(πh) |cos 2π x_mid| reach >= 2 sin(πh) cos(2πh) (the midpoint at x = h).
    k = 2 * math.pi
    jumps = face_jumps(torch.sin(k * X)[None], (4,), (True,))
    assert jumps.faces == ((0, 16), (0, 32), (0, 48), (0, 0))
    value_bound = 2 * (5 / 16) * k**3 * H**3 / (2 * math.cos(math.pi * H))
    slope_raw = 2 * H * ((23 / 24) * k**3 * H**2 + (5 / 64) * k**4 * H**3)
    slope_bound = slope_raw / (2 * math.sin(math.pi * H) * math.cos(2 * math.pi * H))
    assert jumps.value.max() <= value_bound, (jumps.value, value_bound)
    assert jumps.slope.max() <= slope_bound, (jumps.slope, slope_bound)
    assert value_bound < 1e-3 and slope_bound < 2e-2  # against O(1) for a step or a kink


def test_two_dimensional_field_with_a_linear_axis() -> None:
    # (1 + t) sin 2πx on an (8, 64) grid, 2 x 4 blocks: along t the field is linear, so the
    # one-sided quadratics are exact and the time face reads 0; along x as in 1D, scaled.
    t = torch.arange(8, dtype=torch.float64)[:, None]
    u = ((1 + t) * torch.sin(2 * math.pi * X)).expand(3, 8, N)
    jumps = face_jumps(u, (2, 4), (False, True))
    assert jumps.faces == ((0, 4), (1, 16), (1, 32), (1, 48), (1, 0))
    assert jumps.value.shape == jumps.slope.shape == (3, 5)
    assert jumps.value[:, 0].max() < 1e-14 and jumps.slope[:, 0].max() < 1e-14
    assert jumps.value.max() < 1e-3 and jumps.slope.max() < 2e-2


def test_planted_step_reads_its_height() -> None:
    # u = x + s [x > 1/2]: linear on each side, so both extrapolations are exact: the value jump
    # is s, over the range (1 - h) + s; no slope jump.
    s = 0.3
    jumps = face_jumps((X + s * (X > 0.5))[None], (2,))
    torch.testing.assert_close(jumps.value, torch.tensor([[s / (1 - H + s)]], dtype=torch.float64))
    assert jumps.slope.abs().max() < 1e-12


def test_planted_kink_reads_its_slope_jump() -> None:
    # u = c |x - 1/2| + a x: slopes a - c and a + c, a slope jump 2c; the largest within-block
    # slope is a + c, the normaliser. The value reads 0.
    a, c = 0.5, 1.0
    jumps = face_jumps((c * (X - 0.5).abs() + a * X)[None], (2,))
    torch.testing.assert_close(jumps.slope, torch.tensor([[2 * c / (a + c)]], dtype=torch.float64))
    assert jumps.value.abs().max() < 1e-12


def test_wrap_face_of_a_periodic_axis() -> None:
    # u = x jumps from 1 (extrapolated from the left of the wrap) to 0: 1 over the range 1 - h.
    periodic = face_jumps(X[None], (4,), (True,))
    assert periodic.value[0, :3].abs().max() < 1e-12
    torch.testing.assert_close(periodic.value[0, 3], torch.tensor(1 / (1 - H), dtype=torch.float64))
    assert face_jumps(X[None], (4,)).faces == ((0, 16), (0, 32), (0, 48))


def test_one_block_has_no_face() -> None:
    jumps = face_jumps(torch.randn(2, 5, 6, dtype=torch.float64), (1, 1), (False, True))
    assert jumps.faces == () and jumps.value.shape == jumps.slope.shape == (2, 0)


@pytest.mark.parametrize(
    ("u", "partition", "periodic", "name"),
    [
        (torch.zeros(2, 8), (4,), None, "at least 3 points"),
        (torch.zeros(2, 8), (2, 1), None, "partition"),
        (torch.zeros(2, 8), (1.5,), None, "partition"),
        (torch.zeros(2, 8), (2,), (1,), "periodic"),
        (torch.zeros(2, 8, dtype=torch.long), (2,), None, "floating"),
        (torch.zeros(8), (2,), None, "u must"),
    ],
)
def test_bad_arguments(u, partition, periodic, name) -> None:
    with pytest.raises(ValueError, match=name):
        face_jumps(u, partition, periodic)


def test_block_faces_matches_the_moe_blocks() -> None:
    # Uniform blocks, the remainder in the last: 10 points in 3 blocks -> edges 3 and 6.
    assert block_faces((10, 7), (3, 2)) == ((0, 3), (0, 6), (1, 3))
