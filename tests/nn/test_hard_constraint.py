"""Hard-constraint layer and mixture of experts vs explicit linear least squares (arXiv 2402.13412).

The constraint is linear (finite-difference heat equation ``u_t = κ u_xx`` plus initial-condition
rows), so the layer's Levenberg-Marquardt solve and implicit backward must agree with
``torch.linalg.lstsq`` on the stacked system and with autograd through the normal equations.
"""

from __future__ import annotations

import pytest
import torch

from lightning_dyn.nn import HardConstraintLayer, HardConstraintMoE

T, X, N, B = 6, 8, 5, 2
P = T * X
KAPPA, DT, DX, RIDGE = 0.1, 0.5, 0.5, 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _fd_matrices() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward-difference D_t, central D_xx on the C-ordered (T, X) grid; interior and IC masks."""
    dt = torch.zeros(P, P, dtype=torch.float64)
    dxx = torch.zeros(P, P, dtype=torch.float64)
    pde = torch.zeros(P, dtype=torch.float64)
    ic = torch.zeros(P, dtype=torch.float64)
    for t in range(T):
        for x in range(X):
            p = t * X + x
            if t == 0:
                ic[p] = 1.0
            if t < T - 1 and 0 < x < X - 1:
                pde[p] = 1.0
                dt[p, p + X], dt[p, p] = 1 / DT, -1 / DT
                dxx[p, p - 1], dxx[p, p], dxx[p, p + 1] = 1 / DX**2, -2 / DX**2, 1 / DX**2
    return dt, dxx, pde, ic


def heat_residual(omega, basis, dt_phi, dxx_phi, pde_mask, ic_mask, u0):
    pde = pde_mask * (dt_phi @ omega - KAPPA * (dxx_phi @ omega))
    ic = ic_mask * (basis @ omega - u0)
    return torch.cat([pde, ic])


def _problem(seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(B, P, N, dtype=torch.float64, generator=g).requires_grad_(requires_grad)
    dt, dxx, pde, ic = _fd_matrices()
    u0 = torch.sin(torch.linspace(0, 3, X, dtype=torch.float64)).repeat(T) * ic
    data = (dt @ basis, dxx @ basis, pde.expand(B, P), ic.expand(B, P), u0.expand(B, P))
    return basis, data


def _explicit_system(basis, data):
    dt_phi, dxx_phi, pde, ic, u0 = data
    n = basis.shape[-1]
    ridge = RIDGE * torch.eye(n, dtype=basis.dtype).expand(basis.shape[0], n, n)
    a = torch.cat([pde[..., None] * (dt_phi - KAPPA * dxx_phi), ic[..., None] * basis, ridge], 1)
    zeros = torch.zeros_like(pde)
    b = torch.cat([zeros, ic * u0, torch.zeros(basis.shape[0], n, dtype=basis.dtype)], 1)
    return a, b


def test_layer_matches_lstsq():
    basis, data = _problem()
    u, result = HardConstraintLayer(heat_residual, ridge=RIDGE)(basis, data)
    a, b = _explicit_system(basis, data)
    omega = torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1)
    assert result.converged.all()
    torch.testing.assert_close(result.omega, omega, atol=1e-8, rtol=0)
    torch.testing.assert_close(u, (basis @ omega[..., None]).squeeze(-1), atol=1e-8, rtol=0)
    assert u.shape == (B, P) and u.dtype == basis.dtype


def test_layer_gradient_matches_normal_equations():
    weights = torch.randn(B, P, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    basis, data = _problem(requires_grad=True)
    u, _ = HardConstraintLayer(heat_residual, ridge=RIDGE)(basis, data)
    (grad,) = torch.autograd.grad((weights * u.sin()).sum(), basis)

    basis_ref, data_ref = _problem(requires_grad=True)
    a, b = _explicit_system(basis_ref, data_ref)
    omega = torch.linalg.solve(a.mT @ a, a.mT @ b.unsqueeze(-1))
    u_ref = (basis_ref @ omega).squeeze(-1)
    (grad_ref,) = torch.autograd.grad((weights * u_ref.sin()).sum(), basis_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-8, rtol=0)


def test_moe_single_expert_is_the_layer():
    basis, data = _problem()
    u, result = HardConstraintLayer(heat_residual, ridge=RIDGE)(basis, data)
    moe = HardConstraintMoE(heat_residual, 1, (1, 1), (T, X), ridge=RIDGE)
    u_moe, result_moe = moe(basis, data)
    torch.testing.assert_close(u_moe, u, atol=1e-12, rtol=0)
    torch.testing.assert_close(result_moe.omega[:, 0], result.omega, atol=1e-12, rtol=0)
    assert result_moe.converged.shape == (B, 1)


def _half(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Columns ``lo:hi`` of the (T, X) grid of a per-point (B, P, ...) tensor."""
    grid = t.reshape(t.shape[0], T, X, *t.shape[2:])[:, :, lo:hi]
    return grid.reshape(t.shape[0], T * (hi - lo), *t.shape[2:])


