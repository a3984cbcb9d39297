"""SoftmaxCollapseMonitor: logs what an independent eval-mode computation gives, changes nothing."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from harness import TINY_DATA, TINY_MODULE, parameters_of, quiet_trainer

from lightning_dyn.callbacks import SoftmaxCollapseMonitor
from lightning_dyn.recipes import ModularArithmeticDataModule, ModularArithmeticModule


def _fit(tmp_path: Path, module, callbacks, max_steps: int = 4) -> pl.Trainer:
    trainer = quiet_trainer(tmp_path, max_steps, callbacks=callbacks)
    trainer.fit(module, datamodule=ModularArithmeticDataModule(**TINY_DATA))
    return trainer


class _Snapshot(pl.Callback):
    """Keeps a copy of the model after the optimizer step that ends at ``step``."""

    def __init__(self, step: int) -> None:
        self.step, self.model = step, None

    def on_train_batch_end(self, trainer, pl_module, *_) -> None:
        if trainer.global_step == self.step:
            self.model = {k: v.clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_logged_values_match_an_independent_eval_mode_computation(tmp_path, arch) -> None:
    pl.seed_everything(0, verbose=False)
    kwargs = {"arch": "transformer", "d_model": 16, "num_heads": 2} if arch != "mlp" else {}
    module = ModularArithmeticModule(**TINY_MODULE, **kwargs)
    snapshot = _Snapshot(step=2)
    monitor = SoftmaxCollapseMonitor(every_n_steps=2, probe_size=50)
    trainer = _fit(tmp_path, module, [snapshot, monitor])
    assert module.training  # train mode restored

    reference = ModularArithmeticModule(**TINY_MODULE, **kwargs)
    reference.load_state_dict(snapshot.model)
    reference.eval()  # dropout off, as the monitor measures
    data = ModularArithmeticDataModule(**TINY_DATA)
    data.setup()
    pairs, labels = (t[:50] for t in data.train_set.tensors)  # the first 50 by index
    logits = reference(pairs)
    loss = F.cross_entropy(logits, labels)
    grads = dict(
        zip(
            [n for n, _ in reference.named_parameters()],
            torch.autograd.grad(loss, list(reference.parameters())),
            strict=True,
        )
    )
    sums = torch.exp(logits - logits.max(1, keepdim=True).values).sum(1)
    logged = next(
        m for s, m in trainer.logger.records if s == 1 and "softmax_collapse/max_logit" in m
    )

    assert logged["softmax_collapse/max_logit"] == pytest.approx(logits.max().item(), rel=1e-5)
    assert logged["softmax_collapse/sc_fraction"] == (sums == 1).float().mean().item()
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    assert logged["softmax_collapse/zero_loss_fraction"] == (per_sample == 0).float().mean().item()
    for name, p in reference.named_parameters():
        if p.ndim < 2:
            continue
        cos = F.cosine_similarity(p.detach().flatten(), -grads[name].flatten(), dim=0).item()
        assert logged[f"softmax_collapse/cos_w_g/{name}"] == pytest.approx(cos, abs=1e-5)
        norm = p.detach().norm().item()
        assert logged[f"softmax_collapse/weight_norm/{name}"] == pytest.approx(norm, rel=1e-6)


def test_does_not_change_training(tmp_path) -> None:
    pl.seed_everything(0, verbose=False)
    plain = ModularArithmeticModule(**TINY_MODULE)
    _fit(tmp_path, plain, [])
    pl.seed_everything(0, verbose=False)
    monitored = ModularArithmeticModule(**TINY_MODULE)
    _fit(tmp_path, monitored, [SoftmaxCollapseMonitor(every_n_steps=1)])
    expected = parameters_of(plain)
    for name, value in parameters_of(monitored).items():
        assert torch.equal(value, expected[name]), name


def test_detects_collapse_in_float32_but_not_float64(tmp_path) -> None:
    """A logit gap of 30 collapses in float32 (1 + 11 e^-30 rounds to 1), not in float64."""

    class _Scaled(ModularArithmeticModule):
        def forward(self, pairs):
            z = super().forward(pairs)
            return z + (30 * F.one_hot(z.argmax(-1), z.shape[-1]) - z).detach()

    measured = {}
    for dtype in (None, torch.float64):
        pl.seed_everything(0, verbose=False)
        trainer = _fit(
            tmp_path, _Scaled(**TINY_MODULE), [SoftmaxCollapseMonitor(1, dtype=dtype)], 1
        )
        measured[dtype] = trainer.logger.records[0][1]["softmax_collapse/sc_fraction"]
    assert measured[None] == 1.0
    assert measured[torch.float64] == 0.0


def test_custom_logits_fn_for_other_batch_layouts(tmp_path) -> None:
    calls = []

    def logits_fn(pl_module, batch):
        calls.append(len(batch[1]))
        return pl_module(batch[0]), batch[1]

    _fit(
        tmp_path,
        ModularArithmeticModule(**TINY_MODULE),
        [SoftmaxCollapseMonitor(2, 10, None, "softmax", logits_fn)],
    )
    assert calls == [10, 10]


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"every_n_steps must be an integer >= 1; got 0"):
        SoftmaxCollapseMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match=r"loss='focal'.*'softmax', 'stablemax'"):
        SoftmaxCollapseMonitor(loss="focal")
    with pytest.raises(ValueError, match=r"dtype must be a floating torch dtype.*int64"):
        SoftmaxCollapseMonitor(dtype=torch.int64)
    with pytest.raises(ValueError, match=r"dtype must be a floating torch dtype.*'double64'"):
        SoftmaxCollapseMonitor(dtype="double64")
    assert SoftmaxCollapseMonitor(dtype="float64").dtype is torch.float64


def test_stablemax_collapse_is_tested_on_its_own_normaliser(tmp_path) -> None:
    """StableMax exponentiates log1p(z): a logit gap of 1e13 is a score gap of log1p(1e13) = 29.9,
    which collapses in float32 (1 + 11 e^-29.9 rounds to 1) but not in float64."""

    class _Gap(ModularArithmeticModule):
        gap = 1e13

        def forward(self, pairs):
            z = super().forward(pairs)
            return z + (self.gap * F.one_hot(z.argmax(-1), z.shape[-1]) - z).detach()

    measured = {}
    for dtype in (None, torch.float32, torch.float64):
        pl.seed_everything(0, verbose=False)
        monitor = SoftmaxCollapseMonitor(1, dtype=dtype, loss="stablemax")
        trainer = _fit(tmp_path, _Gap(**TINY_MODULE, loss="stablemax"), [monitor], 1)
        measured[dtype] = trainer.logger.records[0][1]["softmax_collapse/sc_fraction"]
    assert measured == {None: 1.0, torch.float32: 1.0, torch.float64: 0.0}  # None: logits' dtype
