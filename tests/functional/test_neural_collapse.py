"""Neural-collapse metrics against independent two-pass references (arXiv 2008.08186, 2301.00437).

The references below work on the raw features with numpy and explicit loops (class means, then a
second pass for the centred covariance), never on the streaming statistics.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lightning_dyn.functional import (
    NC_TARGETS,
    ClassStatistics,
    between_class_covariance,
    cdnv,
    class_means,
    class_statistics,
    equiangularity,
    equinorm,
    geometry_distance,
    global_mean,
    max_angle,
    nc1,
    nc1_trace_ratio,
    nc3,
    nc4,
    nc4_mismatches,
    neural_collapse_metrics,
    target_gram,
    within_class_covariance,
)

RCOND = 1e-12


pytestmark = pytest.mark.usefixtures("one_thread")

# The scalars neural_collapse_metrics returns (NC4 is computed from features, separately).
METRICS = (
    "nc1",
    "nc1_trace_ratio",
    "cdnv",
    "equinorm_means",
    "equinorm_classifier",
    "equiangularity",
    "max_angle",
    "gram_distance",
    "gram_distance_classifier",
    "nc3",
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int = 300, d: int = 7, k: int = 5, seed: int = 0, offset: float = 0.0):
    """Random features with class structure; every class present."""
    g = _gen(seed)
    labels = torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])
    centres = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    feats = offset + centres[labels] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return feats, labels


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --- two-pass numpy references ----------------------------------------------------------------


def _ref(h: np.ndarray, y: np.ndarray, k: int) -> dict:
    n, d = h.shape
    means = np.zeros((k, d))
    for c in range(k):
        rows = [h[i] for i in range(n) if y[i] == c]
        means[c] = np.sum(rows, axis=0) / len(rows)
    mu_g = means.mean(axis=0)
    sw = np.zeros((d, d))
    var = np.zeros(k)
    cnt = np.zeros(k)
    for i in range(n):
        e = h[i] - means[y[i]]
        sw += np.outer(e, e)
        var[y[i]] += e @ e
        cnt[y[i]] += 1
    sw /= n
    var /= cnt
    sb = sum(np.outer(m - mu_g, m - mu_g) for m in means) / k
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    cdnv_ref = np.mean(
        [(var[a] + var[b]) / (2 * np.sum((means[a] - means[b]) ** 2)) for a, b in pairs]
    )
    centred = means - mu_g
    norms = np.array([np.sqrt(v @ v) for v in centred])
    cos = np.array(
        [centred[a] @ centred[b] / (norms[a] * norms[b]) for a, b in pairs], dtype=np.float64
    )
    return {
        "means": means,
        "mu_g": mu_g,
        "sw": sw,
        "sb": sb,
        "counts": cnt,
        "nc1": np.trace(sw @ np.linalg.pinv(sb, rcond=RCOND)) / k,
        "nc1_trace_ratio": np.trace(sw) / np.trace(sb),
        "cdnv": cdnv_ref,
        "equinorm_means": np.std(norms) / np.mean(norms),
        "equiangularity": np.std(cos),
        "max_angle": np.mean(np.abs(cos + 1 / (k - 1))),
    }


def _ref_gram_distance(x: np.ndarray, target: np.ndarray) -> float:
    g = x @ x.T
    return float(np.linalg.norm(g / np.linalg.norm(g) - target / np.linalg.norm(target)))


def _ref_nc3(w: np.ndarray, m: np.ndarray) -> float:
    return float(np.sum((w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2))


def _dang_norms(n: np.ndarray, lam_w: float, lam_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Squared lengths of classifier rows and class means at Dang et al.'s optimum (plain UFM)."""
    t = np.maximum(1 - n.sum() * np.sqrt(lam_w * lam_h / n), 0)
    return t * np.sqrt(n * lam_h / lam_w), t * np.sqrt(lam_w / (n * lam_h))


