"""Opposing groups: amplitude-aware membership, persistence, matching and merging of fragments."""

from __future__ import annotations

import pytest
import torch

from lightning_dyn.functional.opposing_groups import (
    OpposingGroup,
    OpposingSearchConfig,
    absorb_fragment,
    antiphase_candidates,
    is_antiphase,
    merge_groups,
    side_coefficients,
    update_group,
)

T = 8  # evaluations in a window


def _window(amplitudes: list[float], phase: list[int], trend: float = -0.01) -> torch.Tensor:
    """``(T, M)`` losses: a falling trend plus a period-2 swing of ``amplitude`` in ``phase``."""
    t = torch.arange(T, dtype=torch.float64)[:, None]
    swing = torch.tensor(amplitudes, dtype=torch.float64) * torch.tensor(phase, dtype=torch.float64)
    return 1.0 + trend * t + swing * (-1.0) ** t


# Examples 0-3 swing +1, 4-7 swing -1 (the two planted sides), 8-11 swing +0.1 with side A (clean
# examples of A's class, in phase but small), 12-15 do not swing.
AMPLITUDES = [1.0] * 8 + [0.1] * 4 + [0.0] * 4
PHASE = [1] * 4 + [-1] * 4 + [1] * 4 + [1] * 4


def _masks(*ranges: range, m: int = 16) -> tuple[torch.Tensor, ...]:
    out = []
    for r in ranges:
        mask = torch.zeros(m, dtype=torch.bool)
        mask[list(r)] = True
        out.append(mask)
    return tuple(out)


def test_side_coefficients_are_the_regression_slopes_on_each_side() -> None:
    window = _window(AMPLITUDES, PHASE)
    series = torch.stack([window[:, :4].mean(1), window[:, 4:8].mean(1)], dim=1)
    beta = side_coefficients(window, series)
    # Closed form: an example swinging c times the side's swing in phase has slope c; opposite
    # phase -c; the trend is removed by the centring.
    expected_a = torch.tensor([1.0] * 4 + [-1.0] * 4 + [0.1] * 4 + [0.0] * 4, dtype=torch.float64)
    torch.testing.assert_close(beta[0], expected_a)
    torch.testing.assert_close(beta[1], -expected_a)


