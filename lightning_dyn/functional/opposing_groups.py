"""Opposing groups from a window of per-example losses: the search and the grouping over time.

A single search (``antiphase_candidates``) sees one window and a few dozen candidate examples,
so what it flags is a *fragment* of an opposing group: the examples that moved most at one step,
cut further by clustering. ``OpposingGroup`` and the functions after it turn fragments into
groups that persist (arXiv 2311.04163 names groups, not pairs of fragments):

- a flagged fragment pair joins the tracked group whose sides it shares examples with, or whose
  sides' loss changes it follows (correlation above ``corr_threshold``), else starts a group;
- while a group is *active* (its two sides' losses still oscillate in antiphase and, when
  measured, their gradients still oppose), every probe example is compared with each side: it
  *follows* the side when the regression coefficient of its loss changes on the side's mean loss
  changes (both centred over the window) is at least ``join_amplitude``. The coefficient, unlike
  a correlation, sees the amplitude: clean examples of the two classes move in phase with the
  planted ones but by a fraction of their swing, and stay out. An example joins after following
  a side at ``persistence`` consecutive searches and leaves after ``persistence`` searches of
  swinging as much without following it. An example whose loss stopped moving (it was learned)
  gives no evidence and stays: it still carries the feature. With targets (``split_by_target``)
  only examples of a side's label, with features only examples nearer the side's centroid than
  the rest of its label's, can join it. An inactive group keeps its members;
- groups whose sides share examples or follow each other are merged.

Everything here is a pure function of tensors; ``callbacks.OutlierPairDetector`` supplies the
probe losses, the features and the gradient cosines, and logs the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from lightning_dyn._checks import check_bool, check_fraction, check_positive_int, check_real
from lightning_dyn.functional.opposing_signals import top_loss_changes
from lightning_dyn.functional.pair_search import (
    antiphase_matrix,
    feature_groups,
    group_loss_series,
    oscillation_count,
)


@dataclass(frozen=True)
class OpposingSearchConfig:
    """Settings of the pair search and of the grouping (see the module docstring).

    Attributes:
        k: rising and falling examples that seed the candidate groups.
        n_clusters: k-means clusters of the candidates' features.
        split_by_target: split each cluster by (integer) target.
        corr_threshold: ``τ_ρ`` in (0, 1]: antiphase when the correlation of the two groups'
            loss changes is below ``-τ_ρ``; fragments follow a group's side above ``+τ_ρ``.
        cos_threshold: ``τ_c`` in [0, 1]: opposing when the gradient cosine is below ``-τ_c``.
        min_flips: sign flips of each group's loss change required in the window.
        min_group_size: candidate groups with fewer examples are ignored.
        max_pairs: antiphase candidate pairs whose gradients are compared per search.
        join_amplitude: least regression coefficient of an example's loss changes on a side's.
        persistence: consecutive searches an example must follow (or stop following) a side to
            join (or leave) it.
        seed: seed of k-means.
    """

    k: int = 32
    n_clusters: int = 4
    split_by_target: bool = True
    corr_threshold: float = 0.5
    cos_threshold: float = 0.8
    min_flips: int = 2
    min_group_size: int = 4
    max_pairs: int = 3
    join_amplitude: float = 0.5
    persistence: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "n_clusters", "min_group_size", "max_pairs", "persistence"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("min_flips", self.min_flips, 0)
        check_fraction("corr_threshold", self.corr_threshold, open_low=True)
        check_fraction("cos_threshold", self.cos_threshold)
        check_real("join_amplitude", self.join_amplitude, strictly_positive=True)
        check_bool("split_by_target", self.split_by_target)


def candidate_groups(
    window: Tensor,
    config: OpposingSearchConfig,
    features: Tensor | None = None,
    user_groups: Tensor | None = None,
    targets: Tensor | None = None,
) -> tuple[Tensor, list[str]]:
    """Group id of every probe example (``-1``: none) and a name per group, for one search.

    The ``k`` examples whose loss rose most and fell most at the last step of ``window``
    (``(T, M)``) are the candidates. With ``user_groups`` (``(M,)`` ids) every example of a
    candidate's group joins; else the candidates' ``features`` (``(M, D)``) are clustered
    (``pair_search.feature_groups``, split by ``targets`` when given and ``split_by_target``).
    Groups smaller than ``min_group_size`` are dropped and the rest renumbered densely.
    """
    rising, falling = top_loss_changes(window[-2], window[-1], min(config.k, window.shape[1]))
    members = torch.cat([rising, falling]).unique()
    if user_groups is not None:
        chosen = user_groups[members].unique()
        groups = torch.full_like(user_groups, -1)
        for gid, value in enumerate(chosen.tolist()):
            groups[user_groups == value] = gid
        names = [f"group {value}" for value in chosen.tolist()]
    elif features is not None:
        split = targets if config.split_by_target else None
        groups, keys = feature_groups(features, members, config.n_clusters, split, config.seed)
        names = [f"cluster {c}" + ("" if t is None else f", target {t}") for c, t in keys]
    else:
        raise ValueError("candidate_groups needs features or user_groups to form the groups.")
    sizes = torch.bincount(groups[groups >= 0], minlength=len(names))
    kept = (sizes >= config.min_group_size).nonzero().flatten()
    remap = torch.full((len(names) + 1,), -1, dtype=torch.long)
    remap[kept] = torch.arange(len(kept))
    return remap[groups], [names[g] for g in kept.tolist()]


def antiphase_candidates(
    series: Tensor, config: OpposingSearchConfig
) -> tuple[list[tuple[float, int, int]], tuple[float, int, int]]:
    """The pairs of groups worth a gradient check, and the most antiphase pair overall.

    ``series`` is ``(T, G)`` group mean losses (``G >= 2``). A candidate ``(corr, a, b)`` has
    ``corr < -corr_threshold`` and both losses flipping at least ``min_flips`` times; at most
    ``max_pairs``, most antiphase first.
    """
    corr = antiphase_matrix(series)
    oscillating = oscillation_count(series) >= config.min_flips
    upper = torch.ones_like(corr, dtype=torch.bool).triu(1)
    pairs = sorted((float(corr[a, b]), a, b) for a, b in upper.nonzero().tolist())
    chosen = [
        p
        for p in pairs
        if p[0] < -config.corr_threshold and oscillating[p[1]] and oscillating[p[2]]
    ]
    return chosen[: config.max_pairs], pairs[0]


@dataclass
class OpposingGroup:
    """A tracked pair of opposing sides over the probe (``M`` examples).

    Attributes:
        members: ``(2, M)`` bool: side A, side B (disjoint).
        streak: ``(2, M)`` long: ``n > 0`` searches in a row the example followed the side,
            ``-n`` searches in a row it swung without following it (active searches only).
        first_step: optimizer step of the search that started the group.
        last_step: last step at which the group was active.
        persistence: number of searches at which the group was active.
        grad_cos: cosine of the two sides' mean-loss gradients when last measured.
    """

    members: Tensor
    streak: Tensor
    first_step: int
    last_step: int
    persistence: int = 1
    grad_cos: float = float("nan")
    names: tuple[str, str] = ("A", "B")

    @property
    def sizes(self) -> tuple[int, int]:
        return int(self.members[0].sum()), int(self.members[1].sum())

    def describe(self, indices: Tensor) -> dict[str, Any]:
        """The group for a user: its sides as dataset ``indices`` (``(M,)``) and its record."""
        return {
            "indices": tuple(indices[m].tolist() for m in self.members),
            "names": self.names,
            "sizes": self.sizes,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "persistence": self.persistence,
            "grad_cos": self.grad_cos,
        }

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> OpposingGroup:
        return cls(**state)


def pair_series(window: Tensor, side_a: Tensor, side_b: Tensor) -> Tensor:
    """``(T, 2)`` mean loss over ``window`` of the examples of two ``(M,)`` masks (A wins ties)."""
    ids = torch.full(side_a.shape, -1, dtype=torch.long)
    ids[side_b] = 1
    ids[side_a] = 0
    return group_loss_series(window, ids, 2)


def side_series(window: Tensor, group: OpposingGroup) -> Tensor:
    """``(T, 2)`` mean loss of the group's two sides over ``window``."""
    return pair_series(window, group.members[0], group.members[1])


