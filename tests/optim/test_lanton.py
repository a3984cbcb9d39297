"""LANTON: Muon when not adaptive, smaller steps for noisier layers, exact state round trip."""

from __future__ import annotations

import copy
import io
import itertools
import re
from typing import Any

import pytest
import torch
from torch import nn

from lightning_dyn.functional.lmo import spectral_dual_norm
from lightning_dyn.optim import LANTON, param_groups


def _matrices(seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=gen)) for shape in [(16, 8), (8, 24)]]


def _three_kinds(dtype: torch.dtype = torch.float32) -> list[dict[str, Any]]:
    """Two spectral matrices, a sign matrix and an AdamW vector: every kind of LANTON state."""
    gen = torch.Generator().manual_seed(0)

    def param(*shape: int) -> nn.Parameter:
        return nn.Parameter(torch.randn(shape, generator=gen).to(dtype))

    return [
        {"params": [param(16, 8), param(8, 24)]},
        {"params": [param(10, 4)], "lmo": "sign"},
        {"params": [param(4)], "lmo": "adamw"},
    ]


def _set_grads(params, step: int, noise_scales=(1.0, 1.0)) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p, scale in zip(params, noise_scales, strict=True):
        signal = torch.full(p.shape, 0.1)
        p.grad = (signal + scale * torch.randn(p.shape, generator=gen)).to(p.dtype)


