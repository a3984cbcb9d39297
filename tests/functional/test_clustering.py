"""k-means against independent references: known blobs, brute-force optima, recomputed means."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lightning_dyn.functional import kmeans
from lightning_dyn.functional._kmeans_steps import reseed_empty


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(per_blob: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated 2-D Gaussian blobs, shuffled; returns ``(points, true_labels)``."""
    means = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    truth = torch.arange(3).repeat_interleave(per_blob)
    points = means[truth] + 0.5 * torch.randn(3 * per_blob, 2, generator=_gen(seed))
    perm = torch.randperm(3 * per_blob, generator=_gen(seed + 1))
    return points[perm], truth[perm]


def _inertia(points: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Sum of squared distances to the cluster means, recomputed from scratch in numpy."""
    total = 0.0
    for j in range(k):
        members = points[labels == j]
        total += float(((members - members.mean(axis=0)) ** 2).sum())
    return total


def _brute_force_optimum(points: np.ndarray, k: int) -> float:
    """Smallest inertia over every partition of the points into ``k`` non-empty clusters."""
    best = float("inf")
    for labels in itertools.product(range(k), repeat=len(points)):
        labels_arr = np.array(labels)
        if len(set(labels)) == k:
            best = min(best, _inertia(points, labels_arr, k))
    return best


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two labelings group the points identically (up to renaming the labels)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# --- recovery of known structure --------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recovers_separated_blobs(seed: int, dtype: torch.dtype) -> None:
    points, truth = _blobs(seed=seed)
    labels, centroids = kmeans(points.to(dtype), 3, seed=seed)
    assert labels.dtype == torch.long and labels.shape == (120,)
    assert centroids.dtype == torch.float64 and centroids.shape == (3, 2)
    assert _same_partition(labels, truth)


def test_same_partition_helper_detects_a_difference() -> None:
    a = torch.tensor([0, 0, 1, 1])
    assert _same_partition(a, torch.tensor([1, 1, 0, 0]))
    assert not _same_partition(a, torch.tensor([0, 1, 1, 1]))
    assert not _same_partition(a, torch.tensor([0, 0, 0, 0]))


# --- brute-force optimum ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_finds_the_brute_force_optimum_on_a_clear_case(seed: int) -> None:
    # Two groups of 4 with different spreads, far apart: the optimal 2-partition is the groups.
    low = [[0.0, 0.0], [1.0, 0.5], [0.2, 1.3], [1.1, 1.0]]
    high = [[8.0, 7.0], [9.5, 8.0], [8.3, 9.1], [10.0, 7.0]]
    points = torch.tensor(low + high, dtype=torch.float64)
    labels, _ = kmeans(points, 2, seed=seed)
    got = _inertia(points.numpy(), labels.numpy(), 2)
    optimum = _brute_force_optimum(points.numpy(), 2)
    assert got == pytest.approx(optimum, rel=1e-12)
    assert _same_partition(labels, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("data_seed", range(4))
def test_inertia_never_below_brute_force_optimum(k: int, data_seed: int) -> None:
    points = torch.randn(8, 2, generator=_gen(data_seed), dtype=torch.float64)
    optimum = _brute_force_optimum(points.numpy(), k)
    for seed in range(3):
        labels, centroids = kmeans(points, k, seed=seed)
        got = _inertia(points.numpy(), labels.numpy(), k)
        assert got >= optimum * (1 - 1e-12)
        # The returned centroids give the same inertia as the recomputed means.
        direct = float(((points - centroids[labels]) ** 2).sum())
        assert direct == pytest.approx(got, rel=1e-12)


# --- centroids and the Lloyd fixed point ------------------------------------------------------


def test_centroids_are_the_means_of_their_points_and_points_are_nearest() -> None:
    points = torch.randn(300, 4, generator=_gen(7))
    labels, centroids = kmeans(points, 6, iters=300, seed=3)
    assert sorted(set(labels.tolist())) == list(range(6))
    for j in range(6):
        torch.testing.assert_close(centroids[j], points[labels == j].double().mean(dim=0))
    # Converged: every point is labelled with (one of) its nearest centroids.
    x, c = points.double().numpy(), centroids.numpy()
    d = np.sqrt(((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1))
    own = d[np.arange(300), labels.numpy()]
    assert np.all(own <= d.min(axis=1) + 1e-12)


def test_iters_one_is_the_assignment_to_the_initial_centres() -> None:
    points = torch.randn(50, 3, generator=_gen(2), dtype=torch.float64)
    labels, centroids = kmeans(points, 4, iters=1)
    assert sorted(set(labels.tolist())) == list(range(4))
    for j in range(4):
        torch.testing.assert_close(centroids[j], points[labels == j].mean(dim=0))


# --- determinism ------------------------------------------------------------------------------


def test_deterministic_and_independent_of_the_global_rng() -> None:
    points = torch.randn(200, 5, generator=_gen(11))
    state = torch.get_rng_state()
    labels_a, centroids_a = kmeans(points, 7, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not used
    torch.manual_seed(12345)
    labels_b, centroids_b = kmeans(points, 7, seed=5)
    assert torch.equal(labels_a, labels_b)
    assert torch.equal(centroids_a, centroids_b)
    # The float64 computation makes a float32 input and its float64 copy agree bitwise.
    labels_c, centroids_c = kmeans(points.double(), 7, seed=5)
    assert torch.equal(labels_a, labels_c)
    assert torch.equal(centroids_a, centroids_c)


def test_seed_changes_the_initialisation() -> None:
    points = torch.randn(200, 5, generator=_gen(11))
    results = {tuple(kmeans(points, 7, iters=1, seed=s)[0].tolist()) for s in range(5)}
    assert len(results) > 1


# --- fewer clusters than requested ------------------------------------------------------------


@pytest.mark.parametrize("n_clusters", [3, 5, 50])
def test_fewer_distinct_points_than_clusters(n_clusters: int) -> None:
    distinct = torch.tensor([[0.1, 2.0], [-1.0, 0.3], [4.0, 4.0]], dtype=torch.float64)
    which = torch.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1, 0, 0, 2])
    points = distinct[which]
    labels, centroids = kmeans(points, n_clusters)
    assert centroids.shape == (3, 2)
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    assert _same_partition(labels, which)  # one cluster per distinct row
    torch.testing.assert_close(centroids[labels], points)


def test_many_duplicates_on_a_grid() -> None:
    points = torch.randint(0, 3, (60, 2), generator=_gen(4)).double()
    n_distinct = torch.unique(points, dim=0).shape[0]
    labels, centroids = kmeans(points, 12)
    assert centroids.shape == (n_distinct, 2)
    assert sorted(set(labels.tolist())) == list(range(n_distinct))
    torch.testing.assert_close(centroids[labels], points)


def test_fewer_points_than_clusters() -> None:
    points = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    labels, centroids = kmeans(points, 5)
    assert sorted(labels.tolist()) == [0, 1]
    torch.testing.assert_close(centroids[labels], points.double())


def test_single_point() -> None:
    points = torch.tensor([[0.5, -2.0, 3.0]], dtype=torch.bfloat16)
    labels, centroids = kmeans(points, 4)
    assert labels.tolist() == [0]
    assert torch.equal(centroids, points.double())


# --- empty clusters ---------------------------------------------------------------------------


def test_reseed_empty_takes_the_farthest_point_without_emptying_another_cluster() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1])  # clusters 2 and 3 are empty
    own = torch.tensor([1.0, 5.0, 2.0, 9.0, 6.0], dtype=torch.float64)
    dist = torch.full((5, 4), 100.0, dtype=torch.float64)
    dist[torch.arange(5), labels] = own
    got = reseed_empty(labels, dist)
    # Cluster 2 takes point 3 (farthest, 9.0). Point 4 (6.0) is then alone in cluster 1, so
    # cluster 3 takes point 1 (5.0).
    assert got.tolist() == [0, 3, 0, 2, 1]
    assert labels.tolist() == [0, 0, 0, 1, 1]  # input not modified
    assert reseed_empty(got, dist) is got  # nothing to do


# --- argument checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "match"),
    [
        ([[0.0, 1.0]], r"points must be a 2-D floating-point tensor; got list"),
        (torch.zeros(5), r"points must be a 2-D.*\(5,\)"),
        (torch.zeros(2, 3, 4), r"points must be a 2-D.*\(2, 3, 4\)"),
        (torch.zeros(4, 2, dtype=torch.long), r"points must be a 2-D floating.*int64"),
        (torch.zeros(0, 3), r"points must have at least one row.*\(0, 3\)"),
        (torch.zeros(3, 0), r"points must have at least one row.*\(3, 0\)"),
        (torch.tensor([[0.0, float("nan")]]), r"points must hold only finite"),
        (torch.tensor([[0.0], [float("inf")]]), r"points must hold only finite"),
    ],
)
def test_rejects_bad_points(points: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kmeans(points, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_rejects_bad_n_clusters(value: object) -> None:
    with pytest.raises(ValueError, match=r"n_clusters must be an integer >= 1"):
        kmeans(torch.zeros(4, 2), value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -3, 1.5, False])
def test_rejects_bad_iters(value: object) -> None:
    with pytest.raises(ValueError, match=r"iters must be an integer >= 1"):
        kmeans(torch.zeros(4, 2), 2, iters=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1.0, True, "0", None, 2**64, -(2**63) - 1])
def test_rejects_bad_seed(value: object) -> None:
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        kmeans(torch.zeros(4, 2), 2, seed=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-(2**63), -1, 2**64 - 1])
def test_accepts_the_whole_generator_seed_range(seed: int) -> None:
    labels, _ = kmeans(torch.randn(10, 2, generator=_gen()), 2, seed=seed)
    assert sorted(set(labels.tolist())) == [0, 1]


# --- optional: scikit-learn -------------------------------------------------------------------


def test_inertia_matches_sklearn_on_blobs() -> None:
    cluster = pytest.importorskip("sklearn.cluster")
    points, _ = _blobs(seed=9)
    x = points.double().numpy()
    ref = cluster.KMeans(n_clusters=3, n_init=10, random_state=0).fit(x)
    labels, _ = kmeans(points, 3)
    assert _inertia(x, labels.numpy(), 3) == pytest.approx(ref.inertia_, rel=1e-9)
    assert _same_partition(labels, torch.from_numpy(ref.labels_).long())
