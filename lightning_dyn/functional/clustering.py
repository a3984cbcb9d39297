"""Deterministic k-means: group vectors (per-example losses, gradient sketches, features).

Clustering inside a training run must give the same answer on every DDP rank and again after a
checkpoint resume, so ``kmeans`` takes its randomness from its own seeded CPU generator (never the
global RNG) and avoids the accumulation orders that vary from run to run (``index_add_`` on CUDA):
cluster sums are a one-hot matrix product and distances are computed by ``torch.cdist`` without
the matrix-product shortcut, so identical points are exactly at distance 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dyn._checks import check_positive_int, check_seed
from lightning_dyn.functional._kmeans_steps import cluster_means, distances, reseed_empty


def _check_points(points: Tensor) -> None:
    if not isinstance(points, Tensor):
        raise ValueError(
            f"points must be a 2-D floating-point tensor; got {type(points).__name__}."
        )
    if points.ndim != 2 or not points.is_floating_point():
        raise ValueError(
            f"points must be a 2-D floating-point tensor (N, D); got shape {tuple(points.shape)} "
            f"and dtype={points.dtype}."
        )
    if points.shape[0] < 1 or points.shape[1] < 1:
        raise ValueError(
            f"points must have at least one row (point) and one column (feature); got shape "
            f"{tuple(points.shape)}."
        )
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points must hold only finite values; got NaN or infinity.")


def _kmeans_plus_plus(x: Tensor, n_clusters: int, gen: torch.Generator) -> Tensor:
    """Indices of at most ``n_clusters`` distinct rows of ``x``, chosen by k-means++ (D² sampling).

    Stops early once every row equals a chosen one, so fewer indices are returned when ``x`` has
    fewer distinct rows than ``n_clusters``.
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen).item())
    chosen = [first]
    d2 = distances(x, x[first : first + 1]).squeeze(1).square()
    # Rows not equal to any chosen centre, compared exactly: the candidates for the next centre.
    fresh = (x != x[first]).any(dim=1)
    while len(chosen) < n_clusters and bool(fresh.any()):
        weights = torch.where(fresh, d2, 0.0).cpu()
        total = weights.sum()
        if not (torch.isfinite(total) and total > 0):
            # Squared distances underflowed to 0 or overflowed: fall back to uniform sampling.
            weights = fresh.cpu().double()
        nxt = int(torch.multinomial(weights, 1, generator=gen).item())
        chosen.append(nxt)
        d2 = torch.minimum(d2, distances(x, x[nxt : nxt + 1]).squeeze(1).square())
        fresh &= (x != x[nxt]).any(dim=1)
    return torch.tensor(chosen, dtype=torch.long).to(x.device)


@torch.no_grad()
def kmeans(
    points: Tensor, n_clusters: int, iters: int = 50, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Deterministic k-means: k-means++ initialisation, then Lloyd iterations.

    The initial centres are distinct data points drawn by k-means++ (each next centre with
    probability proportional to its squared distance to the nearest centre so far) from a CPU
    ``torch.Generator`` seeded with ``seed``; the global RNG is neither used nor advanced. Lloyd
    iterations (assign each point to its nearest centroid, then move each centroid to the mean of
    its points) run until the assignment stops changing or ``iters`` assignments have been made.
    Ties go to the lowest centroid index. If a cluster loses all its points, it is re-seeded with
    the point farthest from its centroid, so no cluster is ever empty.

    Fewer than ``n_clusters`` clusters are returned when there are fewer distinct points (rows of
    ``points``, compared exactly): ``n_clusters_eff = min(n_clusters, number of distinct rows)``,
    and each distinct row then gets a cluster of its own.

    Computation is in float64 whatever the dtype of ``points``. The same inputs, ``seed`` and
    device give bitwise the same result (so every DDP rank, and a resumed run, agree), given the
    same hardware and BLAS library. Memory is ``O(N * n_clusters)`` beyond the points.

    Args:
        points: ``(N, D)`` floating-point tensor, ``N >= 1``, ``D >= 1``, finite values.
        n_clusters: Requested number of clusters ``>= 1``.
        iters: Maximum number of Lloyd iterations ``>= 1``.
        seed: Seed of the k-means++ initialisation (any integer ``torch.Generator`` accepts).

    Returns:
        ``(labels, centroids)``: a long ``(N,)`` tensor of cluster ids in
        ``[0, n_clusters_eff)``, every id used at least once, and the float64
        ``(n_clusters_eff, D)`` tensor of centroids, each the mean of the points labelled with
        its id; both on the device of ``points``. If ``iters`` runs out before the assignment is
        stable, the labels are the last assignment and may not all be nearest centroids.
    """
    _check_points(points)
    check_positive_int("n_clusters", n_clusters)
    check_positive_int("iters", iters)
    check_seed(seed)

    x = points.detach().to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centroids = x[_kmeans_plus_plus(x, n_clusters, gen)]
    n_eff = centroids.shape[0]

    labels: Tensor | None = None
    for _ in range(iters):
        dist = distances(x, centroids)
        new_labels = reseed_empty(dist.argmin(dim=1), dist)
        if labels is not None and torch.equal(new_labels, labels):
            break  # centroids are already the means of these labels
        labels = new_labels
        centroids = cluster_means(x, labels, n_eff)
    assert labels is not None  # iters >= 1
    return labels, centroids