def _centred_changes(values: Tensor) -> Tensor:
    changes = values.double().diff(dim=0)
    return changes - changes.mean(dim=0)


def side_coefficients(window: Tensor, series: Tensor) -> Tensor:
    """``(2, M)`` regression coefficient of every example's loss changes on each side's.

    ``β = <c_i, c_s> / <c_s, c_s>`` with ``c`` the centred step-to-step changes over the window:
    about 1 for an example that swings with the side as much as its average member, 0 for one
    that does not move with it; 0 where the side does not move or holds no example.
    """
    examples, sides = _centred_changes(window), _centred_changes(series)
    sides = torch.where(torch.isfinite(sides), sides, 0.0)
    energy = (sides * sides).sum(dim=0)
    beta = sides.T @ examples / energy.clamp_min(1e-300)[:, None]
    return torch.where(energy[:, None] > 0, beta, 0.0)


def is_antiphase(series: Tensor, config: OpposingSearchConfig) -> bool:
    """Whether two sides' losses (``(T, 2)``) oscillate in antiphase."""
    if not torch.isfinite(series).all():
        return False
    corr = float(antiphase_matrix(series)[0, 1])
    return corr < -config.corr_threshold and bool(
        (oscillation_count(series) >= config.min_flips).all()
    )


def _follows(window: Tensor, mask: Tensor, series: Tensor, config: OpposingSearchConfig) -> bool:
    """Whether the examples ``mask`` (a fragment's side) move with a side's ``series``."""
    mine = group_loss_series(window, torch.where(mask, 0, -1), 1)
    both = torch.cat([mine, series[:, None]], dim=1)
    return float(antiphase_matrix(both)[0, 1]) > config.corr_threshold


