"""LANTON vs Muon vs AdamW on the ``tiny_lm`` recipe: small LR sweep, several seeds, equal steps.

For every optimizer and learning rate of its grid, train the default char-level GPT (d_model 64,
2 layers, context 64, batch 32, 2M characters of the standard library's source) for ``--steps``
steps with each seed, validating every 100 steps. The best learning rate of each optimizer is
the one with the lowest mean final validation loss; for it the script prints the mean ± sd over
seeds and the first validation step at which the mean curve reaches AdamW's best final loss.

    python benchmarks/tiny_lm_optimizers.py --steps 500 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_dyn.optim import LANTON
from lightning_dyn.recipes import CharCorpusDataModule, TinyLMModule


def _adamw(lr: float) -> Any:
    return functools.partial(torch.optim.AdamW, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)


def _muon(lr: float) -> Any:
    return functools.partial(
        LANTON.from_module,
        adaptive=False,
        lr=lr,
        adamw_lr=3e-3,
        embeddings_as="adamw",
        spectral_scale="muon",
    )


def _lanton(lr: float) -> Any:
    return functools.partial(LANTON.from_module, adaptive=True, lr=lr, sign_lr=2e-3, adamw_lr=3e-3)


def _lanton_noise_every_8(lr: float) -> Any:
    return functools.partial(LANTON.from_module, lr=lr, sign_lr=2e-3, adamw_lr=3e-3, noise_every=8)


OPTIMIZERS = {
    "adamw": (_adamw, (1e-3, 3e-3, 1e-2)),
    "muon": (_muon, (0.005, 0.01, 0.02, 0.05)),
    "lanton": (_lanton, (0.01, 0.02, 0.05)),
    # The cheaper setting of benchmarks/lanton_step_time.py, at LANTON's best lr.
    "lanton_noise_every_8": (_lanton_noise_every_8, (0.02,)),
}


class _ValCurve(pl.Callback):
    def __init__(self) -> None:
        self.curve: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.curve.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))


def run(factory: Any, seed: int, steps: int, root: str) -> list[tuple[int, float]]:
    pl.seed_everything(seed, verbose=False)
    curve = _ValCurve()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[curve],
        default_root_dir=root,
    )
    trainer.fit(TinyLMModule(optimizer=factory), datamodule=CharCorpusDataModule(seed=seed))
    return curve.curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="outputs/benchmarks/tiny_lm_optimizers")
    args = parser.parse_args()

    best: dict[str, dict[str, Any]] = {}
    for name, (make, grid) in OPTIMIZERS.items():
        for lr in grid:
            curves = [run(make(lr), seed, args.steps, args.root) for seed in args.seeds]
            finals = [c[-1][1] for c in curves]
            mean_curve = [
                (step, statistics.fmean(c[i][1] for c in curves))
                for i, (step, _) in enumerate(curves[0])
            ]
            record = {
                "lr": lr,
                "final_val_loss_mean": round(statistics.fmean(finals), 4),
                "final_val_loss_sd": round(statistics.stdev(finals), 4) if len(finals) > 1 else 0,
                "mean_curve": [(s, round(v, 4)) for s, v in mean_curve],
            }
            print(json.dumps({"optimizer": name, **record}), flush=True)
            if (
                name not in best
                or record["final_val_loss_mean"] < best[name]["final_val_loss_mean"]
            ):
                best[name] = record
    target = best["adamw"]["final_val_loss_mean"]
    for name, record in best.items():
        reach = next((s for s, v in record["mean_curve"] if v <= target), None)
        summary = {k: record[k] for k in ("lr", "final_val_loss_mean", "final_val_loss_sd")}
        print(json.dumps({"best": name, **summary, "steps_to_adamw_final_loss": reach}))


if __name__ == "__main__":
    main()
