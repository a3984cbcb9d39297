"""Pair search for opposing signals against independent references (arXiv 2311.04163)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lightning_dyn.functional import antiphase_correlation
from lightning_dyn.functional.pair_search import (
    antiphase_matrix,
    feature_groups,
    group_loss_series,
    oscillation_count,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _flips(values: list[float]) -> int:
    """Sign flips of consecutive differences, zero differences skipped (pure Python)."""
    flips, last = 0, 0
    for a, b in itertools.pairwise(values):
        if b == a:
            continue
        sign = 1 if b > a else -1
        flips += last != 0 and sign != last
        last = sign
    return flips


# --- group_loss_series ------------------------------------------------------------------------


def test_group_loss_series_matches_loop() -> None:
    window = torch.rand(6, 11, generator=_gen())
    groups = torch.tensor([0, 2, -1, 0, 2, 2, -1, 0, 3, 3, 0])  # group 1 is empty
    got = group_loss_series(window, groups, num_groups=5)  # group 4 is empty too
    assert got.shape == (6, 5) and got.dtype == torch.float64
    for t in range(6):
        for g in range(5):
            ids = [m for m in range(11) if int(groups[m]) == g]
            if not ids:
                assert math.isnan(got[t, g].item())
            else:
                ref = sum(float(window[t, m]) for m in ids) / len(ids)
                assert got[t, g].item() == pytest.approx(ref, rel=1e-12)


def test_group_loss_series_all_ungrouped_is_nan() -> None:
    got = group_loss_series(torch.rand(3, 4, generator=_gen()), torch.full((4,), -1), 2)
    assert got.shape == (3, 2) and bool(got.isnan().all())


def test_group_loss_series_rejects_bad_args() -> None:
    window = torch.rand(4, 3, generator=_gen())
    with pytest.raises(ValueError, match=r"window must be \(T, M\).*got \(3,\) and \(3,\)"):
        group_loss_series(window[0], torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"groups \(M,\).*\(4, 3\) and \(2,\)"):
        group_loss_series(window, torch.zeros(2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"groups must hold ids in \[-1, 2\); got 2"):
        group_loss_series(window, torch.tensor([0, 2, -1]), 2)
    with pytest.raises(ValueError, match=r"groups must hold ids in \[-1, 2\); got -2"):
        group_loss_series(window, torch.tensor([0, -2, 1]), 2)
    with pytest.raises(ValueError, match=r"num_groups must be an integer >= 1; got 0"):
        group_loss_series(window, torch.zeros(3, dtype=torch.long), 0)


# --- oscillation_count ------------------------------------------------------------------------


def test_oscillation_count_matches_python_with_flat_stretches() -> None:
    # Few distinct values: many zero changes (flat stretches) among the rises and falls.
    series = torch.randint(0, 3, (12, 40), generator=_gen()).double()
    got = oscillation_count(series)
    assert got.dtype == torch.long and got.shape == (40,)
    assert got.tolist() == [_flips(series[:, g].tolist()) for g in range(40)]
    series = torch.rand(9, 30, generator=_gen(1))
    assert oscillation_count(series).tolist() == [
        _flips(series[:, g].double().tolist()) for g in range(30)
    ]


@pytest.mark.parametrize("t", [3, 4, 9])
def test_oscillation_count_known_series(t: int) -> None:
    steps = torch.arange(t, dtype=torch.float64)
    falling = 5.0 - steps - 0.3 * (steps % 2)  # uneven, but always falling
    period_2 = (-1.0) ** steps + 0.01 * steps
    flat = torch.zeros(t)
    got = oscillation_count(torch.stack([falling, period_2, flat, -period_2], dim=1))
    assert got.tolist() == [0, t - 2, 0, t - 2]


def test_oscillation_count_skips_flat_stretches() -> None:
    # Changes: +, 0, 0, -, 0, +, +: two flips; a flat stretch neither flips nor resets.
    series = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 2.0, 3.0])[:, None]
    assert oscillation_count(series).tolist() == [2]
    # A rise, a plateau, a further rise: monotone, no flip.
    assert oscillation_count(torch.tensor([[0.0], [1.0], [1.0], [2.0]])).tolist() == [0]


def test_oscillation_count_rejects_short_or_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\(T, G\) tensor with T >= 3.*\(2, 4\)"):
        oscillation_count(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(T, G\) tensor.*\(5,\)"):
        oscillation_count(torch.zeros(5))


# --- antiphase_matrix -------------------------------------------------------------------------


def test_antiphase_matrix_matches_numpy_and_pairwise() -> None:
    series = torch.rand(8, 5, generator=_gen(), dtype=torch.float64)
    got = antiphase_matrix(series)
    assert got.shape == (5, 5) and got.dtype == torch.float64
    changes = np.diff(series.numpy(), axis=0)
    for a in range(5):
        for b in range(5):
            ref = np.corrcoef(changes[:, a], changes[:, b])[0, 1]
            assert got[a, b].item() == pytest.approx(ref, abs=1e-12)
            pair = antiphase_correlation(series[:, a], series[:, b])
            assert got[a, b].item() == pytest.approx(pair.item(), abs=1e-12)
    torch.testing.assert_close(got, got.T, rtol=0, atol=0)
    torch.testing.assert_close(got.diagonal(), torch.ones(5, dtype=torch.float64))


def test_antiphase_matrix_opposite_series_is_minus_one() -> None:
    a = torch.rand(6, generator=_gen()) + torch.arange(6.0)
    got = antiphase_matrix(torch.stack([a, 3.0 - 2.0 * a], dim=1))
    assert got[0, 1].item() == pytest.approx(-1.0, abs=1e-12)


def test_antiphase_matrix_constant_or_nan_column_is_zero() -> None:
    series = torch.rand(7, 5, generator=_gen(), dtype=torch.float64)
    series[:, 1] = 2.0  # constant level
    series[:, 2] = torch.arange(7.0)  # constant change: correlation undefined too
    series[3, 4] = math.nan  # an empty group at one evaluation
    got = antiphase_matrix(series)
    for dead in (1, 2, 4):
        assert got[dead].tolist() == [0.0] * 5 and got[:, dead].tolist() == [0.0] * 5
    live = [0, 3]
    ref = np.corrcoef(np.diff(series[:, live].numpy(), axis=0), rowvar=False)
    np.testing.assert_allclose(got[live][:, live].numpy(), ref, atol=1e-12)
    assert not bool(got.isnan().any())


def test_antiphase_matrix_rejects_short() -> None:
    with pytest.raises(ValueError, match=r"T >= 3.*\(2, 3\)"):
        antiphase_matrix(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(T, G\) tensor.*list"):
        antiphase_matrix([[0.0], [1.0], [2.0]])  # type: ignore[arg-type]


# --- feature_groups ---------------------------------------------------------------------------


def _blobs(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two blobs far apart in 3-D (rows [0, n) and [n, 2n)); blob A's targets alternate 0 and 1,
    blob B's are all 0. Members: the first half of each blob; the second half is more spread, so
    that some of it lies beyond the members' radius."""
    gen = _gen(seed)
    spread = torch.cat([torch.ones(n // 2), torch.full((n - n // 2,), 2.0)])[:, None]
    a = torch.randn(n, 3, generator=gen, dtype=torch.float64) * spread
    b = torch.randn(n, 3, generator=gen, dtype=torch.float64) * spread
    b = b + torch.tensor([50.0, 0.0, 0.0])
    targets = torch.cat([torch.arange(n) % 2, torch.zeros(n, dtype=torch.long)])
    members = torch.cat([torch.arange(n // 2), n + torch.arange(n // 2)])
    return torch.cat([a, b]), targets, members


def _reference_clusters(features: torch.Tensor, members: torch.Tensor, n: int) -> list[int]:
    """Blob (0 or 1) of each example within its blob's radius, else -1 (numpy, from the blobs)."""
    x, mem = features.numpy(), members.numpy()
    blob = np.arange(len(x)) >= n
    out = []
    for i in range(len(x)):
        own = mem[blob[mem] == blob[i]]
        centre = x[own].mean(axis=0)
        radius = np.linalg.norm(x[own] - centre, axis=1).max()
        out.append(int(blob[i]) if np.linalg.norm(x[i] - centre) <= radius + 1e-9 else -1)
    return out


def test_feature_groups_is_the_blob_by_label_partition() -> None:
    n = 16
    features, targets, members = _blobs(n)
    groups, keys = feature_groups(features, members, n_clusters=2, targets=targets)
    assert groups.dtype == torch.long and groups.shape == (2 * n,)
    assert keys == sorted(keys) and len(keys) == 3
    # Cluster ids are k-means' own: read the blob -> cluster map off the members.
    cluster_of_blob = [keys[int(groups[0])][0], keys[int(groups[n])][0]]
    assert sorted(cluster_of_blob) == [0, 1]
    expected_keys = sorted([(cluster_of_blob[0], 0), (cluster_of_blob[0], 1)])
    expected_keys = sorted([*expected_keys, (cluster_of_blob[1], 0)])
    assert keys == expected_keys
    ref = _reference_clusters(features, members, n)
    assert ref.count(-1) > 0 and ref.count(-1) < n  # both joiners and outsiders are tested
    for i, blob in enumerate(ref):
        want = -1 if blob == -1 else keys.index((cluster_of_blob[blob], int(targets[i])))
        assert int(groups[i]) == want, i
    # Members keep their cluster and sit in their own (cluster, target) group.
    for m in members.tolist():
        assert keys[int(groups[m])] == (cluster_of_blob[int(m >= n)], int(targets[m]))


def test_feature_groups_outlier_and_unseen_target_join_no_group() -> None:
    n = 16
    features, targets, members = _blobs(n)
    outlier = torch.tensor([[25.0, 40.0, -30.0]], dtype=torch.float64)
    features = torch.cat([features, outlier])
    # Blob B's centroid itself, but with a target no member of blob B has.
    features = torch.cat([features, features[members[n // 2 :]].mean(dim=0, keepdim=True)])
    targets = torch.cat([targets, torch.tensor([0, 1])])
    groups, keys = feature_groups(features, members, n_clusters=2, targets=targets)
    cluster_b = keys[int(groups[n])][0]
    assert (cluster_b, 1) not in keys  # no member of blob B has target 1
    assert groups[-2].item() == -1 and groups[-1].item() == -1
    same_place = feature_groups(features, members, n_clusters=2)[0]
    assert same_place[-2].item() == -1 and same_place[-1].item() == same_place[n].item() != -1


def test_feature_groups_without_targets_keys_have_none() -> None:
    n = 16
    features, _, members = _blobs(n)
    groups, keys = feature_groups(features, members, n_clusters=2)
    assert keys == [(0, None), (1, None)]
    ref = _reference_clusters(features, members, n)
    cluster_of_blob = [int(groups[0]), int(groups[n])]
    assert sorted(cluster_of_blob) == [0, 1]
    assert groups.tolist() == [-1 if b == -1 else cluster_of_blob[b] for b in ref]


def test_feature_groups_example_on_the_radius_joins() -> None:
    # An example equal to a cluster's farthest member lies exactly on the radius. More than 25
    # rows: torch.cdist's default matrix-product shortcut would put it a rounding error outside.
    for seed in range(8):
        features = torch.randn(40, 5, generator=_gen(seed), dtype=torch.float64) * 3 + 7
        members = torch.arange(20)
        groups, _ = feature_groups(features, members, n_clusters=2, seed=seed)
        centre = features[members][groups[members] == groups[0]].mean(dim=0)
        own = members[groups[members] == groups[0]]
        far = int(own[(features[own] - centre).norm(dim=1).argmax()])
        features[30] = features[far]
        groups, _ = feature_groups(features, members, n_clusters=2, seed=seed)
        assert groups[30].item() == groups[far].item(), seed


def test_feature_groups_rejects_bad_shapes() -> None:
    features = torch.randn(6, 2, generator=_gen())
    members = torch.arange(3)
    with pytest.raises(ValueError, match=r"features must be \(M, D\); got shape \(6,\)"):
        feature_groups(features[:, 0], members, 2)
    with pytest.raises(ValueError, match=r"members must be a non-empty 1-D"):
        feature_groups(features, members[None], 2)
    with pytest.raises(ValueError, match=r"members must be a non-empty 1-D"):
        feature_groups(features, members[:0], 2)
    with pytest.raises(ValueError, match=r"targets must have shape \(6,\); got \(5,\)"):
        feature_groups(features, members, 2, targets=torch.zeros(5, dtype=torch.long))
