"""The gaussian_mixture recipe's network options (the neural-collapse experiment's setting)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_dyn.recipes import GaussianMixtureModule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_batch_norm_follows_every_hidden_linear_layer() -> None:
    plain = GaussianMixtureModule(10, 32, width=8, depth=3).model.body
    normed = GaussianMixtureModule(10, 32, width=8, depth=3, batch_norm=True).model.body
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU] * 3
    assert [type(m) for m in normed] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 3
    # Eval mode uses the running statistics: one sample gives the same output alone or batched.
    module = GaussianMixtureModule(10, 32, width=8, depth=2, batch_norm=True)
    module.train()
    module(torch.randn(16, 32))  # moves the running statistics
    module.eval()
    x = torch.randn(4, 32)
    torch.testing.assert_close(module(x[:1]), module(x)[:1])


def test_batch_norm_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="batch_norm"):
        GaussianMixtureModule(batch_norm="yes")
