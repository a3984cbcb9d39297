"""Seconds per training step of the grokking recipe: Lightning vs a plain PyTorch loop.

Both sides do the same work per step: a full-batch forward/backward/AdamW step on a fresh
permutation of the 5107 training pairs, train loss and accuracy read back, and a no-grad pass
over the 7662 test pairs in eval mode with its loss and accuracy. ``lightning`` runs without
logger or progress bar; ``lightning+csv+bar`` adds a CSVLogger and the CLI's progress bar.
Runs alternate (Lightning, plain, Lightning, ...) so that machine noise hits both; the figure is
the ratio of median seconds per step, timed from step ``--warmup`` to the end of the run.

    python benchmarks/lightning_overhead.py --steps 200 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import lightning.pytorch as pl
import torch
from _timing import StepClock
from lightning.pytorch.loggers import CSVLogger

from lightning_dyn._progress import StepProgressBar
from lightning_dyn.recipes import ModularArithmeticDataModule, ModularArithmeticModule


def lightning_seconds_per_step(steps: int, warmup: int, with_logging: bool, root: str) -> float:
    pl.seed_everything(0, verbose=False)
    clock = StepClock(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        logger=CSVLogger(root) if with_logging else False,
        enable_progress_bar=with_logging,
        enable_checkpointing=False,
        enable_model_summary=False,
        # The CLI's progress bar, refreshed every 10 steps.
        callbacks=[clock, StepProgressBar(refresh_rate=10)] if with_logging else [clock],
        default_root_dir=root,
    )
    trainer.fit(ModularArithmeticModule(), datamodule=ModularArithmeticDataModule())
    return clock.seconds_per_step(steps)


def plain_seconds_per_step(steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    data = ModularArithmeticDataModule()
    data.setup()
    module = ModularArithmeticModule(p=data.p)
    optimizer = module.configure_optimizers()
    train_pairs, train_labels = data.train_set.tensors
    test_pairs, test_labels = data.val_set.tensors
    history = []
    start = 0.0
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        module.train()
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(step))
        pairs, labels = train_pairs[order], train_labels[order]
        logits = module(pairs)
        loss = module.loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_acc = (logits.argmax(-1) == labels).float().mean()
        module.eval()
        with torch.no_grad():
            test_logits = module(test_pairs)
            test_loss = module.loss_fn(test_logits, test_labels)
            test_acc = (test_logits.argmax(-1) == test_labels).float().mean()
        history.append([float(loss), float(train_acc), float(test_loss), float(test_acc)])
    return (time.perf_counter() - start) / (steps - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", default="outputs/benchmarks/lightning_overhead")
    args = parser.parse_args()

    times: dict[str, list[float]] = {"plain": [], "lightning": [], "lightning+csv+bar": []}
    for _ in range(args.repeats):
        times["lightning"].append(
            lightning_seconds_per_step(args.steps, args.warmup, False, args.root)
        )
        times["plain"].append(plain_seconds_per_step(args.steps, args.warmup))
        times["lightning+csv+bar"].append(
            lightning_seconds_per_step(args.steps, args.warmup, True, args.root)
        )
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "ms_per_step_median": {k: round(1e3 * v, 2) for k, v in median.items()},
        "ratio_lightning_over_plain": round(median["lightning"] / median["plain"], 3),
        "ratio_lightning_csv_bar_over_plain": round(
            median["lightning+csv+bar"] / median["plain"], 3
        ),
        "per_repeat_ratio": [
            round(a / b, 3) for a, b in zip(times["lightning"], times["plain"], strict=True)
        ],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