def test_moe_two_blocks_without_overlap_are_independent_layers():
    basis, data = _problem()
    moe = HardConstraintMoE(heat_residual, 2, (1, 2), (T, X), ridge=RIDGE)
    u, result = moe(basis, data)
    layer = HardConstraintLayer(heat_residual, ridge=RIDGE)
    for k, (lo, hi) in enumerate([(0, X // 2), (X // 2, X)]):
        u_half, res = layer(_half(basis, lo, hi), tuple(_half(d, lo, hi) for d in data))
        torch.testing.assert_close(_half(u[..., None], lo, hi)[..., 0], u_half, atol=1e-12, rtol=0)
        torch.testing.assert_close(result.omega[:, k], res.omega, atol=1e-12, rtol=0)
    assert torch.equal(moe.blend_weights().sum(0), torch.ones(P, dtype=torch.float64))


def test_moe_overlap_blends_between_experts():
    basis, data = _problem()
    overlap = 2
    moe = HardConstraintMoE(heat_residual, 2, (1, 2), (T, X), ridge=RIDGE, overlap=overlap)
    u, result = moe(basis, data)
    weights = moe.blend_weights().reshape(2, T, X)
    torch.testing.assert_close(weights.sum(0), torch.ones(T, X, dtype=torch.float64))
    # Expert 1's weight ramps up linearly across the 2 * overlap shared columns.
    ramp = (torch.arange(2 * overlap, dtype=torch.float64) + 0.5) / (2 * overlap)
    edge = X // 2
    torch.testing.assert_close(weights[1, 0, edge - overlap : edge + overlap], ramp)
    assert (weights[1, :, : edge - overlap] == 0).all() and (
        weights[1, :, edge + overlap :] == 1
    ).all()
    # Each expert is the layer solved on its extended block.
    layer = HardConstraintLayer(heat_residual, ridge=RIDGE)
    for k, (lo, hi) in enumerate([(0, edge + overlap), (edge - overlap, X)]):
        _, res = layer(_half(basis, lo, hi), tuple(_half(d, lo, hi) for d in data))
        torch.testing.assert_close(result.omega[:, k], res.omega, atol=1e-12, rtol=0)
    # In the shared columns u lies between the two experts' fields.
    experts = (basis.unsqueeze(1) @ result.omega.unsqueeze(-1)).squeeze(-1).reshape(B, 2, T, X)
    cols = slice(edge - overlap, edge + overlap)
    lo, hi = experts[:, :, :, cols].min(1).values, experts[:, :, :, cols].max(1).values
    u_cols = u.reshape(B, T, X)[:, :, cols]
    assert (u_cols >= lo - 1e-12).all() and (u_cols <= hi + 1e-12).all()
    assert not torch.allclose(experts[:, 0], experts[:, 1])


def test_moe_gradient_reaches_basis():
    basis, data = _problem(requires_grad=True)
    moe = HardConstraintMoE(heat_residual, 2, (1, 2), (T, X), ridge=RIDGE, overlap=1)
    u, _ = moe(basis, data)
    (grad,) = torch.autograd.grad(u.square().sum(), basis)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"experts": 3, "partition": (1, 2)}, "partition"),
        ({"experts": 2, "partition": (1, 2), "overlap": -1}, "overlap"),
        ({"experts": 2, "partition": (1, 2), "overlap": 3}, "overlap"),
        ({"experts": 2, "partition": (2,)}, "partition"),
        ({"experts": 2, "partition": (1, 2), "ridge": -1.0}, "ridge"),
    ],
)
def test_moe_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HardConstraintMoE(heat_residual, grid_shape=(T, X), **kwargs)


