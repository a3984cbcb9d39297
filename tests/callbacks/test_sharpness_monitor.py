"""SharpnessMonitor against dense Hessians of the probe loss, inside a real Trainer."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from harness import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset
from user_models import UserCNN, UserImageData

from lightning_dyn.callbacks import SharpnessMonitor
from lightning_dyn.functional.stability import adam_preconditioner

PLAIN_GD = functools.partial(torch.optim.SGD, lr=0.5)


class TinyClassifier(pl.LightningModule):
    """A 4-6-3 tanh MLP (51 parameters): small enough for a dense Hessian."""

    def __init__(self, optimizer=PLAIN_GD):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
        )
        self.optimizer = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return self.optimizer(self.parameters())


def _data() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=40)


def _dense_hessian(module: torch.nn.Module, loader: DataLoader) -> torch.Tensor:
    x, y = next(iter(loader))
    params = {k: v.detach() for k, v in module.named_parameters()}
    shapes = [(k, v.shape, v.numel()) for k, v in params.items()]
    flat = torch.cat([v.reshape(-1) for v in params.values()]).double()

    def loss(vector: torch.Tensor) -> torch.Tensor:
        chunks, start = {}, 0
        for name, shape, n in shapes:
            chunks[name] = vector[start : start + n].reshape(shape)
            start += n
        logits = torch.func.functional_call(module, chunks, (x.double(),))
        return F.cross_entropy(logits, y)

    return torch.autograd.functional.hessian(loss, flat)


class _Capture(pl.Callback):
    """Keeps the module's weights and the optimiser state at the step of the last measurement."""

    def __init__(self, every: int) -> None:
        self.every, self.seen = every, {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step % self.every == 0:
            self.seen = {
                "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            }


def _fit(tmp_path: Path, module: pl.LightningModule, monitor: SharpnessMonitor, steps: int):
    capture = _Capture(monitor.every_n_steps)
    trainer = quiet_trainer(tmp_path, steps, callbacks=[monitor, capture])
    trainer.fit(module, train_dataloaders=_data())
    module.load_state_dict(capture.seen["state"])
    return trainer, capture.seen["metrics"]


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_top_eigenvalues_match_the_dense_hessian(tmp_path: Path, method: str) -> None:
    torch.manual_seed(0)
    module = TinyClassifier()
    monitor = SharpnessMonitor(every_n_steps=3, n_eigs=3, tol=1e-6, smallest=True, method=method)
    _, metrics = _fit(tmp_path, module, monitor, steps=6)
    exact = torch.linalg.eigvalsh(_dense_hessian(module, _data()))
    for i in range(3):
        assert metrics[f"sharpness/lambda_{i + 1}"] == pytest.approx(float(exact[-1 - i]), rel=1e-4)
    assert metrics["sharpness/lambda_min"] == pytest.approx(float(exact[0]), rel=1e-3, abs=1e-5)
    # SGD(lr=0.5): threshold 2/η = 4, ratio η λ_1 / 2.
    assert metrics["sharpness/threshold"] == pytest.approx(4.0)
    assert metrics["sharpness/ratio"] == pytest.approx(0.25 * float(exact[-1]), rel=1e-4)


def test_heavy_ball_threshold(tmp_path: Path) -> None:
    optimizer = functools.partial(torch.optim.SGD, lr=0.2, momentum=0.9)
    monitor = SharpnessMonitor(every_n_steps=2)
    _, metrics = _fit(tmp_path, TinyClassifier(optimizer), monitor, steps=2)
    assert metrics["sharpness/threshold"] == pytest.approx(2 * 1.9 / 0.2)


def test_adam_preconditioned_sharpness_matches_a_dense_solve(tmp_path: Path) -> None:
    torch.manual_seed(0)
    betas, eps, lr = (0.9, 0.99), 1e-8, 0.01
    optimizer = functools.partial(torch.optim.Adam, lr=lr, betas=betas, eps=eps)
    module = TinyClassifier(optimizer)
    monitor = SharpnessMonitor(every_n_steps=4, tol=1e-7)
    trainer, metrics = _fit(tmp_path, module, monitor, steps=4)
    adam = trainer.optimizers[0]
    pre = torch.cat(
        [
            adam_preconditioner(adam.state[p]["exp_avg_sq"], 4, *betas, eps).reshape(-1)
            for p in module.parameters()
        ]
    ).double()
    scale = pre.rsqrt()
    exact = torch.linalg.eigvalsh(scale[:, None] * _dense_hessian(module, _data()) * scale)[-1]
    assert metrics["sharpness/preconditioned_lambda_1"] == pytest.approx(float(exact), rel=1e-4)
    assert metrics["sharpness/threshold"] == pytest.approx(38.0 / lr)
    assert metrics["sharpness/ratio"] == pytest.approx(lr * float(exact) / 38.0, rel=1e-4)


def test_trace_and_density_are_logged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TinyClassifier()
    monitor = SharpnessMonitor(every_n_steps=3, trace_samples=400, density_steps=10)
    _, metrics = _fit(tmp_path, module, monitor, steps=3)
    exact = torch.trace(_dense_hessian(module, _data()))
    stderr = metrics["sharpness/trace_stderr"]
    assert abs(metrics["sharpness/trace"] - float(exact)) < 4 * stderr
    assert sorted((tmp_path / "media" / "sharpness_density").glob("*.png"))


def test_leaves_mode_batchnorm_and_grads_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, data = UserCNN(batch_norm=True), UserImageData()
    seen: dict = {}

    class Before(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen["mean"] = pl_module.features[1].running_mean.clone()
            seen["grads"] = [p.grad.clone() for p in pl_module.parameters()]

    class After(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen.setdefault("training", []).append(pl_module.training)
            assert torch.equal(pl_module.features[1].running_mean, seen["mean"])
            for p, g in zip(pl_module.parameters(), seen["grads"], strict=True):
                assert torch.equal(p.grad, g)
            seen["checked"] = seen.get("checked", 0) + 1

    monitor = SharpnessMonitor(every_n_steps=1, probe_size=16)
    trainer = quiet_trainer(tmp_path, 3, callbacks=[Before(), monitor, After()])
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    assert seen["checked"] == 3 and all(seen["training"])
    assert "sharpness/lambda_1" in trainer.callback_metrics


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, r"every_n_steps must be an integer >= 1; got 0"),
        ({"tol": 0.0}, r"tol must be a positive number; got 0.0"),
        ({"trace_samples": 1}, r"trace_samples must be 0 \(off\) or >= 2"),
        ({"method": "finite_differences"}, r"method='finite_differences' is not supported"),
        ({"loss_fn": "hinge"}, r"loss_fn='hinge' is not supported"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SharpnessMonitor(**kwargs)