def _trajectory(optimizer: LANTON, steps: int = 8) -> list[torch.Tensor]:
    """Step ``optimizer`` on its two matrices with unequally noisy gradients; the final weights."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for step in range(steps):
        _set_grads(params, step, noise_scales=(1.0, 3.0))
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_not_adaptive_matches_torch_muon() -> None:
    """Same coefficients, steps, eps, Nesterov momentum and shape scaling as torch.optim.Muon."""
    ours, theirs = _matrices(), _matrices()
    lanton = LANTON(ours, lr=0.02, weight_decay=0.1, adaptive=False, spectral_scale="muon")
    muon = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1)
    for step in range(6):
        _set_grads(ours, step)
        _set_grads(theirs, step)
        lanton.step()
        muon.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("noise_every", [1, 4])
def test_noisier_layer_gets_the_smaller_learning_rate(noise_every: int) -> None:
    params = _matrices()
    optimizer = LANTON(params, lr=0.01, noise_every=noise_every)
    for step in range(30):
        _set_grads(params, step, noise_scales=(1.0, 10.0))
        optimizer.step()
    lrs = optimizer.effective_lrs()
    quiet, noisy = lrs["group0.0"], lrs["group0.1"]
    assert quiet == pytest.approx(0.01)  # the least noisy layer keeps the group's lr
    assert noisy < 0.7 * quiet
    noise = optimizer.noise_estimates()
    assert noise["group0.1"] > 10 * noise["group0.0"]


def _alternating_grads(p: torch.Tensor, direction: torch.Tensor, size: float, step: int) -> None:
    """``G_t = 1 + (-1)^t (size/2) direction``: every ``G_t - G_{t-1}`` is ``±size · direction``."""
    p.grad = torch.ones_like(p) + (-1) ** step * (size / 2) * direction


@pytest.mark.parametrize("lmo", ["sign", "spectral"])
@pytest.mark.parametrize(("power", "alpha"), [(0.5, 0.01), (1.0, 0.1)])
def test_layer_factor_is_the_documented_formula_on_known_noise(
    lmo: str, power: float, alpha: float
) -> None:
    """The factor ``(d_min / d)^(power/2)``, ``d = H + alpha max H``, with ``H`` in closed form.

    The gradient differences have a known dual norm ``n``: a ±1 matrix times ``size`` (ℓ1 norm
    ``size · numel``) in a sign group, ``size · u vᵀ`` with unit ``u, v`` (nuclear norm ``size``,
    dual norm ``sqrt(d_out/d_in) size``) in a spectral group. After ``m`` measurements from
    ``H = 0``, ``H = (1 - β2^m) n²``.
    """
    gen = torch.Generator().manual_seed(3)
    shapes, sizes = [(6, 4), (6, 4), (3, 8)], [0.2, 0.5, 1.5]
    params = [nn.Parameter(torch.zeros(shape, dtype=torch.float64)) for shape in shapes]
    if lmo == "sign":
        directions = [torch.randint(0, 2, s, generator=gen).double() * 2 - 1 for s in shapes]
        norms = [size * d.numel() for size, d in zip(sizes, directions, strict=True)]
    else:
        directions, norms = [], []
        for (rows, cols), size in zip(shapes, sizes, strict=True):
            u = torch.randn(rows, 1, generator=gen, dtype=torch.float64)
            v = torch.randn(1, cols, generator=gen, dtype=torch.float64)
            directions.append(u @ v / (u.norm() * v.norm()))
            norms.append((rows / cols) ** 0.5 * size)
    beta, steps, lr = 0.9, 7, 0.01
    optimizer = LANTON(
        [{"params": params, "lmo": lmo}],
        lr=lr,
        noise_beta=beta,
        noise_alpha=alpha,
        power=power,
        exact_dual_norm=True,
        weight_decay=0.0,
    )
    for step in range(steps):
        before = [p.detach().clone() for p in params]
        for p, direction, size in zip(params, directions, sizes, strict=True):
            _alternating_grads(p, direction, size, step)
        optimizer.step()
    noise = torch.tensor([(1 - beta ** (steps - 1)) * n**2 for n in norms], dtype=torch.float64)
    d = noise + alpha * noise.max()
    expected = lr * (d.min() / d) ** (power / 2)
    got = torch.stack(list(optimizer.effective_lrs().values()))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        torch.stack(list(optimizer.noise_estimates().values())), noise, rtol=1e-6, atol=0
    )
    if lmo == "sign":  # every gradient entry is positive, so the last step moved by -lr f exactly
        for p, old, rate in zip(params, before, expected, strict=True):
            torch.testing.assert_close(p.detach() - old, -rate.expand(p.shape), rtol=1e-9, atol=0)


def test_equal_noise_gives_equal_rates_and_adaptive_false_gives_the_base_rate() -> None:
    params = _matrices()
    optimizer = LANTON(params, lr=0.01, adaptive=False)
    for step in range(5):
        _set_grads(params, step, noise_scales=(1.0, 10.0))
        optimizer.step()
    assert all(lr == pytest.approx(0.01) for lr in optimizer.effective_lrs().values())


STATE_DTYPES = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.bfloat16: torch.float32,
    torch.float16: torch.float32,
}


@pytest.mark.parametrize(
    ("dtype", "noise_every"),
    [
        (torch.float32, 1),
        (torch.float32, 3),
        (torch.float64, 1),
        (torch.bfloat16, 1),
        (torch.float16, 3),
    ],
    ids=str,
)
def test_state_dict_round_trip_is_exact(dtype: torch.dtype, noise_every: int) -> None:
    """timm's test: prime, load the state into a fresh optimizer on cloned weights, step both."""
    groups = _three_kinds(dtype)
    optimizer = LANTON(groups, lr=0.01, noise_every=noise_every)
    params = [p for g in groups for p in g["params"]]
    scales = (1.0, 3.0, 1.0, 1.0)
    for step in range(10):
        _set_grads(params, step, scales)
        optimizer.step()
    fresh = _three_kinds(dtype)
    clone = [p for g in fresh for p in g["params"]]
    with torch.no_grad():
        for c, p in zip(clone, params, strict=True):
            c.copy_(p)
    # Built with other hyperparameters: the loaded groups bring the saved ones.
    restored = LANTON(fresh, lr=0.5, noise_every=7)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for step in range(10, 20):
        _set_grads(params, step, scales)
        _set_grads(clone, step, scales)
        optimizer.step()
        restored.step()
    for a, b in zip(params, clone, strict=True):
        assert torch.equal(a, b)
        assert optimizer.state[a].keys() == restored.state[b].keys()
        for key, value in optimizer.state[a].items():
            assert value.dtype == restored.state[b][key].dtype == STATE_DTYPES[dtype], key
            assert torch.equal(value, restored.state[b][key]), key
    strip = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in restored.param_groups]


