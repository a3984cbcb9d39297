"""The loss registry: one vocabulary, one signature ``(logits, targets, reduction="mean")``."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
import torch.nn.functional as F

from lightning_dyn.functional import (
    CLASSIFICATION_LOSSES,
    ClassificationLoss,
    classification_loss,
    one_hot_square_loss,
)


def test_the_registry_names_are_the_literal() -> None:
    assert tuple(CLASSIFICATION_LOSSES) == get_args(ClassificationLoss)
    assert tuple(CLASSIFICATION_LOSSES) == ("softmax", "stablemax", "square")


@pytest.mark.parametrize("name", list(CLASSIFICATION_LOSSES))
def test_every_loss_has_the_registry_signature(name: str) -> None:
    loss = classification_loss(name)
    logits = torch.randn(6, 4, 3, dtype=torch.float64)  # F.cross_entropy's (N, K, T) layout
    targets = torch.randint(0, 4, (6, 3))
    per_position = loss(logits, targets, reduction="none")
    assert per_position.shape == (6, 3)
    torch.testing.assert_close(loss(logits, targets), per_position.mean())
    torch.testing.assert_close(loss(logits, targets, reduction="sum"), per_position.sum())
    flat = loss(logits.movedim(1, -1).reshape(-1, 4), targets.reshape(-1), reduction="none")
    torch.testing.assert_close(flat, per_position.reshape(-1))


def test_square_loss_is_half_the_squared_distance_to_the_one_hot() -> None:
    logits = torch.randn(5, 3, dtype=torch.float64)
    targets = torch.tensor([0, 2, 1, 1, 0])
    expected = 0.5 * ((logits - F.one_hot(targets, 3).double()) ** 2).sum(-1)
    torch.testing.assert_close(one_hot_square_loss(logits, targets, reduction="none"), expected)
    torch.testing.assert_close(one_hot_square_loss(logits, targets), expected.mean())
    with pytest.raises(ValueError, match=r"reduction='max' is not supported"):
        one_hot_square_loss(logits, targets, reduction="max")


def test_a_name_or_a_callable() -> None:
    assert classification_loss("softmax") is F.cross_entropy
    assert classification_loss(F.nll_loss) is F.nll_loss
    with pytest.raises(ValueError, match=r"loss_fn='cross_entropy' is not supported; choose one"):
        classification_loss("cross_entropy", "loss_fn")
