"""Optimizer-step time of LANTON relative to torch.optim.Muon (+ AdamW for the rest).

The model is the ``tiny_lm`` GPT; each timed step is ``optimizer.step()`` alone, on gradients
from one real backward pass that all optimizers share. Three optimizers are stepped
alternately one step at a time (so machine noise hits all), and the figure is the ratio of mean
step times (the mean, since with ``noise_every=k`` one step in k carries the noise estimate):

- ``muon``: ``torch.optim.Muon`` on the hidden matrices plus ``torch.optim.AdamW`` on the rest,
  as Muon is usually run (two optimizers, stepped one after the other);
- ``lanton``: LANTON over :func:`lightning_dyn.optim.param_groups` with the cheap dual-norm
  estimate (the default); ``lanton_noise_every_k``: the noise measured every k-th step;
  ``lanton_exact``: with ``svdvals`` nuclear norms.

    python benchmarks/lanton_step_time.py --d-model 128 --n-layer 4 --steps 60
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lightning_dyn.optim import LANTON, param_groups
from lightning_dyn.recipes import TinyGPT


def _muon_and_adamw(model: torch.nn.Module) -> list[torch.optim.Optimizer]:
    groups = {g["lmo"]: g["params"] for g in param_groups(model)}
    return [
        torch.optim.Muon(groups["spectral"], lr=0.02, weight_decay=0.0),
        torch.optim.AdamW(groups.get("sign", []) + groups.get("adamw", []), lr=3e-3),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    vocab, context, batch = 100, 64, 32
    base = TinyGPT(vocab, context, d_model=args.d_model, n_layer=args.n_layer)
    settings = {
        "lanton": {},
        "lanton_noise_every_4": {"noise_every": 4},
        "lanton_noise_every_8": {"noise_every": 8},
        "lanton_exact": {"exact_dual_norm": True},
    }
    models = {name: copy.deepcopy(base) for name in ("muon", *settings)}
    optimizers = {"muon": _muon_and_adamw(models["muon"])}
    for name, kwargs in settings.items():
        optimizers[name] = [LANTON(param_groups(models[name]), **kwargs)]
    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.steps):
        tokens = torch.randint(0, vocab, (batch, context + 1))
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            logits = model(tokens[:, :-1])
            F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
            start = time.perf_counter()
            for optimizer in optimizers[name]:
                optimizer.step()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    # The mean, not the median: with noise_every=k one step in k is the expensive one.
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                "torch": torch.__version__,
                "parameters": sum(p.numel() for p in base.parameters()),
                "mean_ms_per_optimizer_step": {k: round(1e3 * v, 3) for k, v in mean.items()},
                "ratio_over_muon": {name: round(mean[name] / mean["muon"], 3) for name in settings},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