def test_a_float64_model_resumes_from_a_saved_checkpoint() -> None:
    """The pde recipe trains in float64: save and load through torch.save, as Lightning does."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    ).double()
    resumed = copy.deepcopy(model)
    x = torch.randn(64, 4, dtype=torch.float64)
    y = x.sum(dim=1, keepdim=True).sin()

    def train(net: nn.Module, optimizer: LANTON, steps: int) -> None:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            optimizer.step()

    optimizer = LANTON(param_groups(model, lr=0.02, adamw_lr=3e-3))
    train(model, optimizer, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, 5)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed.load_state_dict(checkpoint["model"])
    optimizer = LANTON(param_groups(resumed, lr=0.02, adamw_lr=3e-3))
    optimizer.load_state_dict(checkpoint["optimizer"])
    train(resumed, optimizer, 5)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_float32_state_loads_into_float64_parameters() -> None:
    """A run resumed at a higher precision (32-true to 64-true) upcasts the state and steps."""
    params = _matrices()
    optimizer = LANTON(params, lr=0.01)
    for step in range(3):
        _set_grads(params, step)
        optimizer.step()
    doubles = [nn.Parameter(p.detach().double()) for p in params]
    restored = LANTON(doubles, lr=0.01)
    restored.load_state_dict(optimizer.state_dict())
    assert {v.dtype for p in doubles for v in restored.state[p].values()} == {torch.float64}
    _set_grads(doubles, 3)
    restored.step()


HYPERPARAMETERS = {
    "adaptive": False,
    "noise_beta": 0.5,
    "noise_alpha": 0.5,
    "power": 2.0,
    "exact_dual_norm": True,
    "noise_every": 2,
    "ns_steps": 3,
    "ns_coefficients": "cubic",
    "ns_dtype": torch.float32,
    "eps": 10.0,
    "spectral_scale": "muon",
}


def test_a_checkpoint_saved_before_the_group_hyperparameters_resumes() -> None:
    """Groups saved without the keys (they were optimizer attributes) get the constructor's."""
    params = _matrices()
    optimizer = LANTON(params, lr=0.01, power=1.0, noise_every=2)
    _trajectory(optimizer, steps=5)
    saved = copy.deepcopy(optimizer.state_dict())
    for group in saved["param_groups"]:
        for key in HYPERPARAMETERS:
            del group[key]
    clone = [nn.Parameter(p.detach().clone()) for p in params]
    restored = LANTON(clone, lr=0.01, power=1.0, noise_every=2)
    restored.load_state_dict(saved)
    for a, b in zip(_trajectory(optimizer), _trajectory(restored), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("key", "value"), HYPERPARAMETERS.items())
def test_every_hyperparameter_is_a_param_group_key(key: str, value: Any) -> None:
    """A group value acts as the constructor argument does, and is in the saved groups."""
    by_argument = LANTON(_matrices(), lr=0.01, **{key: value})
    by_group = LANTON([{"params": _matrices(), key: value}], lr=0.01)
    saved = by_argument.state_dict()["param_groups"][0][key]
    # A dtype is saved by its name: distributed checkpoints cannot hold a torch.dtype.
    assert saved == (str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value)
    expected = _trajectory(by_argument)
    default = _trajectory(LANTON(_matrices(), lr=0.01))
    assert not all(torch.equal(a, b) for a, b in zip(expected, default, strict=True))
    for a, b in zip(_trajectory(by_group), expected, strict=True):
        assert torch.equal(a, b)


def test_a_noise_group_needs_one_rule_and_other_groups_may_differ() -> None:
    a, b = _matrices()
    with pytest.raises(ValueError, match=r"noise group 'spectral'.*power=0.5.*power=1.0"):
        LANTON([{"params": [a]}, {"params": [b], "power": 1.0}])
    optimizer = LANTON([{"params": [a]}])
    with pytest.raises(ValueError, match=r"noise group 'spectral'.*adaptive=True.*adaptive=False"):
        optimizer.add_param_group({"params": [b], "adaptive": False})
    assert len(optimizer.param_groups) == 1  # the refused group was not added
    optimizer.add_param_group({"params": [b], "adaptive": False, "noise_group": "quiet"})
    _trajectory(optimizer, steps=3)
    assert set(optimizer.noise_estimates()) == {"group0.0"}  # group 1 is not adapted
    assert optimizer.effective_lrs()["group1.0"] == pytest.approx(0.02)