def test_members_join_after_persistence_and_small_swingers_stay_out() -> None:
    config = OpposingSearchConfig(persistence=3, join_amplitude=0.5)
    window = _window(AMPLITUDES, PHASE)
    seed_a, seed_b = _masks(range(0, 2), range(4, 6))  # a fragment: half of each side
    groups = absorb_fragment([], window, (seed_a, seed_b), step=10, grad_cos=-0.9, config=config)
    assert len(groups) == 1 and groups[0].sizes == (2, 2)
    group = groups[0]
    sizes = []
    for step in range(11, 15):
        group = update_group(group, window, step, config, grad_cos=-0.95)
        sizes.append(group.sizes)
    # The fragment's members were members at once; the rest of each side (streak 1, 2, then 3)
    # join at the third search; the clean in-phase swingers (slope 0.1) never do.
    assert sizes == [(2, 2), (2, 2), (4, 4), (4, 4)]
    assert group.members[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert group.members[1].nonzero().flatten().tolist() == [4, 5, 6, 7]
    assert group.persistence == 5 and group.last_step == 14 and group.first_step == 10


def test_a_member_swinging_against_its_side_leaves_and_a_learned_one_stays() -> None:
    config = OpposingSearchConfig(persistence=2)
    window = _window(AMPLITUDES, PHASE)
    sides = _masks(range(0, 4), range(4, 8))
    group = absorb_fragment([], window, sides, 0, -0.9, config)[0]
    changed, phase = list(AMPLITUDES), list(PHASE)
    changed[1] = 0.0  # example 1 was learned: its loss no longer moves
    phase[0] = -1  # example 0 now swings as much, against side A: with side B
    quiet = _window(changed, phase)
    group = update_group(group, quiet, 1, config, grad_cos=-0.9)
    assert group.sizes == (4, 4)  # one miss
    group = update_group(group, quiet, 2, config, grad_cos=-0.9)
    assert not group.members[0, 0] and group.members[1, 0]  # moved to B
    assert group.members[0, 1] and group.sizes == (3, 5)
    # Gradients no longer opposed: no evidence, no change, but the cosine is recorded.
    same = update_group(group, window, 3, config, grad_cos=0.1)
    assert torch.equal(same.members, group.members) and same.grad_cos == 0.1
    # Nothing swings any more: not antiphase, nothing changes.
    flat = _window([0.0] * 16, PHASE)
    assert not is_antiphase(flat[:, :2], config)
    assert torch.equal(update_group(group, flat, 4, config, -0.9).members, group.members)


def test_a_fragment_on_a_tracked_group_is_absorbed_and_another_starts_a_group() -> None:
    config = OpposingSearchConfig()
    window = _window(AMPLITUDES, PHASE)
    groups = absorb_fragment([], window, _masks(range(0, 2), range(4, 6)), 0, -0.9, config)
    # Disjoint examples that swing with the same sides (swapped order): the same group.
    groups = absorb_fragment(groups, window, _masks(range(6, 8), range(2, 4)), 1, -0.9, config)
    assert len(groups) == 1
    # A pair made of other examples moving differently: a new group.
    other = _window([0.0] * 12 + [1.0] * 4, [1] * 12 + [1, 1, -1, -1])
    groups = absorb_fragment(groups, other, _masks(range(12, 14), range(14, 16)), 2, -0.9, config)
    assert len(groups) == 2


def test_groups_sharing_examples_merge() -> None:
    config = OpposingSearchConfig()
    window = _window(AMPLITUDES, PHASE)
    m = 16

    def group(a: range, b: range, first: int) -> OpposingGroup:
        members = torch.stack(_masks(a, b, m=m))
        return OpposingGroup(members, members.long(), first, first)

    merged = merge_groups(
        [group(range(0, 3), range(4, 6), 5), group(range(2, 4), range(6, 8), 2)], window, config
    )
    assert len(merged) == 1
    assert merged[0].sizes == (4, 4) and merged[0].first_step == 2


def test_antiphase_candidates_need_both_sides_to_oscillate() -> None:
    config = OpposingSearchConfig(max_pairs=5)
    window = _window([1.0, 1.0, 0.0], [1, -1, 1])
    chosen, most = antiphase_candidates(window, config)
    assert [(a, b) for _, a, b in chosen] == [(0, 1)] and most[1:] == (0, 1)
    assert chosen[0][0] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"persistence": 0}, "persistence"),
        ({"join_amplitude": 0.0}, "join_amplitude"),
        ({"corr_threshold": 0.0}, "corr_threshold"),
        ({"cos_threshold": 1.5}, "cos_threshold"),
        ({"split_by_target": 1}, "split_by_target"),
    ],
)
def test_bad_settings_are_refused_with_the_argument_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpposingSearchConfig(**kwargs)


def test_only_examples_of_the_sides_label_and_feature_may_join() -> None:
    from lightning_dyn.functional.opposing_groups import eligible

    # Side A: examples 0-1 (label 0, feature near +10); side B: 4-5 (label 1, near -10).
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    features = torch.tensor([[10.0], [10.2], [9.9], [0.1], [-10.0], [-9.8], [0.0], [10.0]])
    members = torch.stack(_masks(range(0, 2), range(4, 6), m=8))
    allowed = eligible(members, targets, features)
    # Example 2 (label 0, the feature) may join A; 3 (label 0, clean: nearer the rest of label
    # 0) may not; 7 has the feature but label 2: not A. Example 6 (label 1, clean) not B.
    assert allowed[0].tolist() == [True, True, True, False, False, False, False, False]
    assert allowed[1].tolist() == [False, False, False, False, True, True, False, False]
    # Without labels or features every example may join.
    assert eligible(members, None, None).all()


def test_clean_examples_of_a_sides_class_swinging_with_it_do_not_join() -> None:
    config = OpposingSearchConfig(persistence=1)
    # Examples 8-11 now swing as much as side A (a wider instability) but carry no feature.
    amplitudes = [1.0] * 12 + [0.0] * 4
    window = _window(amplitudes, PHASE)
    targets = torch.tensor([0] * 4 + [1] * 4 + [0] * 4 + [2] * 4)
    features = torch.cat([torch.full((4, 1), 5.0), torch.full((4, 1), -5.0), torch.zeros(8, 1)])
    group = absorb_fragment([], window, _masks(range(0, 2), range(4, 6)), 0, -0.9, config)[0]
    free = update_group(group, window, 1, config, -0.9)
    gated = update_group(group, window, 1, config, -0.9, targets, features)
    assert free.members[0, 8:12].all()  # without the gate they would join
    assert gated.members[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert gated.members[1].nonzero().flatten().tolist() == [4, 5, 6, 7]
