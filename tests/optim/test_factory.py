"""One optimizer protocol: a recipe's ``optimizer`` is a function of the module."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from lightning_dyn.optim import LANTON, build_optimizer, param_groups
from lightning_dyn.recipes._optimizer import recipe_optimizer


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)


def test_explicit_zero_learning_rates_are_kept() -> None:
    groups = param_groups(_Net(), lr=0.02, sign_lr=0.0, adamw_lr=0.0)
    assert {g["lmo"]: g["lr"] for g in groups} == {"spectral": 0.02, "sign": 0.0, "adamw": 0.0}
    muon = param_groups(_Net(), lr=0.02, adamw_lr=0.0, embeddings_as="adamw")
    assert [(g["lmo"], g["lr"]) for g in muon] == [
        ("spectral", 0.02),
        ("adamw", 0.0),
        ("adamw", 0.0),
    ]
    defaults = {g["lmo"]: g["lr"] for g in param_groups(_Net(), lr=0.02)}
    assert defaults == {"spectral": 0.02, "sign": 0.02, "adamw": 0.02}


def test_a_torch_optimizer_partial_gets_the_parameters_anything_else_the_module() -> None:
    net = _Net()
    sgd = build_optimizer(functools.partial(torch.optim.SGD, lr=0.1), net)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["params"] == list(net.parameters())
    seen = []
    build_optimizer(lambda m: seen.append(m) or torch.optim.SGD(m.parameters(), lr=0.1), net)
    assert seen == [net]
    lanton = build_optimizer(functools.partial(LANTON.from_module, lr=0.05), net)
    assert {g["lmo"] for g in lanton.param_groups} == {"spectral", "sign", "adamw"}


@pytest.mark.parametrize("name", ["lanton", "muon", "adamw", "sgd"])
def test_every_optimizer_config_builds_from_a_module(name: str) -> None:
    path = f"lightning_dyn/configs/optimizer/{name}.yaml"
    optimizer = instantiate(OmegaConf.load(path), _convert_="all")
    assert isinstance(build_optimizer(optimizer, _Net()), torch.optim.Optimizer)


def test_a_recipe_default_is_its_config() -> None:
    adamw = build_optimizer(recipe_optimizer("grokking"), _Net())
    assert isinstance(adamw, torch.optim.AdamW)
    assert (adamw.defaults["lr"], adamw.defaults["eps"], tuple(adamw.defaults["betas"])) == (
        0.01,
        1e-25,
        (0.9, 0.99),
    )
    sgd = build_optimizer(recipe_optimizer("gaussian_mixture"), _Net()).defaults
    assert (sgd["lr"], sgd["momentum"], sgd["weight_decay"]) == (0.05, 0.9, 5e-4)