def test_unknown_group_keys_are_refused() -> None:
    allowed = r"allowed: 'params', 'param_names', 'name', 'lr', 'momentum'"
    with pytest.raises(
        ValueError, match=rf"param group 0 has unknown keys \['momemtum'\]; {allowed}"
    ):
        LANTON([{"params": _matrices(), "momemtum": 0.9}])
    optimizer = LANTON([{"params": _matrices()[:1], "name": "hidden"}])  # LearningRateMonitor's
    with pytest.raises(ValueError, match=r"param group 1 has unknown keys \['decay'\]"):
        optimizer.add_param_group({"params": _matrices(1)[:1], "decay": 0.1})
    assert len(optimizer.param_groups) == 1


BAD_VALUES = [
    ("lr", -0.1),
    ("lr", "0.1"),
    ("momentum", 1.0),
    ("noise_beta", -0.1),
    ("weight_decay", -1.0),
    ("noise_alpha", -1.0),
    ("power", float("nan")),
    ("eps", 0.0),
    ("adam_eps", -1.0),
    ("betas", (1.5, 0.9), r"\[0\] must be a number in \[0, 1\); got 1\.5"),
    ("betas", (0.9,)),
    ("ns_steps", 2.5),
    ("noise_every", 0),
    ("noise_every", True),
    ("ns_dtype", torch.int64),
    ("ns_dtype", "bfloat16"),
    ("ns_coefficients", "quintic"),
    ("ns_coefficients", (1.0, 2.0)),
    ("spectral_scale", "rms"),
    ("lmo", "adam"),
    ("noise_group", ["a"]),
    ("nesterov", "yes"),
    ("adaptive", 1),
    ("exact_dual_norm", None),
]


@pytest.mark.parametrize("case", BAD_VALUES, ids=str)
def test_bad_values_are_refused_as_arguments_and_as_group_values(case: tuple) -> None:
    """The message starts with the argument's name and shows the value (``case[2]``, if given)."""
    key, value, *shown = case
    message = rf"{key}\b.*{shown[0] if shown else re.escape(repr(value))}"
    if key != "noise_group":  # a group key only
        with pytest.raises(ValueError, match="^" + message):
            LANTON(_matrices(), **{key: value})
    with pytest.raises(ValueError, match="^param group 0: " + message):
        LANTON([{"params": _matrices(), key: value}])


@pytest.mark.parametrize(
    "settings",
    [{"ns_steps": 10}, {"ns_dtype": torch.float32}, {"ns_coefficients": "cubic"}, {"eps": 100.0}],
)
def test_the_noise_estimate_uses_the_group_newton_schulz_settings(settings: dict) -> None:
    params = _matrices()
    beta = 0.9
    optimizer = LANTON(params, lr=0.01, exact_dual_norm=False, noise_beta=beta, **settings)
    grads = []
    for step in range(4):
        _set_grads(params, step, noise_scales=(1.0, 3.0))
        grads.append([p.grad.clone() for p in params])
        optimizer.step()
    names = {"ns_steps": "steps", "ns_dtype": "dtype", "ns_coefficients": "coefficients"}
    ns = {names.get(k, k): v for k, v in settings.items()}
    for i, noise in enumerate(optimizer.noise_estimates().values()):
        expected, default = torch.zeros(()), torch.zeros(())
        for before, after in itertools.pairwise(grads):
            d = after[i] - before[i]
            expected.mul_(beta).add_((1 - beta) * spectral_dual_norm(d, exact=False, **ns) ** 2)
            default.mul_(beta).add_((1 - beta) * spectral_dual_norm(d, exact=False) ** 2)
        assert torch.equal(noise, expected)
        assert not torch.equal(expected, default)  # the setting matters here


def test_scheduler_changes_group_lr_and_the_factor_is_not_written_back() -> None:
    params = _matrices()
    optimizer = LANTON(params, lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for step in range(3):
        _set_grads(params, step, noise_scales=(1.0, 10.0))
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**3)


def test_step_makes_no_host_sync(monkeypatch) -> None:
    params = _matrices()
    optimizer = LANTON(params, lr=0.01, exact_dual_norm=False)
    _set_grads(params, 0)
    optimizer.step()

    def refuse(*_):
        raise AssertionError("step() read a tensor value on the host")

    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "__bool__", refuse)
    monkeypatch.setattr(torch.Tensor, "__float__", refuse)
    _set_grads(params, 1)
    optimizer.step()