# --- every metric against the two-pass reference -----------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_metrics_match_two_pass_reference(offset: float) -> None:
    k = 5
    h, y = _data(k=k, offset=offset)
    w = torch.randn(k, h.shape[1], generator=_gen(3), dtype=torch.float64)
    stats = class_statistics(h, y, k)
    ref = _ref(h.numpy(), y.numpy(), k)

    np.testing.assert_allclose(class_means(stats).numpy(), ref["means"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(global_mean(stats).numpy(), ref["mu_g"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(stats.counts.numpy(), ref["counts"], rtol=0, atol=0)
    scale = np.abs(ref["sw"]).max()
    assert np.abs(within_class_covariance(stats).numpy() - ref["sw"]).max() < 1e-10 * scale
    np.testing.assert_allclose(
        between_class_covariance(stats).numpy(), ref["sb"], rtol=1e-10, atol=1e-13
    )

    got = neural_collapse_metrics(stats, w, target="etf", rcond=RCOND)
    for key in (
        "nc1",
        "nc1_trace_ratio",
        "cdnv",
        "equinorm_means",
        "equiangularity",
        "max_angle",
    ):
        assert _rel(got[key], float(ref[key])) < 1e-10, key
    centred = ref["means"] - ref["mu_g"]
    etf = np.eye(k) - 1 / k
    assert _rel(got["gram_distance"], _ref_gram_distance(centred, etf)) < 1e-10
    wn = w.numpy()
    assert _rel(got["gram_distance_classifier"], _ref_gram_distance(wn, etf)) < 1e-10
    assert _rel(got["nc3"], _ref_nc3(wn.T, centred.T)) < 1e-10
    row_norms = np.linalg.norm(wn, axis=1)
    assert _rel(got["equinorm_classifier"], np.std(row_norms) / np.mean(row_norms)) < 1e-10
    assert set(got) == set(METRICS)

    # The stand-alone functions agree with the dict.
    assert nc1(stats, rcond=RCOND) == got["nc1"]
    assert nc1_trace_ratio(stats) == got["nc1_trace_ratio"]
    assert cdnv(stats) == got["cdnv"]
    centred_t = class_means(stats) - global_mean(stats)
    assert _rel(equinorm(centred_t), got["equinorm_means"]) < 1e-12
    assert _rel(equiangularity(centred_t), got["equiangularity"]) < 1e-12
    assert _rel(max_angle(centred_t), got["max_angle"]) < 1e-12

    # Uncentred targets: orthogonal and imbalanced, means and classifier, nc3 without centring.
    means = ref["means"]
    assert (
        _rel(
            geometry_distance(class_means(stats), "orthogonal"),
            _ref_gram_distance(means, np.eye(k)),
        )
        < 1e-10
    )
    lam_w, lam_h = 1e-3, 2e-3
    a2, c2 = _dang_norms(ref["counts"], lam_w, lam_h)
    decay = {"weight_decay": lam_w, "feature_decay": lam_h}
    imb = neural_collapse_metrics(stats, w, target="imbalanced", **decay)
    assert _rel(imb["gram_distance"], _ref_gram_distance(means, np.diag(c2))) < 1e-10
    assert _rel(imb["gram_distance_classifier"], _ref_gram_distance(wn, np.diag(a2))) < 1e-10
    scaled = means * np.sqrt(ref["counts"])[:, None]
    assert _rel(imb["nc3"], _ref_nc3(wn.T, scaled.T)) < 1e-10
    orth = neural_collapse_metrics(stats, w, target="orthogonal")
    assert _rel(orth["nc3"], _ref_nc3(wn.T, means.T)) < 1e-10
    assert _rel(nc3(w, stats, center=False), orth["nc3"]) < 1e-12


def test_nc1_caps_the_rank_of_sigma_b() -> None:
    # D > K - 1: Σ_B has a null space. With a large offset its null eigenvalues are rounding noise
    # (about 1e-16 of the largest); a pinv that keeps them (rcond=0) inverts that noise, while
    # nc1 keeps at most K - 1 directions whatever rcond is.
    k, d, off = 4, 10, 1e3
    h, y = _data(n=200, d=d, k=k, seed=5, offset=off)
    ref = float(_ref((h - off).numpy(), y.numpy(), k)["nc1"])
    stats = class_statistics(h, y, k)
    assert _rel(nc1(stats, rcond=0.0), ref) < 1e-8
    sb, sw = between_class_covariance(stats).numpy(), within_class_covariance(stats).numpy()
    naive = np.trace(sw @ np.linalg.pinv(sb, rcond=0.0)) / k
    assert abs(naive - ref) > 1e3 * ref
    shifted = class_statistics(h, y, k, shift=torch.full((d,), off, dtype=torch.float64))
    assert _rel(nc1(shifted), ref) < 1e-10


def test_cdnv_uses_per_class_variance() -> None:
    # Two classes with known spreads: σ_0² = 2 (±1 in 2 coords), σ_1² = 0, ||μ_0 - μ_1||² = 4.
    h = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    stats = class_statistics(h, torch.tensor([0, 0, 1, 1]), 2)
    assert cdnv(stats) == pytest.approx((2 + 0) / (2 * 4), rel=1e-15)


# --- NC4 --------------------------------------------------------------------------------------


def test_nc4_matches_loop_and_sums_over_batches() -> None:
    k = 4
    h, y = _data(n=120, d=6, k=k, seed=2)
    w = torch.randn(k, 6, generator=_gen(7), dtype=torch.float64)
    b = torch.randn(k, generator=_gen(8), dtype=torch.float64)
    means = class_means(class_statistics(h, y, k))
    hn, wn, bn, mn = h.numpy(), w.numpy(), b.numpy(), means.numpy()
    ref = 0
    for i in range(len(hn)):
        clf = int(np.argmax(wn @ hn[i] + bn))
        ncc = int(np.argmin([np.linalg.norm(hn[i] - mn[c]) for c in range(k)]))
        ref += clf != ncc
    assert 0 < ref < len(hn)
    mis, cnt = nc4_mismatches(h, (w, b), means)
    assert mis.dtype == torch.int64 and int(mis) == ref and int(cnt) == len(hn)
    mis_l, _ = nc4_mismatches(h, h @ w.T + b, means)
    assert int(mis_l) == ref
    parts = [nc4_mismatches(h[s : s + 25], (w, b), means) for s in range(0, len(h), 25)]
    total = sum(p[0] for p in parts), sum(p[1] for p in parts)
    assert nc4(*total) == pytest.approx(ref / len(hn), abs=0)
    # Without a bias.
    ref_nb = sum(
        int(np.argmax(wn @ x)) != int(np.argmin([np.linalg.norm(x - m) for m in mn])) for x in hn
    )
    assert int(nc4_mismatches(h, (w, None), means)[0]) == ref_nb


# --- streaming, merging, precision ------------------------------------------------------------


def test_streaming_37_uneven_batches_equals_one_batch() -> None:
    k = 6
    h, y = _data(n=500, d=9, k=k, seed=4, offset=3.0)
    w = torch.randn(k, 9, generator=_gen(1), dtype=torch.float64)
    cuts = sorted(torch.randperm(499, generator=_gen(9))[:36].add(1).tolist())
    bounds = [0, *cuts, 500]
    batches = [class_statistics(h[a:b], y[a:b], k) for a, b in itertools.pairwise(bounds)]
    assert len(batches) == 37
    merged = ClassStatistics.zeros(k, 9)
    for s in batches:
        merged = merged + s
    one = class_statistics(h, y, k)
    assert torch.equal(merged.counts, one.counts)
    torch.testing.assert_close(merged.second_moment, one.second_moment, rtol=1e-13, atol=0)
    m_one = neural_collapse_metrics(one, w)
    for merged_stats in (merged, sum(batches)):
        m_merged = neural_collapse_metrics(merged_stats, w)
        for key, value in m_one.items():
            assert _rel(m_merged[key], value) < 1e-12, key


def test_float32_input_is_promoted_and_offset_does_not_cancel() -> None:
    k, d, off = 3, 5, 1e4
    g = _gen(11)
    y = torch.arange(600) % k
    centres = torch.randn(k, d, generator=g, dtype=torch.float64)
    x32 = (off + centres[y] + torch.randn(600, d, generator=g, dtype=torch.float64)).float()
    x64 = x32.double()  # the exact values of the float32 input
    ref = _ref(x64.numpy(), y.numpy(), k)
    sw_ref = ref["sw"]

    def rel_err(sw: np.ndarray) -> float:
        return float(np.abs(sw - sw_ref).max() / np.abs(sw_ref).max())

    # float64 raw moments lose about log10(||μ||² / σ²) = 8 digits (6e-7 measured); with a
    # shift near the data, none.
    stats = class_statistics(x32, y, k)
    assert stats.second_moment.dtype == torch.float64
    assert rel_err(within_class_covariance(stats).numpy()) < 1e-5
    shift = x32[:50].double().mean(0)
    shifted = class_statistics(x32, y, k, shift=shift)
    assert rel_err(within_class_covariance(shifted).numpy()) < 1e-12
    assert _rel(nc1(shifted, rcond=RCOND), float(ref["nc1"])) < 1e-10
    np.testing.assert_allclose(class_means(shifted).numpy(), ref["means"], rtol=1e-14, atol=0)
    # Merging statistics with different shifts rebases them: same metrics.
    mixed = class_statistics(x32[:300], y[:300], k, shift=shift) + class_statistics(
        x32[300:], y[300:], k, shift=shift + 0.5
    )
    assert rel_err(within_class_covariance(mixed).numpy()) < 1e-11

    # The same streaming formula in float32 cancels catastrophically ...
    s2 = x32.T @ x32
    sums = torch.zeros(k, d).index_add_(0, y, x32)
    cnt = torch.bincount(y, minlength=k).float()
    mu = sums / cnt[:, None]
    sw32 = (s2 - (mu * cnt[:, None]).T @ mu) / 600
    assert rel_err(sw32.double().numpy()) > 0.1
    # ... and even a float32 two-pass keeps only about 5 digits (means rounded at the 1e4 scale;
    # 7e-6 measured).
    e = x32 - mu[y]
    assert rel_err((e.T @ e / 600).double().numpy()) > 1e-6


# --- planted exact collapse -------------------------------------------------------------------


def _orthonormal(d: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=_gen(seed), dtype=torch.float64))
    return q.T  # (k, d) orthonormal rows


def _collapsed(means: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    return means[y].clone(), y


def test_planted_simplex_etf() -> None:
    k, d = 5, 8
    u = _orthonormal(d, k, 0)
    etf = math.sqrt(k / (k - 1)) * (u - u.mean(dim=0))  # unit-norm simplex ETF vertices
    offset = torch.randn(d, generator=_gen(1), dtype=torch.float64)
    means = 3.0 * etf + offset
    h, y = _collapsed(means, [7, 3, 5, 9, 4])  # imbalance: μ_G is the unweighted mean
    stats = class_statistics(h, y, k)
    w = 3.0 * etf
    b = -(w @ offset)
    got = neural_collapse_metrics(stats, w, b, target="etf")
    for key in METRICS:
        assert abs(got[key]) < 1e-10, (key, got[key])
    assert nc4(*nc4_mismatches(h, (w, b), class_means(stats))) == 0.0
    # The centred ETF is not an orthogonal frame.
    assert geometry_distance(etf, "orthogonal") > 0.3


def test_planted_orthogonal_frame() -> None:
    k, d = 4, 6
    means = 2.5 * _orthonormal(d, k, 2)
    h, y = _collapsed(means, [5, 5, 5, 5])
    stats = class_statistics(h, y, k)
    got = neural_collapse_metrics(stats, means, target="orthogonal")
    for key in ("nc1", "gram_distance", "gram_distance_classifier", "nc3"):
        assert abs(got[key]) < 1e-10, (key, got[key])
    assert geometry_distance(class_means(stats), "orthogonal") < 1e-12
    assert geometry_distance(class_means(stats), "etf") > 0.3  # uncentred: not an ETF
    assert nc4(*nc4_mismatches(h, (means, None), class_means(stats))) == 0.0


@pytest.mark.parametrize("decay", [(0.0, 0.0), (1e-3, 4e-3), (0.02, 0.02)])
def test_planted_imbalanced_closed_form(decay: tuple[float, float]) -> None:
    lam_w, lam_h = decay
    counts = [20, 9, 4, 2]
    n = np.array(counts, dtype=np.float64)
    k, d = 4, 7
    u = _orthonormal(d, k, 3)
    if lam_w == 0:
        a2, c2 = np.sqrt(n), 1 / np.sqrt(n)  # vanishing-regularisation limit
    else:
        a2, c2 = _dang_norms(n, lam_w, lam_h)
    assert (c2 > 0).all()
    means = torch.from_numpy(np.sqrt(c2))[:, None] * u
    w = torch.from_numpy(np.sqrt(a2))[:, None] * u
    h, y = _collapsed(means, counts)
    stats = class_statistics(h, y, k)
    kw = {"weight_decay": lam_w, "feature_decay": lam_h}
    got = neural_collapse_metrics(stats, w, target="imbalanced", **kw)
    for key in ("nc1", "gram_distance", "gram_distance_classifier", "nc3"):
        assert abs(got[key]) < 1e-10, (key, got[key])
    assert geometry_distance(class_means(stats), "orthogonal") > 0.1
    assert neural_collapse_metrics(stats, w, target="orthogonal")["nc3"] > 0.01


def test_imbalanced_closed_form_is_the_minimiser_of_the_ufm() -> None:
    # Independent check of the formula: minimise Dang et al.'s bias-free MSE plain UFM directly.
    counts = [12, 6, 3, 2]
    k, d, n = 4, 6, sum(counts)
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    targets = torch.nn.functional.one_hot(y, k).double()
    for lam_w, lam_h in ((0.02, 0.02), (0.07, 0.07)):  # the second collapses the smallest class
        g = _gen(0)
        w = (0.1 * torch.randn(k, d, generator=g, dtype=torch.float64)).requires_grad_()
        hh = (0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_()
        opt = torch.optim.LBFGS(
            [w, hh],
            max_iter=500,
            tolerance_grad=1e-13,
            tolerance_change=1e-15,
            history_size=30,
            line_search_fn="strong_wolfe",
        )

        def closure(w=w, hh=hh, opt=opt, lam_w=lam_w, lam_h=lam_h) -> torch.Tensor:
            opt.zero_grad()
            fit = ((hh @ w.T - targets) ** 2).sum() / (2 * n)
            loss = fit + lam_w / 2 * (w**2).sum() + lam_h / 2 * (hh**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        stats = class_statistics(hh.detach(), y, k)
        kw = {"weight_decay": lam_w, "feature_decay": lam_h}
        got = neural_collapse_metrics(stats, w.detach(), target="imbalanced", **kw)
        assert got["gram_distance"] < 1e-6, got
        assert got["gram_distance_classifier"] < 1e-6, got
        assert got["nc1_trace_ratio"] < 1e-10, got
        # Nonzero classes only for NC3 (a collapsed class contributes zero to both sides).
        assert got["nc3"] < 1e-10, got
        zero = _dang_norms(np.array(counts, dtype=np.float64), lam_w, lam_h)[1] == 0
        assert zero.any() == (lam_w == 0.07)


def test_target_gram_shapes_and_norms() -> None:
    counts = torch.tensor([10.0, 5.0, 1.0])
    for target in NC_TARGETS:
        g = target_gram(target, counts)
        assert g.shape == (3, 3) and g.dtype == torch.float64
        assert torch.linalg.matrix_norm(g).item() == pytest.approx(1.0, abs=1e-15)
    etf = target_gram("etf", num_classes=3)
    torch.testing.assert_close(etf, (torch.eye(3, dtype=torch.float64) - 1 / 3) / math.sqrt(2))
    d = torch.diag(target_gram("imbalanced", counts))
    torch.testing.assert_close(d, counts.double().rsqrt() / counts.double().rsqrt().norm())
    # Minority collapse: n_k <= N² λ_W λ_H gives a zero entry.
    d = torch.diag(target_gram("imbalanced", counts, weight_decay=0.1, feature_decay=0.1))
    assert d[2] == 0 and (d[:2] > 0).all()  # N² λ² = 2.56 > 1 >= ... and < 5


# --- errors -----------------------------------------------------------------------------------


def test_empty_class_raises_naming_it() -> None:
    h, y = _data(n=50, k=3)
    stats = class_statistics(h, y, 5)  # classes 3 and 4 have no examples
    for fn in (class_means, nc1, cdnv, nc1_trace_ratio, neural_collapse_metrics):
        with pytest.raises(ValueError, match=r"empty class.*\[3, 4\]"):
            fn(stats)


def test_shape_and_argument_errors_name_the_argument() -> None:
    h, y = _data(n=40, d=4, k=3)
    stats = class_statistics(h, y, 3)
    with pytest.raises(ValueError, match=r"features must be a 2-D.*\(40,\)"):
        class_statistics(h[:, 0], y, 3)
    with pytest.raises(ValueError, match=r"labels must be a 1-D tensor of shape \(40,\).*\(39,\)"):
        class_statistics(h, y[:39], 3)
    with pytest.raises(ValueError, match=r"labels must hold classes in \[0, 2\)"):
        class_statistics(h, y, 2)
    with pytest.raises(ValueError, match=r"labels must be an integer tensor"):
        class_statistics(h, y.double(), 3)
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1; got 0"):
        class_statistics(h, y, 0)
    with pytest.raises(ValueError, match=r"shift must be a tensor of shape \(4,\)"):
        class_statistics(h, y, 3, shift=torch.zeros(3))
    with pytest.raises(
        ValueError, match=r"classifier must be a 2-D floating tensor of shape \(3, 4\)"
    ):
        nc3(torch.zeros(3, 5), stats)
    with pytest.raises(ValueError, match=r"classifier_weight must be .*\(3, 4\); got \(4, 4\)"):
        neural_collapse_metrics(stats, torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"classifier_bias must be None or .*\(3,\).*\(4,\)"):
        neural_collapse_metrics(stats, torch.ones(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"target='simplex' is not supported"):
        neural_collapse_metrics(stats, target="simplex")
    with pytest.raises(ValueError, match=r"counts must be given"):
        target_gram("imbalanced", num_classes=3)
    with pytest.raises(ValueError, match=r"counts must have shape \(3,\)"):
        geometry_distance(torch.ones(3, 4), "imbalanced", torch.ones(4))
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0; got -1"):
        target_gram("imbalanced", torch.ones(3), weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"every class collapses to 0"):
        target_gram("imbalanced", torch.ones(3), weight_decay=1.0, feature_decay=1.0)
    with pytest.raises(ValueError, match=r"means must be a 2-D floating tensor of shape \(K, 4\)"):
        nc4_mismatches(h, (torch.ones(3, 4), None), torch.zeros(3, 5))
    with pytest.raises(
        ValueError, match=r"logits_or_classifier must be .*\(40, 3\); got \(40, 2\)"
    ):
        nc4_mismatches(h, torch.zeros(40, 2), class_means(stats))
    with pytest.raises(ValueError, match=r"logits_or_classifier\[1\] \(b\) must be None"):
        nc4_mismatches(h, (torch.ones(3, 4), torch.ones(2)), class_means(stats))
    with pytest.raises(ValueError, match=r"count > 0"):
        nc4(0, 0)
    with pytest.raises(ValueError, match=r"same \(num_classes, dim\)"):
        stats + ClassStatistics.zeros(4, 4)
    with pytest.raises(ValueError, match=r"rcond must be a number in \[0, 1\)"):
        nc1(stats, rcond=1.5)
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        equinorm(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"centred_means has zero rows \[1\]"):
        equiangularity(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    same = class_statistics(torch.ones(4, 2), torch.tensor([0, 0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"classes 0 and 1 with the same mean"):
        cdnv(same)