def _matches(
    window: Tensor, sides: tuple[Tensor, Tensor], group: OpposingGroup, cfg: OpposingSearchConfig
) -> int:
    """+1 when ``sides`` (A', B') lie on the group's (A, B), -1 when swapped, 0 when neither."""
    series = side_series(window, group)
    for orientation, (first, second) in ((1, sides), (-1, sides[::-1])):
        if all(
            bool((mask & group.members[s]).any()) or _follows(window, mask, series[:, s], cfg)
            for s, mask in enumerate((first, second))
        ):
            return orientation
    return 0


def absorb_fragment(
    groups: list[OpposingGroup],
    window: Tensor,
    sides: tuple[Tensor, Tensor],
    step: int,
    grad_cos: float,
    config: OpposingSearchConfig,
    names: tuple[str, str] = ("A", "B"),
) -> list[OpposingGroup]:
    """``groups`` with a flagged fragment pair (two ``(M,)`` masks) added.

    A fragment lying on a tracked group changes nothing here: ``update_group`` decides which
    examples join. Otherwise it starts a group whose members are the fragment's examples.
    """
    for group in groups:
        if _matches(window, sides, group, config):
            return groups
    members = torch.stack([sides[0], sides[1] & ~sides[0]])
    streak = members.long() * config.persistence
    new = OpposingGroup(members, streak, step, step, 1, grad_cos, names)
    return [*groups, new]


def eligible(members: Tensor, targets: Tensor | None, features: Tensor | None) -> Tensor:
    """``(2, M)`` bool: which examples may join each side (see :func:`update_group`)."""
    allowed = torch.ones_like(members)
    for side in range(2):
        if not members[side].any():
            continue
        same_label = torch.ones_like(members[side])
        if targets is not None:
            same_label = torch.isin(targets, targets[members[side]])
            allowed[side] &= same_label
        rest = same_label & ~members[0] & ~members[1]
        if features is not None and rest.any():
            feats = features.double()
            near = (feats - feats[members[side]].mean(dim=0)).norm(dim=1)
            far = (feats - feats[rest].mean(dim=0)).norm(dim=1)
            allowed[side] &= near <= far
    return allowed


