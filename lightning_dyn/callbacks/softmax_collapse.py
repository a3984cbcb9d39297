"""Softmax Collapse and naive-loss-minimisation diagnostics on a fixed probe of the training set."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from typing_extensions import override

from lightning_dyn._checks import (
    check_callable,
    check_choice,
    check_float_dtype,
    check_positive_int,
)
from lightning_dyn.callbacks._adapters import (
    LOGITS_FN_SIGNATURE,
    ForwardFirstInput,
    LogitsFn,
    per_position,
)
from lightning_dyn.callbacks._divergence import DivergenceGuard, nan_metrics
from lightning_dyn.callbacks._intervals import due_at_step
from lightning_dyn.callbacks._measurement import probe_gradients, probe_pass
from lightning_dyn.callbacks._probe import Probe, build_probe
from lightning_dyn.functional.losses import classification_loss
from lightning_dyn.functional.perp_grad import nlm_cosines
from lightning_dyn.functional.softmax_collapse import (
    COLLAPSE_LOSSES,
    CollapseLoss,
    softmax_collapse_fraction,
    zero_loss_fraction,
)
from lightning_dyn.functional.stablemax import stablemax_scores


class SoftmaxCollapseMonitor(pl.Callback):
    """Logs how close training is to Softmax Collapse (SC), arXiv 2501.04697 Sec. 3-4.

    Runs in ``on_train_batch_end`` every ``every_n_steps`` optimizer steps, on a fixed probe: the
    first ``probe_size`` examples of the training set by index, drawn at ``on_train_start`` and
    converted to the training precision. Each DDP rank takes every ``world_size``-th of them;
    counts and the probe loss's gradient are summed over ranks, so the metrics are those of the
    whole probe, each example counted once (under FSDP2 the gradient is reduced by FSDP itself
    and the cosines are computed on the shards). The pass runs in eval mode without changing any
    ``.grad``, and every submodule gets its own mode back afterwards. Per-token targets
    (language models: logits ``(N, T, K)``, targets ``(N, T)``) count each position, leaving out
    targets of -100. Logs, under ``softmax_collapse/``:

    - ``sc_fraction``: fraction of probe examples whose ``sum_k exp(z_k - max z) == 1`` exactly in
      ``dtype`` (paper Def. 3): their correct-class gradient is exactly zero. For
      ``loss="stablemax"`` the test is applied to StableMax's own normaliser, i.e. to the scores
      ``sign(z) log1p(|z|)`` whose softmax StableMax is;
    - ``zero_loss_fraction``: fraction whose per-example loss is exactly 0 in ``dtype``;
    - ``max_logit``: the largest logit on the probe;
    - ``weight_norm/<name>`` and ``cos_w_g/<name>``: per weight tensor (``ndim >= 2``), the norm
      and the NLM alignment cos(W, -∇L) of the probe loss (paper Fig. 5).

    The probe is rebuilt from the dataset after a resume, so the logged numbers continue exactly.
    When the probe's logits or gradient are not finite (a diverged run) the scalars are logged as
    NaN, a warning names the step, and training goes on.

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
            ``(inputs, targets)`` with ``pl_module(inputs)`` returning logits, e.g.
            ``lambda module, batch: (module(batch["x"]), batch["y"])`` for dict batches.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        probe_size: int = 8192,
        dtype: torch.dtype | str | None = None,
        loss: CollapseLoss = "softmax",
        logits_fn: LogitsFn | None = None,
    ) -> None:
        check_positive_int("every_n_steps", every_n_steps)
        check_positive_int("probe_size", probe_size)
        check_choice("loss", loss, COLLAPSE_LOSSES)
        if isinstance(dtype, str):  # from a config file: "float64"
            dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
        check_float_dtype("dtype", dtype, optional=True, hint=" (or its name)")
        check_callable("logits_fn", logits_fn, LOGITS_FN_SIGNATURE)
        self.every_n_steps, self.probe_size = every_n_steps, probe_size
        self.dtype, self.loss = dtype, loss
        self.logits_fn = logits_fn or ForwardFirstInput(type(self).__name__)
        self._probe: Probe | None = None
        self._last_step = -1
        self._guard = DivergenceGuard(type(self).__name__)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, loss=self.loss)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Drawn here, where the training loader exists: a probe that cannot work fails at once.
        self._probe = build_probe(trainer, None, self.probe_size, 0, first=True)
        self._guard.start_fit()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if not due_at_step(step, self._last_step, self.every_n_steps):
            return  # a micro-batch of an accumulating step, or not a measuring step
        self._last_step = step
        with probe_pass(pl_module):
            metrics = self._measure(trainer, pl_module)
        for key, value in metrics.items():
            pl_module.log(f"softmax_collapse/{key}", value, on_step=True, on_epoch=False)

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        weights = [(k, p) for k, p in pl_module.named_parameters() if p.requires_grad]
        weights = [(k, p) for k, p in weights if p.ndim >= 2]
        owner = type(self).__name__
        with torch.enable_grad():
            logits, targets = self.logits_fn(pl_module, self._probe.batch)
            logits, targets = per_position(logits, targets, owner)
            loss_fn = classification_loss(self.loss)
            # The sum: each rank's share adds up to the whole probe's gradient (cosines do not
            # see the scale).
            scores = logits.to(self.dtype) if self.dtype else logits
            loss = loss_fn(scores, targets, reduction="sum")
            grads, reduced = probe_gradients(pl_module, loss, [p for _, p in weights])
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
        local_max = logits.max().float() if logits.numel() else logits.new_tensor(-math.inf).float()
        max_logit = trainer.strategy.reduce(local_max, reduce_op="max")
        measured = [(k, p, g) for (k, p), g in zip(weights, grads, strict=True) if g is not None]
        if trainer.world_size > 1 and measured and not reduced:
            flat = torch.cat([g.reshape(-1).float() for _, _, g in measured])
            flat = trainer.strategy.reduce(flat, reduce_op="sum")
            pieces = flat.split([g.numel() for _, _, g in measured])
            measured = [
                (k, p, x.view_as(g).to(g.dtype))
                for (k, p, g), x in zip(measured, pieces, strict=True)
            ]
        grad_norm = torch.stack([_norm(g) for _, _, g in measured]).sum() if measured else 0.0
        if not self._guard.all_finite(trainer, [sums, max_logit, grad_norm], synced=True):
            return nan_metrics(("sc_fraction", "zero_loss_fraction", "max_logit"))
        metrics = {
            "sc_fraction": float(sums[0] / sums[2]),
            "zero_loss_fraction": float(sums[1] / sums[2]),
            "max_logit": float(max_logit),
        }
        cosines = nlm_cosines([_with_grad(p, g) for _, p, g in measured]).tolist()
        for (name, p, _), cosine in zip(measured, cosines, strict=True):
            metrics[f"weight_norm/{name}"] = float(_norm(p.detach()))
            metrics[f"cos_w_g/{name}"] = cosine
        return metrics

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step, **self._guard.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict["last_step"]
        self._guard.load_state_dict(state_dict)


def _norm(t: Tensor) -> Tensor:
    """The float32 norm of a tensor, or of the whole tensor an FSDP2 shard belongs to."""
    norm = t.float().norm()
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _with_grad(param: Tensor, grad: Tensor) -> Tensor:
    """A detached alias of ``param`` holding ``grad``; the real ``.grad`` is untouched."""
    view = param.detach()
    view.grad = grad
    return view
