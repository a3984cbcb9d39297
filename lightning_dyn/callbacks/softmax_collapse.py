"""Softmax Collapse and naive-loss-minimisation diagnostics on a fixed probe of the training set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_dyn._checks import check_choice, check_positive_int
from lightning_dyn.callbacks._intervals import due_at_step
from lightning_dyn.callbacks._probe import build_probe
from lightning_dyn.functional.classification_losses import classification_loss
from lightning_dyn.functional.perp_grad import nlm_cosines
from lightning_dyn.functional.softmax_collapse import (
    COLLAPSE_LOSSES,
    softmax_collapse_fraction,
    zero_loss_fraction,
)
from lightning_dyn.functional.stablemax import stablemax_scores

LogitsFn = Callable[[pl.LightningModule, Any], tuple[Tensor, Tensor]]


def forward_first_input(pl_module: pl.LightningModule, batch: Any) -> tuple[Tensor, Tensor]:
    """Default ``logits_fn``: a batch ``(inputs, targets)`` and ``pl_module(inputs) -> logits``."""
    inputs, targets = batch[0], batch[1]
    return pl_module(inputs), targets


class SoftmaxCollapseMonitor(pl.Callback):
    """Logs how close training is to Softmax Collapse (SC), arXiv 2501.04697 Sec. 3-4.

    Runs in ``on_train_batch_end`` every ``every_n_steps`` optimizer steps, on a fixed probe: the
    first ``probe_size`` examples of the training set by index (each DDP rank takes every
    ``world_size``-th of them and the counts are summed over ranks), in eval mode without
    changing any ``.grad``; train mode is restored afterwards. Logs, under ``softmax_collapse/``:

    - ``sc_fraction``: fraction of probe examples whose ``sum_k exp(z_k - max z) == 1`` exactly in
      ``dtype`` (paper Def. 3): their correct-class gradient is exactly zero. For
      ``loss="stablemax"`` the test is applied to StableMax's own normaliser, i.e. to the scores
      ``sign(z) log1p(|z|)`` whose softmax StableMax is;
    - ``zero_loss_fraction``: fraction whose per-example loss is exactly 0 in ``dtype``;
    - ``max_logit``: the largest logit on the probe;
    - ``weight_norm/<name>`` and ``cos_w_g/<name>``: per weight tensor (``ndim >= 2``), the norm
      and the NLM alignment cos(W, -∇L) of the probe loss (paper Fig. 5).

    The probe is rebuilt from the dataset after a resume, so the logged numbers continue exactly.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        probe_size: how many training examples to measure on (all if fewer).
        dtype: dtype of the collapse test and of the loss (a ``torch.dtype`` or its name, e.g.
            ``"float64"``); ``None`` uses the logits' dtype, which is what a softmax loss computed
            on the logits sees. For ``loss="stablemax"`` pass ``"float64"``, the dtype
            ``stablemax_cross_entropy`` computes in.
        loss: ``"softmax"`` or ``"stablemax"``: the loss whose zero values and gradient are
            measured (StableMax losses are computed in float64 unless ``dtype`` says otherwise).
        logits_fn: ``(pl_module, batch) -> (logits, targets)`` for modules whose batches are not
            ``(inputs, targets)`` with ``pl_module(inputs)`` returning logits.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        probe_size: int = 8192,
        dtype: torch.dtype | str | None = None,
        loss: str = "softmax",
        logits_fn: LogitsFn | None = None,
    ) -> None:
        check_positive_int("every_n_steps", every_n_steps)
        check_positive_int("probe_size", probe_size)
        check_choice("loss", loss, COLLAPSE_LOSSES)
        if isinstance(dtype, str):  # from a config file: "float64"
            dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(
                f"dtype must be a floating torch dtype (or its name) or None; got {dtype!r}."
            )
        self.every_n_steps, self.probe_size = every_n_steps, probe_size
        self.dtype, self.loss = dtype, loss
        self.logits_fn = logits_fn or forward_first_input
        self._probe: Any = None
        self._last_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, loss=self.loss)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if not due_at_step(step, self._last_step, self.every_n_steps):
            return  # a micro-batch of an accumulating step, or not a measuring step
        self._last_step = step
        if self._probe is None:
            self._probe = build_probe(trainer, None, self.probe_size, 0, first=True).batch
        was_training = pl_module.training
        pl_module.eval()
        try:
            metrics = self._measure(trainer, pl_module)
        finally:
            pl_module.train(was_training)
        for key, value in metrics.items():
            pl_module.log(f"softmax_collapse/{key}", value, on_step=True, on_epoch=False)

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        weights = [(k, p) for k, p in pl_module.named_parameters() if p.requires_grad]
        weights = [(k, p) for k, p in weights if p.ndim >= 2]
        with torch.enable_grad():
            logits, targets = self.logits_fn(pl_module, self._probe)
            loss_fn = classification_loss(self.loss)
            loss = loss_fn(logits.to(self.dtype) if self.dtype else logits, targets)
            grads = torch.autograd.grad(loss, [p for _, p in weights], allow_unused=True)
        logits = logits.detach()
        # The normaliser the loss exponentiates: the logits, or StableMax's log s(z).
        if self.loss == "softmax":
            scores = logits
        else:
            scores = stablemax_scores(logits.to(self.dtype or logits.dtype))
        n = torch.tensor(float(len(targets)), device=logits.device)
        sums = torch.stack(
            [
                softmax_collapse_fraction(scores, dtype=self.dtype).to(n) * n,
                zero_loss_fraction(logits, targets, loss=self.loss, dtype=self.dtype).to(n) * n,
                n,
            ]
        )
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
        max_logit = trainer.strategy.reduce(logits.max().float(), reduce_op="max")
        metrics = {
            "sc_fraction": float(sums[0] / sums[2]),
            "zero_loss_fraction": float(sums[1] / sums[2]),
            "max_logit": float(max_logit),
        }
        measured = [(k, p, g) for (k, p), g in zip(weights, grads, strict=True) if g is not None]
        cosines = nlm_cosines([_with_grad(p, g) for _, p, g in measured]).tolist()
        for (name, p, _), cosine in zip(measured, cosines, strict=True):
            metrics[f"weight_norm/{name}"] = float(p.detach().float().norm())
            metrics[f"cos_w_g/{name}"] = cosine
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict["last_step"]


def _with_grad(param: Tensor, grad: Tensor) -> Tensor:
    """A detached alias of ``param`` holding ``grad``; the real ``.grad`` is untouched."""
    view = param.detach()
    view.grad = grad
    return view