def test_bad_basis_rank():
    basis, data = _problem()
    with pytest.raises(ValueError, match="basis"):
        HardConstraintLayer(heat_residual)(basis[0], data)
    moe = HardConstraintMoE(heat_residual, 2, (1, 2), (T, X))
    with pytest.raises(ValueError, match="basis"):
        moe(basis[..., 0], data)
    with pytest.raises(ValueError, match="grid_shape"):
        moe(basis[:, :-1], tuple(d[:, :-1] for d in data))
    with pytest.raises(ValueError, match=r"constraint_data\[0\]"):
        HardConstraintLayer(heat_residual)(basis, (data[0][:1],))


def _joint_system(basis, data, weight):
    """The interface-rows problem of two column halves as one dense system (ω_0, ω_1)."""
    blocks = [
        _explicit_system(_half(basis, lo, hi), tuple(_half(d, lo, hi) for d in data))
        for lo, hi in [(0, X // 2), (X // 2, X)]
    ]
    (a0, b0), (a1, b1) = blocks
    points = torch.tensor([t * X + x for t in range(T) for x in (X // 2 - 1, X // 2)])
    phi = weight * basis[:, points]
    zeros0, zeros1 = torch.zeros_like(a0), torch.zeros_like(a1)
    a = torch.cat(
        [torch.cat([a0, zeros0], 2), torch.cat([zeros1, a1], 2), torch.cat([phi, -phi], 2)], 1
    )
    b = torch.cat([b0, b1, torch.zeros(B, len(points), dtype=basis.dtype)], 1)
    return a, b


def test_moe_interface_rows_match_the_joint_dense_system():
    weights = torch.randn(B, P, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    basis, data = _problem(requires_grad=True)
    moe = HardConstraintMoE(
        heat_residual, 2, (1, 2), (T, X), ridge=RIDGE, interface_rows=True, interface_weight=3.0
    )
    u, result = moe(basis, data)
    (grad,) = torch.autograd.grad((weights * u.sin()).sum(), basis)

    basis_ref, data_ref = _problem(requires_grad=True)
    a, b = _joint_system(basis_ref, data_ref, 3.0)
    omega = torch.linalg.solve(a.mT @ a, a.mT @ b.unsqueeze(-1)).squeeze(-1).reshape(B, 2, N)
    assert result.converged.all() and result.omega.shape == (B, 2, N)
    torch.testing.assert_close(result.omega, omega, atol=1e-8, rtol=0)
    halves = (basis_ref.unsqueeze(1) @ omega.unsqueeze(-1)).squeeze(-1).reshape(B, 2, T, X)
    u_ref = torch.cat([halves[:, 0, :, : X // 2], halves[:, 1, :, X // 2 :]], 2).reshape(B, P)
    torch.testing.assert_close(u, u_ref, atol=1e-8, rtol=0)
    (grad_ref,) = torch.autograd.grad((weights * u_ref.sin()).sum(), basis_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-8, rtol=0)


def test_moe_interface_rows_shrink_the_jump():
    basis, data = _problem()
    jumps = []
    for rows, weight in [(False, 1.0), (True, 0.3), (True, 3.0), (True, 30.0)]:
        moe = HardConstraintMoE(
            heat_residual,
            2,
            (1, 2),
            (T, X),
            ridge=RIDGE,
            interface_rows=rows,
            interface_weight=weight,
        )
        _, result = moe(basis, data)
        jumps.append(moe.interface_jump(basis, result.omega).mean().item())
    assert jumps == sorted(jumps, reverse=True) and jumps[-1] < 1e-2 * jumps[0], jumps
    single = HardConstraintMoE(heat_residual, 1, (1, 1), (T, X))
    assert single.interface_jump(basis, torch.zeros(B, 1, N)).abs().max() == 0


def test_interface_pairs_on_a_two_by_two_partition():
    from lightning_dyn.nn._moe_interfaces import interface_pairs

    pairs = interface_pairs((4, 6), (2, 2), overlap=0)
    got = {(k, j): sorted(p.tolist()) for k, j, p in pairs}

    def flat(rows, cols, width=6):
        return sorted(r * width + c for r in rows for c in cols)

    assert got == {
        (0, 1): flat(range(0, 2), (2, 3)),
        (0, 2): flat((1, 2), range(0, 3)),
        (1, 3): flat((1, 2), range(3, 6)),
        (2, 3): flat(range(2, 4), (2, 3)),
    }
    wide = {(k, j): sorted(p.tolist()) for k, j, p in interface_pairs((4, 6), (1, 2), overlap=1)}
    assert wide == {(0, 1): flat(range(4), (2, 3))}
    ring = interface_pairs((4, 6), (1, 3), overlap=0, periodic=(False, True))
    assert {(k, j): sorted(p.tolist()) for k, j, p in ring} == {
        (0, 1): flat(range(4), (1, 2)),
        (1, 2): flat(range(4), (3, 4)),
        (2, 0): flat(range(4), (0, 5)),  # the wrap of the periodic axis
    }
    wider = {(k, j): sorted(p.tolist()) for k, j, p in interface_pairs((4, 8), (1, 2), overlap=2)}
    assert wider == {(0, 1): flat(range(4), (2, 3, 4, 5), width=8)}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"interface_rows": 1}, "interface_rows"),
        ({"interface_rows": True, "interface_weight": 0.0}, "interface_weight"),
        ({"interface_rows": True, "expert_parallel": True}, "interface_rows"),
        ({"periodic": (True,)}, "periodic"),
        ({"periodic": (False, 1)}, "periodic"),
    ],
)
def test_moe_bad_interface_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HardConstraintMoE(heat_residual, 2, (1, 2), (T, X), **kwargs)


# C1 rows: a smooth target fitted by two quadratic experts on a 1D grid (closed-form references).
X1 = 32
XS = (torch.arange(X1, dtype=torch.float64) + 0.5) / X1
QUADRATICS = torch.stack([torch.ones_like(XS), XS, XS**2], 1).expand(B, X1, 3)
TARGET = torch.sin(2.5 * torch.pi * XS).expand(B, X1)


def fit_residual(omega, basis, target):
    return basis @ omega - target


def _one_sided(u):
    """(value, h·slope) at the face x = 1/2 from the left and from the right: the quadratic
    through the 3 nearest points on each side (weights derived by hand from Lagrange's form)."""
    e = X1 // 2
    left, right = u[:, [e - 1, e - 2, e - 3]], u[:, [e, e + 1, e + 2]]
    extrapolate = torch.tensor([15 / 8, -5 / 4, 3 / 8], dtype=torch.float64)
    slope = torch.tensor([2.0, -3.0, 1.0], dtype=torch.float64)
    return left @ extrapolate, right @ extrapolate, left @ slope, -(right @ slope)


def _c1_systems():
    """The two experts' fit as one dense system ``A ω = b`` (ω = (ω_0, ω_1)) and the C1 rows
    ``C ω`` (value, slope traces at the face), written out independently of the module."""
    half = X1 // 2
    phi, g = QUADRATICS[0], TARGET[0]
    zeros, zeros3 = torch.zeros(half, 3, dtype=torch.float64), torch.zeros(3, 3).double()
    ridge = RIDGE * torch.eye(3, dtype=torch.float64)
    a = torch.cat(
        [
            torch.cat([phi[:half], zeros], 1),
            torch.cat([ridge, zeros3], 1),
            torch.cat([zeros, phi[half:]], 1),
            torch.cat([zeros3, ridge], 1),
        ]
    )
    b = torch.cat([g[:half], torch.zeros(3).double(), g[half:], torch.zeros(3).double()])
    ev = torch.tensor([15 / 8, -5 / 4, 3 / 8], dtype=torch.float64)
    sv = torch.tensor([2.0, -3.0, 1.0], dtype=torch.float64)
    left, right = phi[[half - 1, half - 2, half - 3]].mT, phi[[half, half + 1, half + 2]].mT
    c = torch.stack([torch.cat([left @ ev, -(right @ ev)]), torch.cat([left @ sv, right @ sv])])
    return a, b, c


def _two_expert_c1(w: float, ws: float) -> HardConstraintMoE:
    """Two experts on halves of the quadratics' fit, C1 rows with weights ``w``, ``ws``."""
    return HardConstraintMoE(
        fit_residual,
        2,
        (2,),
        (X1,),
        ridge=RIDGE,
        interface_rows="c1",
        interface_weight=w,
        interface_slope_weight=ws,
    )


def test_moe_c1_rows_match_the_joint_dense_system():
    w, ws = 3.0, 7.0
    moe = _two_expert_c1(w, ws)
    _, result = moe(QUADRATICS, (TARGET,))
    a, b, c = _c1_systems()
    a = torch.cat([a, torch.tensor([[w], [ws]], dtype=torch.float64) * c])
    omega = torch.linalg.lstsq(a, torch.cat([b, torch.zeros(2).double()]).unsqueeze(-1))
    assert result.converged.all()
    torch.testing.assert_close(
        result.omega[0].reshape(-1), omega.solution.squeeze(-1), atol=1e-8, rtol=0
    )


def test_moe_c1_rows_include_the_common_offset():
    # u = c + Φ ω with a curved c (an exponential: its one-sided quadratic traces differ across the
    # face). The C1 rows must then match the traces of the whole field, so the dense reference
    # is lstsq on [A; w C] ω = [b − c; −w C_c], C_c the traces of c (value, slope).
    w, ws = 3.0, 7.0
    c = torch.exp(3.0 * XS).expand(B, X1)
    moe = _two_expert_c1(w, ws)
    u, result = moe(QUADRATICS, (TARGET - c,), offset=c)
    a, b, traces = _c1_systems()
    half = X1 // 2
    ev = torch.tensor([15 / 8, -5 / 4, 3 / 8], dtype=torch.float64)
    sv = torch.tensor([2.0, -3.0, 1.0], dtype=torch.float64)
    left, right = c[0, [half - 1, half - 2, half - 3]], c[0, [half, half + 1, half + 2]]
    c_traces = torch.stack([left @ ev - right @ ev, left @ sv + right @ sv])
    assert c_traces.abs().min() > 1e-4  # the offset alone would leave a jump
    shift = torch.cat([c[0, :half], torch.zeros(3).double(), c[0, half:], torch.zeros(3).double()])
    weights = torch.tensor([w, ws], dtype=torch.float64)
    lhs = torch.cat([a, weights[:, None] * traces])
    rhs = torch.cat([b - shift, -weights * c_traces])
    omega = torch.linalg.lstsq(lhs, rhs.unsqueeze(-1)).solution.squeeze(-1)
    assert result.converged.all()
    torch.testing.assert_close(result.omega[0].reshape(-1), omega, atol=1e-8, rtol=0)
    # The returned field includes the offset.
    halves = torch.cat([QUADRATICS[0, :half] @ omega[:3], QUADRATICS[0, half:] @ omega[3:]])
    torch.testing.assert_close(u[0], c[0] + halves, atol=1e-8, rtol=0)


@pytest.mark.parametrize(
    "offset", [torch.zeros(B, X1 + 1).double(), torch.zeros(B, X1, dtype=torch.long), "c"]
)
def test_moe_bad_offset(offset):
    moe = HardConstraintMoE(fit_residual, 2, (2,), (X1,), interface_rows="c1")
    with pytest.raises(ValueError, match="offset must be a floating"):
        moe(QUADRATICS, (TARGET,), offset=offset)


def test_moe_c1_rows_remove_the_slope_jump():
    # Bound. With weights w = w_s the C1 solve minimises ‖Aω − b‖² + w²‖Cω‖². At its minimiser
    # ω*, this is at most its value at ω_c, the exactly-C1 fit (Cω_c = 0; KKT solve), and
    # ‖Aω* − b‖ >= ‖Aω_u − b‖, ω_u the uncoupled fit (lstsq). So
    # ‖Cω*‖ <= sqrt(‖Aω_c − b‖² − ‖Aω_u − b‖²) / w: the value and slope jumps at the face
    # (grid units) are within that bound, which a value-only coupling does not meet.
    w = 1e4
    a, b, c = _c1_systems()
    omega_u = torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1)
    kkt = torch.cat([torch.cat([a.mT @ a, c.mT], 1), torch.cat([c, torch.zeros(2, 2).double()], 1)])
    omega_c = torch.linalg.solve(kkt, torch.cat([a.mT @ b, torch.zeros(2).double()]))[:6]
    gap = (a @ omega_c - b).square().sum() - (a @ omega_u - b).square().sum()
    bound = gap.sqrt() / w

    def field(**kwargs):
        moe = HardConstraintMoE(fit_residual, 2, (2,), (X1,), ridge=RIDGE, tol=1e-6, **kwargs)
        u, result = moe(QUADRATICS, (TARGET,))
        assert result.converged.all()
        return u

    u_c1 = field(interface_rows="c1", interface_weight=w, interface_slope_weight=w)
    u_value = field(interface_rows=True, interface_weight=100.0)
    c1, value_only = _one_sided(u_c1), _one_sided(u_value)
    assert ((c1[2] - c1[3]).abs() <= bound).all(), (c1, bound)
    assert ((c1[0] - c1[1]).abs() <= bound).all(), (c1, bound)
    # Value-only coupling leaves a kink above what C1 rows guarantee (the halves' fits differ).
    assert ((value_only[2] - value_only[3]).abs() > 5 * bound).all(), (value_only, bound)
    # The same normalised by face_jumps; one expert's field at the same place reads ~0 (the
    # stencils are exact on one quadratic).
    from lightning_dyn.functional import face_jumps

    slope_c1, slope_value = face_jumps(u_c1, (2,)).slope, face_jumps(u_value, (2,)).slope
    assert (slope_c1 < 1e-3 * slope_value).all(), (slope_c1, slope_value)
    u_one, _ = HardConstraintMoE(fit_residual, 1, (1,), (X1,), ridge=RIDGE)(QUADRATICS, (TARGET,))
    assert face_jumps(u_one, (2,)).slope.max() < 1e-10


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"interface_rows": "c2"}, "interface_rows"),
        ({"interface_rows": "c1", "interface_slope_weight": 0.0}, "interface_slope_weight"),
        ({"interface_rows": "c1", "interface_slope_weight": -1.0}, "interface_slope_weight"),
        ({"interface_rows": "c1", "interface_slope_weight": True}, "interface_slope_weight"),
        ({"interface_rows": "c1", "interface_slope_weight": float("inf")}, "finite"),
        ({"interface_rows": True, "interface_slope_weight": 1.0}, "interface_rows='c1'"),
        ({"interface_slope_weight": 1.0}, "interface_rows='c1'"),
        ({"interface_rows": "c1", "overlap": 1}, "overlap=0"),
        ({"interface_rows": "c1", "partition": (1, 4), "experts": 4}, "at least 3 points"),
        ({"interface_rows": "c1", "expert_parallel": True}, "interface_rows='c1'"),
    ],
)
def test_moe_bad_c1_arguments(kwargs, name):
    options = {"experts": 2, "partition": (1, 2), **kwargs}
    with pytest.raises(ValueError, match=name):
        HardConstraintMoE(heat_residual, grid_shape=(T, X), **options)