def test_a_gradscaler_skipped_step_leaves_the_noise_alone() -> None:
    params = _matrices()
    optimizer = LANTON(params, lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    scaler.scale(torch.ones(()))  # initialises the scale, as scaler.scale(loss) would
    for step in range(3):
        _set_grads(params, step)
        scaler.step(optimizer)
        scaler.update()
    before = {k: v.clone() for k, v in optimizer.noise_estimates().items()}
    weights = [p.detach().clone() for p in params]
    _set_grads(params, 3)
    params[0].grad[0, 0] = float("inf")
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(optimizer.noise_estimates()[k], v) for k, v in before.items())
    assert all(torch.equal(p, w) for p, w in zip(params, weights, strict=True))


def test_loss_decreases_on_a_small_regression() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    x = torch.randn(256, 8)
    y = x[:, :1] * 2 - x[:, 1:2]
    optimizer = LANTON(param_groups(model, lr=0.05, adamw_lr=3e-3))
    first = None
    for _ in range(100):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.05 * first


def test_vectors_in_a_spectral_group_are_refused() -> None:
    with pytest.raises(ValueError, match=r"shape \(4,\).*'adamw' group"):
        LANTON([nn.Parameter(torch.zeros(4))])
    with pytest.raises(ValueError, match=r"lmo='adam'.*'spectral', 'sign', 'adamw'"):
        LANTON(_matrices(), lmo="adam")
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\); got 1.5"):
        LANTON(_matrices(), momentum=1.5)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.stem = nn.Conv1d(16, 16, 3)
        self.conv = nn.Conv1d(16, 16, 3)
        self.norm = nn.LayerNorm(16)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.position = nn.Parameter(torch.zeros(8, 16))


def test_param_groups_by_module_type_and_name() -> None:
    groups = {g["lmo"]: g["param_names"] for g in param_groups(_Net())}
    assert groups["sign"] == ["embed.weight"]  # the tied head is counted once
    assert groups["spectral"] == ["conv.weight", "hidden.weight"]
    assert set(groups["adamw"]) == {
        "position",
        "stem.weight",
        "stem.bias",
        "conv.bias",
        "norm.weight",
        "norm.bias",
        "hidden.bias",
    }
    with pytest.raises(ValueError, match=r"cannot classify: position \(8, 16\) in _Net"):
        param_groups(_Net(), strict=True)


def test_from_module_groups_the_module_and_muon_mode_sends_embeddings_to_adamw() -> None:
    lanton = LANTON.from_module(_Net(), lr=0.02, sign_lr=0.002, adamw_lr=0.003)
    assert {g["lmo"]: g["lr"] for g in lanton.param_groups} == {
        "spectral": 0.02,
        "sign": 0.002,
        "adamw": 0.003,
    }
    assert all(g["adaptive"] for g in lanton.param_groups)
    muon = LANTON.from_module(_Net(), adaptive=False, embeddings_as="adamw", adamw_lr=0.003)
    assert [g["lmo"] for g in muon.param_groups] == ["spectral", "adamw", "adamw"]
    assert not any(g["adaptive"] for g in muon.param_groups)
    with pytest.raises(ValueError, match=r"embeddings_as='sgd'.*'sign', 'adamw'"):
        LANTON.from_module(_Net(), embeddings_as="sgd")


def test_loss_decreases_on_the_registry_model(tmp_path) -> None:
    import functools

    import lightning.pytorch as pl
    from harness import TINY_DATA, TINY_MODULE, quiet_trainer

    from lightning_dyn.recipes import ModularArithmeticDataModule, ModularArithmeticModule

    pl.seed_everything(0, verbose=False)
    module = ModularArithmeticModule(**TINY_MODULE, optimizer=functools.partial(LANTON, lr=0.1))
    trainer = quiet_trainer(tmp_path, 30)
    trainer.fit(module, datamodule=ModularArithmeticDataModule(**TINY_DATA))
    losses = [m["train/loss"] for _, m in trainer.logger.records if "train/loss" in m]
    assert len(losses) == 30 and losses[-1] < 0.6 * losses[0]  # 2.49 -> 1.26 measured
