"""Searching a probe set for pairs of groups with opposing signals (arXiv 2311.04163).

The measurements of ``opposing_signals`` compare two given groups. A detector must first find
the groups: this module forms them (from the penultimate features of the examples whose loss
moved most, split by target) and screens every pair of groups at once for the antiphase
oscillation of their losses, before the costly gradient check is spent on the few survivors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dyn._checks import check_positive_int, shape_of
from lightning_dyn.functional._kmeans_steps import distances
from lightning_dyn.functional.clustering import kmeans


def _check_series(series: Tensor) -> None:
    if not isinstance(series, Tensor) or series.ndim != 2 or series.shape[0] < 3:
        raise ValueError(
            f"series must be a (T, G) tensor with T >= 3 evaluations (2 changes); got "
            f"{shape_of(series)}."
        )


def group_loss_series(window: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Mean loss of each group at each evaluation of a window of per-example losses.

    Args:
        window: ``(T, M)`` per-example losses of ``M`` probe examples at ``T`` evaluations.
        groups: ``(M,)`` group id of each example in ``[0, num_groups)``, or ``-1`` for an
            example that belongs to no group.
        num_groups: Number of groups ``G >= 1``.

    Returns:
        A float64 ``(T, G)`` tensor; NaN for a group with no example.
    """
    check_positive_int("num_groups", num_groups)
    if window.ndim != 2 or groups.shape != (window.shape[1],):
        raise ValueError(
            f"window must be (T, M) and groups (M,); got {tuple(window.shape)} and "
            f"{tuple(groups.shape)}."
        )
    bad = (groups < -1) | (groups >= num_groups)
    if bad.any():
        got = int(groups[bad][0])
        raise ValueError(f"groups must hold ids in [-1, {num_groups}); got {got}.")
    keep = groups >= 0
    idx = groups[keep].long()
    sums = torch.zeros(window.shape[0], num_groups, dtype=torch.float64, device=window.device)
    sums.index_add_(1, idx, window[:, keep].double())
    counts = torch.bincount(idx, minlength=num_groups).double()
    return sums / counts


def oscillation_count(series: Tensor) -> Tensor:
    """How often each column's step-to-step change flips sign (rise then fall, or back).

    A loss that only falls, even unevenly, has 0 flips; a period-2 oscillation over ``T``
    evaluations has ``T - 2``. Zero changes are skipped, so a flat stretch does not count.

    Args:
        series: ``(T, G)`` values of ``G`` series at ``T >= 3`` evaluations.

    Returns:
        A ``(G,)`` long tensor of sign flips.
    """
    _check_series(series)
    signs = series.double().diff(dim=0).sign()
    flips = torch.zeros(series.shape[1], dtype=torch.long, device=series.device)
    last = torch.zeros(series.shape[1], dtype=signs.dtype, device=series.device)
    for row in signs:  # T is a short window: a loop is clearer than a scan
        flips += ((row * last) < 0).long()
        last = torch.where(row != 0, row, last)
    return flips


def antiphase_matrix(series: Tensor) -> Tensor:
    """Pearson correlation of the step-to-step changes of every pair of series.

    Column-wise version of ``antiphase_correlation``: entry ``(a, b)`` is the correlation of
    ``diff(series[:, a])`` and ``diff(series[:, b])``; 0 where either column's changes are
    constant or hold a NaN (an empty group gives no evidence).

    Args:
        series: ``(T, G)`` values of ``G`` series at ``T >= 3`` evaluations.

    Returns:
        A symmetric float64 ``(G, G)`` tensor in ``[-1, 1]``.
    """
    _check_series(series)
    changes = series.double().diff(dim=0)
    valid = torch.isfinite(changes).all(dim=0)
    changes = torch.where(valid, changes, 0.0)
    changes = changes - changes.mean(dim=0)
    norms = changes.norm(dim=0)
    denom = norms[:, None] * norms[None, :]
    corr = torch.where(denom > 0, (changes.T @ changes) / denom.clamp_min(1e-300), 0.0)
    return corr.clamp(-1.0, 1.0)


def feature_groups(
    features: Tensor,
    members: Tensor,
    n_clusters: int,
    targets: Tensor | None = None,
    seed: int = 0,
) -> tuple[Tensor, list[tuple[int, int | None]]]:
    """Groups of examples by clustering the features of a few, extended to the whole probe.

    ``members`` (e.g. the examples whose loss rose or fell most) are clustered with k-means.
    Every other example joins the cluster of its nearest centroid if it lies within that
    cluster's radius (the largest member distance), so a group covers all examples carrying the
    same feature, not only those that moved most at one step. With ``targets``, each cluster is
    split by target: opposing signals are a shared feature with different labels (the paper's
    sky in planes vs. boats), which the features alone do not separate. An example whose
    (cluster, target) does not occur among the members joins no group.

    Args:
        features: ``(M, D)`` features (e.g. penultimate activations) of every probe example.
        members: Indices into ``features`` of the examples to cluster.
        n_clusters: Number of k-means clusters (fewer if the members have fewer distinct rows).
        targets: ``(M,)`` integer targets, or ``None`` not to split by target.
        seed: Seed of the k-means initialisation.

    Returns:
        ``(groups, keys)``: ``(M,)`` long group ids (``-1`` for no group) and, per group id, its
        ``(cluster, target)`` (``target`` is ``None`` without ``targets``). Ids are ordered by
        cluster, then target.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (M, D); got shape {tuple(features.shape)}.")
    if members.ndim != 1 or members.numel() == 0:
        raise ValueError(f"members must be a non-empty 1-D index tensor; got {members.shape}.")
    if targets is not None and targets.shape != (features.shape[0],):
        raise ValueError(
            f"targets must have shape ({features.shape[0]},); got {tuple(targets.shape)}."
        )
    feats = features.double()
    labels, centroids = kmeans(feats[members], n_clusters, seed=seed)
    centroids = centroids.to(feats)
    # Exact distances (no matrix-product shortcut), and the radius read from the same matrix: an
    # example equal to a cluster's farthest member lies exactly on the radius and must join.
    dist = distances(feats, centroids)
    radius = torch.zeros(len(centroids), dtype=feats.dtype, device=feats.device)
    member_dist = dist[members].gather(1, labels[:, None])[:, 0]
    radius.scatter_reduce_(0, labels, member_dist, reduce="amax")
    nearest = dist.argmin(dim=1)
    cluster = torch.where(dist.gather(1, nearest[:, None])[:, 0] <= radius[nearest], nearest, -1)
    cluster[members] = labels  # members keep their fitted cluster
    split = targets.long() if targets is not None else torch.zeros_like(cluster)
    member_keys = sorted({(int(c), int(t)) for c, t in zip(labels, split[members], strict=True)})
    groups = torch.full_like(cluster, -1)
    for gid, (c, t) in enumerate(member_keys):
        groups[(cluster == c) & (split == t)] = gid
    keys = [(c, t if targets is not None else None) for c, t in member_keys]
    return groups, keys
