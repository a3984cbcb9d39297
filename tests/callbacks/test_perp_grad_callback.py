"""PerpGrad in a real Trainer: projects at the right point of the loop, in every setup."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from harness import TINY_DATA, TINY_MODULE, quiet_trainer
from lightning.pytorch.plugins import MixedPrecision

from lightning_dyn.callbacks import PerpGrad
from lightning_dyn.recipes import ModularArithmeticDataModule, ModularArithmeticModule

LR = 0.05
SGD = functools.partial(torch.optim.SGD, lr=LR)  # no momentum, no weight decay: Δw = -lr g


class _StepRecorder(pl.Callback):
    """Records weights and raw gradient norms around every optimizer step.

    Placed before PerpGrad in the callback list, so its ``on_before_optimizer_step`` sees the
    gradient PerpGrad is about to project.
    """

    def __init__(self) -> None:
        self.before: list[list[torch.Tensor]] = []
        self.grad_norms: list[list[float]] = []
        self.after: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append([p.detach().clone() for p in pl_module.parameters()])
        self.grad_norms.append([float(p.grad.double().norm()) for p in pl_module.parameters()])

    def on_train_batch_end(self, trainer, pl_module, *_: Any) -> None:
        if len(self.after) < len(self.before):
            self.after.append([p.detach().clone() for p in pl_module.parameters()])


def _fit(tmp_path: Path, module: pl.LightningModule, callbacks: list, **kwargs) -> pl.Trainer:
    trainer = quiet_trainer(tmp_path, kwargs.pop("max_steps", 4), callbacks=callbacks, **kwargs)
    # With accumulation, 4 micro-batches of 18 make 2 optimizer steps per epoch.
    batch_size = 18 if kwargs.get("accumulate_grad_batches", 1) > 1 else None
    trainer.fit(module, datamodule=ModularArithmeticDataModule(**TINY_DATA, batch_size=batch_size))
    return trainer


def _assert_orthogonal_steps(recorder: _StepRecorder, norm_rtol: float) -> None:
    assert recorder.before and len(recorder.after) == len(recorder.before)
    for before, after, norms in zip(
        recorder.before, recorder.after, recorder.grad_norms, strict=True
    ):
        for w, w_next, g_norm in zip(before, after, norms, strict=True):
            step = (w_next - w).double().flatten()
            w = w.double().flatten()
            cos = torch.dot(step, w) / (step.norm() * w.norm())
            assert abs(cos) < 1e-4, f"step not orthogonal to the weight: cos={cos:.2e}"
            # rescale=True keeps the raw gradient's norm: |Δw| = lr |g|, with g unscaled.
            assert step.norm().item() == pytest.approx(LR * g_norm, rel=norm_rtol)


@pytest.mark.parametrize(
    ("trainer_kwargs", "norm_rtol"),
    [
        ({}, 1e-4),
        ({"accumulate_grad_batches": 2}, 1e-4),
        (
            {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]},
            1e-3,
        ),
        ({"precision": "bf16-mixed"}, 1e-3),
        ({"precision": "64-true"}, 1e-9),
    ],
    ids=["fp32", "accumulate-2", "16-mixed-gradscaler", "bf16-mixed", "64-true"],
)
def test_sgd_steps_are_orthogonal_to_the_weights(tmp_path, trainer_kwargs, norm_rtol) -> None:
    """With plain SGD, Δw = -lr g⊥: orthogonal to w, and |g⊥| = |g| of the unscaled gradient."""
    pl.seed_everything(0, verbose=False)
    recorder = _StepRecorder()
    module = ModularArithmeticModule(**TINY_MODULE, optimizer=SGD)
    _fit(tmp_path, module, [recorder, PerpGrad()], **trainer_kwargs)
    _assert_orthogonal_steps(recorder, norm_rtol)


def test_without_perp_grad_the_same_check_fails(tmp_path) -> None:
    """The orthogonality check can fail: plain SGD steps have a radial component."""
    pl.seed_everything(0, verbose=False)
    recorder = _StepRecorder()
    _fit(tmp_path, ModularArithmeticModule(**TINY_MODULE, optimizer=SGD), [recorder])
    with pytest.raises(AssertionError, match="not orthogonal"):
        _assert_orthogonal_steps(recorder, 1e-4)


class _ManualModule(ModularArithmeticModule):
    def __init__(self) -> None:
        super().__init__(**TINY_MODULE, optimizer=SGD)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        pairs, labels = batch
        self.manual_backward(self.loss_fn(self(pairs), labels))
        optimizer.step()


def test_manual_optimisation(tmp_path) -> None:
    pl.seed_everything(0, verbose=False)
    recorder = _StepRecorder()
    _fit(tmp_path, _ManualModule(), [recorder, PerpGrad()])
    _assert_orthogonal_steps(recorder, 1e-4)


def test_logged_cosine_is_the_raw_gradient_alignment(tmp_path) -> None:
    """The logged cos(W, -∇L) at step 0 equals one computed by hand from the initial weights."""
    pl.seed_everything(0, verbose=False)
    module = ModularArithmeticModule(**TINY_MODULE, optimizer=SGD)
    data = ModularArithmeticDataModule(**TINY_DATA)
    data.setup()
    pairs, labels = data.train_set.tensors
    loss = F.cross_entropy(module(pairs), labels)
    grads = torch.autograd.grad(loss, list(module.parameters()))
    expected = {
        name: F.cosine_similarity(p.detach().flatten(), -g.flatten(), dim=0).item()
        for (name, p), g in zip(module.named_parameters(), grads, strict=True)
    }
    trainer = _fit(tmp_path, module, [PerpGrad()], max_steps=1)
    step0 = next(metrics for step, metrics in trainer.logger.records if step == 0)
    for name, cosine in expected.items():
        assert step0[f"perp_grad/cos_w_g/{name}"] == pytest.approx(cosine, abs=1e-5)


def test_param_filter_leaves_the_other_tensors_alone(tmp_path) -> None:
    pl.seed_everything(0, verbose=False)
    recorder = _StepRecorder()
    only_first = PerpGrad(param_filter=lambda name, p: name == "model.layers.0.weight")
    _fit(tmp_path, ModularArithmeticModule(**TINY_MODULE, optimizer=SGD), [recorder, only_first])
    first, last = recorder.before[1], recorder.after[1]
    step0 = (last[0] - first[0]).flatten()
    step2 = (last[2] - first[2]).flatten()
    assert abs(torch.dot(step0, first[0].flatten())) / (step0.norm() * first[0].norm()) < 1e-4
    assert abs(torch.dot(step2, first[2].flatten())) / (step2.norm() * first[2].norm()) > 1e-3


def test_refuses_a_fused_optimizer_under_a_gradscaler(tmp_path) -> None:
    fused = functools.partial(torch.optim.AdamW, lr=1e-3, fused=True)
    scaler = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    module = ModularArithmeticModule(**TINY_MODULE, optimizer=fused)
    with pytest.raises(ValueError, match=r"AdamW and a GradScaler.*fused=False"):
        _fit(tmp_path, module, [PerpGrad()], plugins=[scaler])


def test_fused_optimizer_without_a_scaler_is_fine(tmp_path) -> None:
    fused = functools.partial(torch.optim.AdamW, lr=1e-3, fused=True)
    trainer = _fit(tmp_path, ModularArithmeticModule(**TINY_MODULE, optimizer=fused), [PerpGrad()])
    assert trainer.global_step == 4


def test_warns_when_weight_decay_is_added_after_the_projection(tmp_path) -> None:
    decayed = functools.partial(torch.optim.SGD, lr=LR, weight_decay=1e-2)
    module = ModularArithmeticModule(**TINY_MODULE, optimizer=decayed)
    with pytest.warns(UserWarning, match=r"SGD adds weight_decay=0.01 .* after the projection"):
        _fit(tmp_path, module, [PerpGrad()], max_steps=1)


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"mode='radial'.*'per_tensor', 'global'"):
        PerpGrad(mode="radial")
    with pytest.raises(ValueError, match=r"log_every_n_steps must be an integer >= 1; got 0"):
        PerpGrad(log_every_n_steps=0)


def test_resuming_with_other_settings_warns() -> None:
    # Lightning hands a callback the checkpoint state saved under its state_key: the key must
    # not depend on the settings, or a resume with other settings would silently get nothing.
    saved = PerpGrad(mode="per_tensor", rescale=True)
    resumed = PerpGrad(mode="global", rescale=False)
    assert resumed.state_key == saved.state_key
    with pytest.warns(UserWarning, match="checkpoint was made with mode='per_tensor'"):
        resumed.load_state_dict(saved.state_dict())
