"""Hessian sharpness and spectrum during training, against the optimiser's edge of stability."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_dyn._checks import check_bool, check_callable, check_choice, check_positive_int
from lightning_dyn.callbacks._adapters import (
    LossOfFirstInput,
)
from lightning_dyn.callbacks._divergence import DivergenceGuard, nan_metrics
from lightning_dyn.callbacks._intervals import due_at_step
from lightning_dyn.callbacks._measurement import (
    is_sharded,
    probe_gradients,
    probe_pass,
    whole,
)
from lightning_dyn.callbacks._optimizer_scaling import optimizer_scaling
from lightning_dyn.callbacks._probe import Probe, build_probe, chunked, take
from lightning_dyn.functional.finite_difference import FiniteDifferenceHessian
from lightning_dyn.functional.hvp import BatchLossFn, HessianOperator
from lightning_dyn.functional.lanczos import (
    hessian_eigenvalues,
    hessian_spectral_density,
    hessian_trace,
)
from lightning_dyn.functional.losses import ClassificationLoss
from lightning_dyn.loggers import log_figure

SharpnessMethod = Literal["double_backward", "forward_over_reverse", "finite_difference"]
HVP_METHODS: tuple[str, ...] = get_args(SharpnessMethod)


class SharpnessMonitor(pl.Callback):
    """Top Hessian eigenvalues, trace and spectral density on a fixed probe, while training.

    Cohen et al. (arXiv 2103.00065): under full-batch gradient descent the sharpness
    ``λ_max(H)`` rises until it reaches the optimiser's stability threshold (``2/η`` for SGD)
    and hovers there (the edge of stability). Every ``every_n_steps`` optimizer steps, in
    ``on_train_batch_end`` (a training hook: never under ``inference_mode``), on the eager
    LightningModule (not the DDP wrapper) with every ``torch.compile``d submodule run eager
    (AOTAutograd has no double backward), in eval mode with autocast off and attention on its
    math kernel (the fused ``scaled_dot_product_attention`` kernels have no second derivatives),
    without touching ``.grad`` and restoring every module's mode afterwards, this callback logs
    under ``sharpness/``:

    - ``lambda_1`` ... ``lambda_<n_eigs>``: the largest *signed* eigenvalues of the probe loss's
      Hessian (Lanczos, ``functional.hessian_eigenvalues``, warm-started from the previous top
      eigenvector), and ``lambda_min`` with ``smallest=True``;
    - ``threshold`` and ``ratio``: the optimiser's threshold in units of ``λ`` (``2/η`` for SGD,
      ``2(1+β)/η`` with heavy-ball momentum, ``(2+2β)/((1+2β)η)`` Nesterov) and
      ``λ_max(D^{1/2} H D^{1/2}) / threshold`` for the per-parameter step sizes ``D``: 1 is the
      edge of stability. For Adam/AdamW the relevant quantity is the preconditioned sharpness
      ``preconditioned_lambda_1 = λ_max(P^{-1} H)`` against ``(2+2β1)/((1-β1)η)`` (arXiv
      2207.14484), measured on ``P^{-1/2} H P^{-1/2}`` from the optimiser's state (a parameter
      Adam never stepped, having had no gradient, has a zero Hessian block and step size 0).
      Other optimisers get no threshold; at learning rate 0 (a warm-up's first step) ``ratio``
      is 0 and no threshold is logged;
    - ``trace`` and ``trace_stderr`` (Hutchinson, ``trace_samples`` Rademacher probes);
    - ``hvps``: Hessian-vector products spent in this measurement; ``converged``: 1 when every
      eigenvalue met ``tol``;
    - with ``density_steps > 0``, the spectral density (stochastic Lanczos quadrature) as a
      figure ``sharpness/density`` (W&B image, or PNG under the logger's directory).

    The probe is the same examples at every measurement (``probe`` indices, a ``DataLoader``,
    or ``probe_size`` training examples drawn with ``seed``). Under DDP each rank holds every
    ``world_size``-th probe example; each Hessian-vector product is all-reduced, so every rank
    runs the same Lanczos iterations, collectives included. The warm-start vectors are in the
    callback's ``state_dict``, so a resumed run measures exactly as an uninterrupted one. When
    the Hessian-vector products are not finite (a diverged run) the scalars are logged as NaN, a
    warning names the step, and training goes on.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        probe: training-set indices, a ``DataLoader`` read once, or ``None``.
        probe_size: probe size when ``probe`` is ``None``.
        n_eigs: number of top eigenvalues.
        tol: relative residual tolerance of each eigenvalue.
        max_iter: most Lanczos iterations per eigen-solve (each one Hessian-vector product).
        smallest: also measure the smallest (most negative) eigenvalue.
        trace_samples: Hutchinson probes for the trace; 0 skips it.
        density_steps: Lanczos steps per vector of the spectral density; 0 skips it.
        density_vectors: random start vectors of the spectral density.
        method: ``"double_backward"``, ``"forward_over_reverse"`` (``torch.func``; fails on
            modules that mutate buffers in the forward pass even in eval mode) or
            ``"finite_difference"`` (central differences of two gradients,
            ``functional.FiniteDifferenceHessian``): the one that runs under FSDP2, where the
            sharded parameters are not in the autograd graph; the others are refused there at
            ``on_fit_start``.
        keep_graph: reuse the probe's gradient graph across the Hessian-vector products of one
            measurement (``"double_backward"`` only): about half the time per product, for the
            memory of the probe's autograd graph, freed after the measurement.
        warm_start: start each eigen-solve from the previous measurement's eigenvector instead
            of a random vector: on the edge_of_stability experiment 57% fewer products and the
            same λ_1 (median difference 1e-6), but once in 150 measurements, right after a loss
            spike, it converged to the second eigenvalue (4% low). Lanczos certifies an
            eigenpair, not that it is the top one; ``False`` lowers that risk.
        loss_fn: ``loss_fn(forward, batch) -> mean loss`` (``forward`` runs the module), or
            a name of :data:`~lightning_dyn.functional.CLASSIFICATION_LOSSES` (``"softmax"``,
            ``"stablemax"``, ``"square"``) for batches ``(inputs, targets)`` (per-token
            targets: the mean over positions). Measure the loss the module trains on: the edge
            of stability is a property of that loss.
        batch_size: probe examples per forward pass.
        seed: seed of the probe draw and of the random vectors.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        probe: Sequence[int] | DataLoader | None = None,
        probe_size: int = 1024,
        n_eigs: int = 1,
        tol: float = 1e-3,
        max_iter: int = 100,
        smallest: bool = False,
        trace_samples: int = 0,
        density_steps: int = 0,
        density_vectors: int = 4,
        method: SharpnessMethod = "double_backward",
        keep_graph: bool = True,
        warm_start: bool = True,
        loss_fn: BatchLossFn | ClassificationLoss = "softmax",
        batch_size: int = 1024,
        seed: int = 0,
    ) -> None:
        for name, value, minimum in (
            ("every_n_steps", every_n_steps, 1),
            ("probe_size", probe_size, 1),
            ("n_eigs", n_eigs, 1),
            ("max_iter", max_iter, 1),
            ("trace_samples", trace_samples, 0),
            ("density_steps", density_steps, 0),
            ("density_vectors", density_vectors, 1),
            ("batch_size", batch_size, 1),
        ):
            check_positive_int(name, value, minimum)
        if trace_samples == 1:
            raise ValueError("trace_samples must be 0 (off) or >= 2 (a standard error needs 2).")
        if not (isinstance(tol, int | float) and not isinstance(tol, bool) and tol > 0):
            raise ValueError(f"tol must be a positive number; got {tol!r}.")
        check_choice("method", method, HVP_METHODS)
        for name, flag in (
            ("smallest", smallest),
            ("keep_graph", keep_graph),
            ("warm_start", warm_start),
        ):
            check_bool(name, flag)
        if isinstance(loss_fn, str):
            loss_fn = LossOfFirstInput(type(self).__name__, loss_fn)
        check_callable("loss_fn", loss_fn, "(forward, batch) -> scalar loss", optional=False)
        self.every_n_steps, self.probe_spec, self.probe_size = every_n_steps, probe, probe_size
        self.n_eigs, self.tol, self.max_iter, self.smallest = n_eigs, tol, max_iter, smallest
        self.trace_samples, self.density_steps = trace_samples, density_steps
        self.density_vectors, self.method, self.loss_fn = density_vectors, method, loss_fn
        self.keep_graph = keep_graph and method == "double_backward"
        self.warm_start = warm_start
        self.batch_size, self.seed = batch_size, seed
        self._probe: Probe | None = None
        self._warm: dict[str, Tensor] = {}  # previous top eigenvectors, for warm starts
        self._last_step = -1
        self._warned: set[str] = set()
        self._guard = DivergenceGuard(type(self).__name__)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, n_eigs=self.n_eigs)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._probe = None  # a new fit may bring new data
        self._guard.start_fit()
        if is_sharded(pl_module) and self.method != "finite_difference":
            raise ValueError(
                f"SharpnessMonitor(method={self.method!r}) cannot run under FSDP2: the sharded "
                "parameters are not in the autograd graph, so there is no second derivative to "
                "take. Use method='finite_difference' (Hessian-vector products from two "
                "gradients)."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Drawn here, where the training loader exists: a probe that cannot work fails at once.
        self._probe = build_probe(trainer, self.probe_spec, self.probe_size, self.seed)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if not due_at_step(step, self._last_step, self.every_n_steps):
            return  # a micro-batch of an accumulating step, or not a measuring step
        self._last_step = step
        if torch.is_inference_mode_enabled():
            raise RuntimeError("SharpnessMonitor cannot differentiate under inference_mode.")
        # Replicated weights: every rank reaches the same verdict. (A loss quadratic in the
        # weights has a finite Hessian even at NaN weights; the run has diverged all the same.)
        weights = [p.detach() for p in pl_module.parameters() if p.requires_grad]
        if not self._guard.all_finite(trainer, weights, synced=True):
            metrics = nan_metrics(self._scalar_keys())
        else:
            metrics = self._measure_guarded(trainer, pl_module)
        for key, value in metrics.items():
            pl_module.log(f"sharpness/{key}", value, on_step=True, on_epoch=False)

    def _measure_guarded(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, float]:
        with torch.enable_grad(), probe_pass(pl_module, differentiable=True):
            try:
                return self._measure(trainer, pl_module)
            except FloatingPointError:
                # Raised by the Lanczos routines on a non-finite product: the products are
                # all-reduced, so every rank raises at the same product and none is left waiting.
                self._guard.record(trainer, "non-finite Hessian-vector products")
                return nan_metrics(self._scalar_keys())

    # --- measurement ----------------------------------------------------------------------------

    def _operator(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        probe = self._probe
        n_local = len(probe.positions)
        sharded = is_sharded(pl_module)
        most = -(-probe.size // trainer.world_size) if sharded else None
        rows = chunked(torch.arange(n_local), self.batch_size, most)
        chunks = [take(probe.batch, r) for r in rows]
        if self.method != "finite_difference":
            return HessianOperator(
                pl_module, self.loss_fn, chunks, method=self.method, keep_graph=self.keep_graph
            )
        params = [p for p in pl_module.parameters() if p.requires_grad]
        # This rank's mean over its share; under FSDP2, whose gradients come averaged over the
        # ranks, scaled so that the average is the mean over the whole probe.
        weights = [
            len(r) / probe.size * trainer.world_size if sharded else len(r) / n_local for r in rows
        ]

        def gradient() -> list[Tensor | None]:
            totals: list[Tensor | None] = [None] * len(params)
            for chunk, weight in zip(chunks, weights, strict=True):
                # nan_to_num: an empty chunk (kept for FSDP's collectives) has a NaN mean.
                loss = self.loss_fn(pl_module, chunk).nan_to_num() * weight
                grads, _ = probe_gradients(pl_module, loss, params)
                totals = [
                    g if t is None else t if g is None else t + g
                    for t, g in zip(totals, grads, strict=True)
                ]
            return totals

        return FiniteDifferenceHessian(gradient, params)

    def _scalar_keys(self) -> list[str]:
        keys = [f"lambda_{i}" for i in range(1, self.n_eigs + 1)] + ["hvps", "converged"]
        keys += ["lambda_min"] if self.smallest else []
        return keys + (["trace", "trace_stderr"] if self.trace_samples else [])

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        local = self._operator(trainer, pl_module)
        try:
            return self._measure_with(trainer, pl_module, local)
        finally:
            local.release()

    def _measure_with(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, local: HessianOperator
    ) -> dict[str, float]:
        # The probe loss is the mean over all ranks' examples: weight this rank's mean by its
        # share and sum the products over ranks (FSDP2 has reduced the gradients already).
        share = len(self._probe.positions) / self._probe.size
        reduced = is_sharded(pl_module)

        def matvec(v: Tensor) -> Tensor:
            if reduced:
                return local.matvec(v)
            return trainer.strategy.reduce(local.matvec(v) * share, reduce_op="sum")

        metrics: dict[str, float] = {}
        hvps = 0
        top = self._eigen(matvec, local, "top", self.n_eigs, "largest")
        hvps += top.num_hvps
        converged = bool(top.converged)
        for i, value in enumerate(top.values.tolist(), start=1):
            metrics[f"lambda_{i}"] = value
        if self.smallest:
            low = self._eigen(matvec, local, "min", 1, "smallest")
            hvps += low.num_hvps
            converged &= bool(low.converged)
            metrics["lambda_min"] = float(low.values[0])
        scaled, used = self._stability(trainer, pl_module, local, matvec, metrics)
        hvps += used
        converged &= scaled
        if self.trace_samples:
            trace = hessian_trace(
                matvec, samples=self.trace_samples, seed=self.seed, **_space(local)
            )
            metrics.update(trace=float(trace.mean), trace_stderr=float(trace.stderr))
            hvps += trace.num_hvps
        if self.density_steps:
            density = hessian_spectral_density(
                matvec,
                steps=self.density_steps,
                n_vectors=self.density_vectors,
                seed=self.seed,
                **_space(local),
            )
            hvps += density.num_hvps
            log_figure(trainer, "sharpness/density", _density_figure(density, trainer))
        metrics.update(hvps=float(hvps), converged=float(converged))
        return metrics

    def _eigen(self, matvec: Callable, local: HessianOperator, key: str, k: int, which: str) -> Any:
        warm = self._warm.get(key) if self.warm_start else None
        v0 = warm if warm is not None and warm.numel() == local.dim else None
        result = hessian_eigenvalues(
            matvec,
            k=k,
            which=which,
            tol=self.tol,
            max_iter=self.max_iter,
            v0=None if v0 is None else v0.to(local.device),
            seed=self.seed,
            **_space(local),
        )
        self._warm[key] = result.vectors[0].detach().float().cpu()
        return result

    def _stability(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        local: HessianOperator,
        matvec: Callable,
        metrics: dict[str, float],
    ) -> tuple[bool, int]:
        """Adds ``threshold``/``ratio`` (and the preconditioned sharpness); returns
        (converged, HVPs used)."""
        if not trainer.optimizers:
            return True, 0
        scaling, why = optimizer_scaling(trainer.optimizers[0], local.params)
        if scaling is None:
            self._warn_once(why)
            return True, 0
        if scaling.steps is None:
            return True, 0  # Adam before its first step
        if scaling.uniform_lr == 0.0:
            metrics["ratio"] = 0.0  # no step at all: stable, and 2/η is infinite
            return True, 0
        if scaling.uniform_lr is not None and not scaling.preconditioned:
            # One step size: λ_max(D^{1/2} H D^{1/2}) = η λ_1, no extra solve needed.
            lam = metrics["lambda_1"]
            metrics["threshold"] = scaling.threshold / scaling.uniform_lr
            metrics["ratio"] = scaling.uniform_lr * lam / scaling.threshold
            return True, 0
        root = torch.cat([whole(s).reshape(-1) for s in scaling.steps]).sqrt().to(local.device)

        def scaled(v: Tensor) -> Tensor:
            return root * matvec(root * v)

        result = self._eigen(scaled, local, "scaled", 1, "largest")
        effective = float(result.values[0])
        metrics["ratio"] = effective / scaling.threshold
        if scaling.uniform_lr is not None:
            metrics["threshold"] = scaling.threshold / scaling.uniform_lr
            if scaling.preconditioned:
                metrics["preconditioned_lambda_1"] = effective / scaling.uniform_lr
        return bool(result.converged), result.num_hvps

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            rank_zero_warn(f"SharpnessMonitor: {message}; logging no stability threshold.")

    # --- checkpoints ----------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step, "warm": dict(self._warm), **self._guard.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict["last_step"]
        self._warm = dict(state_dict["warm"])
        self._guard.load_state_dict(state_dict)


def _space(local: HessianOperator) -> dict[str, Any]:
    """The vector space of a plain ``matvec`` closure: the operator's size, dtype and device."""
    return {"dim": local.dim, "dtype": local.dtype, "device": local.device}


def _density_figure(density: Any, trainer: pl.Trainer) -> Any:
    import matplotlib.pyplot as plt

    nodes = density.nodes.double()
    low, high = float(nodes.min()), float(nodes.max())
    pad = 0.05 * max(high - low, 1e-6)
    grid = torch.linspace(low - pad, high + pad, 400, dtype=torch.float64)
    sigma = max((high - low) / 200, 1e-6)
    values = density.on_grid(grid, sigma)
    figure, axes = plt.subplots(figsize=(5, 3), dpi=100)
    axes.semilogy(grid.numpy(), values.clamp_min(1e-12).numpy())
    axes.set(xlabel="eigenvalue", ylabel="density", title=f"step {trainer.global_step}")
    figure.tight_layout()
    return figure
