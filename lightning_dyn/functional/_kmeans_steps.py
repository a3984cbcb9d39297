"""The steps of a Lloyd iteration of ``functional.clustering.kmeans``: exact distances, one-hot
membership, re-seeding of empty clusters and cluster means, each free of the accumulation orders
that vary from run to run."""

from __future__ import annotations

import torch
from torch import Tensor

CDIST_MODE = "donot_use_mm_for_euclid_dist"  # exact differences: equal rows are 0 apart


def distances(x: Tensor, centroids: Tensor) -> Tensor:
    """``(N, K)`` Euclidean distances, computed from exact coordinate differences."""
    return torch.cdist(x, centroids, compute_mode=CDIST_MODE)


def one_hot(labels: Tensor, n_clusters: int) -> Tensor:
    """``(K, N)`` bool membership matrix."""
    ids = torch.arange(n_clusters, device=labels.device)
    return labels.unsqueeze(0) == ids.unsqueeze(1)


def reseed_empty(labels: Tensor, dist: Tensor) -> Tensor:
    """Give every empty cluster one point: the point farthest from its centroid.

    ``dist`` is the ``(N, K)`` point-to-centroid distance matrix that ``labels`` were assigned
    from. Empty clusters are filled in increasing order; each takes, among points whose cluster
    has at least two points (so no other cluster is emptied), the one farthest from its own
    centroid, the lowest index on ties. With ``K <= N`` such a point always exists.
    """
    n_clusters = dist.shape[1]
    counts = one_hot(labels, n_clusters).sum(dim=1)
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return labels
    labels = labels.clone()
    own = dist.gather(1, labels.unsqueeze(1)).squeeze(1)  # distances are >= 0
    for j in empty:
        movable = counts[labels] >= 2
        i = int(torch.where(movable, own, -1.0).argmax().item())  # first maximum
        counts[labels[i]] -= 1
        counts[j] = 1
        labels[i] = j
    return labels


def cluster_means(x: Tensor, labels: Tensor, n_clusters: int) -> Tensor:
    """``(K, D)`` mean of the points of each (non-empty) cluster."""
    member = one_hot(labels, n_clusters).to(x.dtype)
    # A matrix product, not index_add_: its summation order does not vary from run to run.
    return (member @ x) / member.sum(dim=1, keepdim=True)