def update_group(
    group: OpposingGroup,
    window: Tensor,
    step: int,
    config: OpposingSearchConfig,
    grad_cos: float | None = None,
    targets: Tensor | None = None,
    features: Tensor | None = None,
) -> OpposingGroup:
    """One search's membership update of ``group`` (unchanged when it is not active).

    Active: the sides are antiphase and ``grad_cos`` (when given) is below ``-cos_threshold``.
    With ``targets`` (``(M,)`` integer labels) an example can join a side only if its label is
    one of the side's members' labels: a side is one feature under one label (the pairs are
    split by target), and examples of other classes swinging along in a wider instability are
    not part of it. With ``features`` (``(M, D)``) only examples nearer the side's feature
    centroid than the centroid of the other examples of its labels can join (``eligible``): the
    side shares a feature, and clean examples of its class caught in the same swing do not.
    """
    series = side_series(window, group)
    opposing = grad_cos is None or grad_cos < -config.cos_threshold
    if not (opposing and is_antiphase(series, config)):
        return group if grad_cos is None else replace(group, grad_cos=grad_cos)
    beta = side_coefficients(window, series)
    follows = (beta >= config.join_amplitude) & (beta >= beta.flip(0))  # one side at most
    # An example that swings as much as the side but not with it disagrees; one whose loss no
    # longer moves (learned) gives no evidence and keeps its streak: it still carries the feature.
    swing = _centred_changes(window).norm(dim=0)
    side_swing = torch.nan_to_num(_centred_changes(series)).norm(dim=0)
    moving = swing[None, :] >= config.join_amplitude * side_swing[:, None]
    disagrees = moving & ~follows
    streak = torch.where(follows, group.streak.clamp_min(0) + 1, group.streak)
    streak = torch.where(disagrees, group.streak.clamp_max(0) - 1, streak)
    joins = (streak >= config.persistence) & eligible(group.members, targets, features)
    members = (group.members | joins) & ~(streak <= -config.persistence)
    members[1] &= ~members[0]
    return replace(
        group,
        members=members,
        streak=streak,
        last_step=step,
        persistence=group.persistence + 1,
        grad_cos=group.grad_cos if grad_cos is None else grad_cos,
    )


def merge_groups(
    groups: list[OpposingGroup], window: Tensor, config: OpposingSearchConfig
) -> list[OpposingGroup]:
    """Groups whose sides share examples or move together, merged (the older one's names)."""
    merged: list[OpposingGroup] = []
    for group in sorted(groups, key=lambda g: g.first_step):
        for i, kept in enumerate(merged):
            orientation = _matches(window, (group.members[0], group.members[1]), kept, config)
            if orientation:
                other = group.members if orientation > 0 else group.members.flip(0)
                streak = group.streak if orientation > 0 else group.streak.flip(0)
                members = kept.members | other
                members[1] &= ~members[0]
                merged[i] = replace(
                    kept,
                    members=members,
                    streak=torch.maximum(kept.streak, streak),
                    last_step=max(kept.last_step, group.last_step),
                    persistence=max(kept.persistence, group.persistence),
                )
                break
        else:
            merged.append(group)
    return merged


def flag_pairs(
    series: Tensor, config: OpposingSearchConfig, cosine: Callable[[int, int], float]
) -> tuple[list[tuple[float, int, int]], dict[str, float]]:
    """The flagged pairs ``(grad_cos, a, b)`` among the groups of ``series`` (``(T, G)``), and
    the search's metrics: ``cosine(a, b)`` (the gradient check) is called for the
    ``antiphase_candidates`` only. The metrics describe the reported pair: the first flagged,
    else the first compared, else the most antiphase."""
    candidates, report = antiphase_candidates(series, config)
    flagged: list[tuple[float, int, int]] = []
    report_cos = None
    for pair_corr, a, b in candidates:
        cos = cosine(a, b)
        if report_cos is None or (cos < -config.cos_threshold and not flagged):
            report, report_cos = (pair_corr, a, b), cos
        if cos < -config.cos_threshold:
            flagged.append((cos, a, b))
    metrics = {
        "num_flagged": float(len(flagged)),
        "pair_corr": report[0],
        "group_loss_a": float(series[-1, report[1]]),
        "group_loss_b": float(series[-1, report[2]]),
    }
    if report_cos is not None:
        metrics["pair_grad_cos"] = report_cos
    return flagged, metrics


def track_groups(
    groups: list[OpposingGroup],
    window: Tensor,
    step: int,
    fragments: Sequence[tuple[tuple[Tensor, Tensor], float, tuple[str, str]]],
    side_cosine: Callable[[Tensor, Tensor], float],
    config: OpposingSearchConfig,
    targets: Tensor | None = None,
    features: Tensor | None = None,
) -> list[OpposingGroup]:
    """One search of the grouping: the flagged ``fragments`` (sides, cosine, names) absorbed,
    every group's membership updated (``side_cosine(mask_a, mask_b)`` checks the gradients of
    the antiphase ones; ``targets``, ``features`` as in :func:`update_group`), then meeting
    groups merged."""
    for sides, cos, names in fragments:
        groups = absorb_fragment(groups, window, sides, step, cos, config, names)
    updated = []
    for group in groups:
        cos = None
        if is_antiphase(side_series(window, group), config):
            cos = side_cosine(group.members[0], group.members[1])
        updated.append(update_group(group, window, step, config, cos, targets, features))
    return merge_groups(updated, window, config)
