"""The recipes' one MLP builder: Linear (+ BatchNorm) + activation per pair of widths."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

from torch import nn


def hidden_layers(
    sizes: Sequence[int],
    activation: Callable[[], nn.Module] = nn.ReLU,
    *,
    bias: bool = True,
    batch_norm: bool = False,
) -> list[nn.Module]:
    """``[Linear(a, b), (BatchNorm1d(b),) activation(), ...]`` for consecutive ``sizes`` ``a, b``.

    The caller adds its own input transform and output layer; the order of construction (hence
    the initialisation drawn from torch's generator) is that of the layers.
    """
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        norm = [nn.BatchNorm1d(n_out)] if batch_norm else []
        layers += [nn.Linear(n_in, n_out, bias=bias), *norm, activation()]
    return layers
