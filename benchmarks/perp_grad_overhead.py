"""Step time with ⊥Grad relative to the same step without it.

Training with and without ⊥Grad is timed side by side, alternating so that machine noise hits
both, and the figure is the ratio of median seconds per step:

- ``loop``: a plain PyTorch step (zero_grad, forward, cross-entropy, backward, AdamW step) with
  and without ``perp_grad_`` between backward and step, on two copies of the model stepped
  alternately one step at a time; the ratio of median step times;
- ``lightning``: ``Trainer.fit`` runs (validation off) without and with the ``PerpGrad``
  callback, alternating whole runs, ``--repeats`` of each; the callback also logs the
  per-tensor NLM cosines every ``log_every_n_steps``.

Models: the grokking MLP (226-200-200-113, no bias, full batch of 5107 pairs) and a ~10M
parameter MLP (1024-2048-2048-2048-1024-10 with biases, batch 256 of random data).

    python benchmarks/perp_grad_overhead.py --repeats 9
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _timing import StepClock
from torch import nn

from lightning_dyn.callbacks import PerpGrad
from lightning_dyn.functional import perp_grad_
from lightning_dyn.recipes import ModularArithmeticDataModule, ModularArithmeticModule


def _grokking_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data = ModularArithmeticDataModule()
    data.setup()
    pairs, labels = data.train_set.tensors
    return ModularArithmeticModule(p=113).model, pairs, labels


def _ten_million_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    widths = [1024, 2048, 2048, 2048, 1024]
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(widths):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 10))
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, widths[0], generator=generator)
    return model, inputs, torch.randint(0, 10, (256,), generator=generator)


PROBLEMS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]] = {
    "grokking_mlp": _grokking_problem,
    "mlp_10m": _ten_million_problem,
}


def loop_step_times(problem: str, steps: int, warmup: int) -> dict[str, list[float]]:
    """Per-step seconds of two copies of one model, stepped alternately, plain and projected.

    Alternating single steps (rather than whole runs) makes both sides see the same machine.
    """
    torch.manual_seed(0)
    model, inputs, labels = PROBLEMS[problem]()
    models = {"plain": model, "perp_grad": copy.deepcopy(model)}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    times: dict[str, list[float]] = {"plain": [], "perp_grad": []}
    for step in range(steps):
        for name, m in models.items():
            start = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            F.cross_entropy(m(inputs), labels).backward()
            if name == "perp_grad":
                perp_grad_(m.parameters())
            optimizers[name].step()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _loop_ratio(problem: str, steps: int, warmup: int) -> dict[str, Any]:
    times = loop_step_times(problem, steps, warmup)
    plain, projected = statistics.median(times["plain"]), statistics.median(times["perp_grad"])
    return {
        "steps_timed": len(times["plain"]),
        "ms_per_step_plain": round(1e3 * plain, 3),
        "ms_per_step_perp_grad": round(1e3 * projected, 3),
        "ratio": round(projected / plain, 4),
    }


def lightning_seconds_per_step(
    project: bool, log_every_n_steps: int, steps: int, warmup: int, root: str
) -> float:
    pl.seed_everything(0, verbose=False)
    clock = StepClock(warmup)
    callbacks: list[pl.Callback] = [clock, PerpGrad()] if project else [clock]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        log_every_n_steps=log_every_n_steps,
        logger=pl.loggers.CSVLogger(root),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=root,
    )
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.99), eps=1e-25)
    module = ModularArithmeticModule(optimizer=optimizer)
    trainer.fit(module, datamodule=ModularArithmeticDataModule())
    return clock.seconds_per_step(steps)


def _ratio(measure: Callable[[bool], float], repeats: int) -> dict[str, Any]:
    plain, projected = [], []
    for _ in range(repeats):
        plain.append(measure(False))
        projected.append(measure(True))
    median_plain, median_projected = statistics.median(plain), statistics.median(projected)
    return {
        "ms_per_step_plain": round(1e3 * median_plain, 3),
        "ms_per_step_perp_grad": round(1e3 * median_projected, 3),
        "ratio": round(median_projected / median_plain, 4),
        "per_repeat_ratio": [round(b / a, 3) for a, b in zip(plain, projected, strict=True)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--root", default="outputs/benchmarks/perp_grad_overhead")
    args = parser.parse_args()
    results = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "loop/grokking_mlp": _loop_ratio("grokking_mlp", 1000, 20),
        "loop/mlp_10m": _loop_ratio("mlp_10m", 300, 5),
    }
    for every in (50, 1):
        results[f"lightning/grokking_mlp/log_every_{every}"] = _ratio(
            lambda p, e=every: lightning_seconds_per_step(p, e, 80, 10, args.root), args.repeats
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
