"""Step time with ``OutlierPairDetector`` relative to the same training without it.

The ``opposing_signals`` recipe (synthetic 8x8 images of 4 classes, a bright patch planted on
25% of classes 0 and 1, 128-128 MLP, full-batch SGD lr 0.03) with ``per_class=1100``: 4400
training examples, all of them in every step, the same data and initial weights in every run.
``Trainer.fit`` runs without the detector (the baseline) and with it for probe sizes 512 and
4096 and ``every_n_steps`` 1 and 10; the detector keeps the recipe's other settings (k 32,
window 8, penultimate features clustered into 4 clusters split by target, a search with gradient
checks at every evaluation once the window is full). No logger, progress bar, checkpointing or
validation; without a W&B logger the detector writes its report of flagged pairs (a CSV table,
pictures of the examples, a loss figure; on the first flag, then at most once per 100
evaluations) under ``--root``.

Each repeat runs the five configurations once, whole runs one after the other, starting one
configuration later every repeat, so that machine noise hits all of them. The figure is the ratio
of median seconds per step, with the ratio of each repeat to that repeat's baseline. Each run
takes ``--warmup`` steps before the timed ``--steps`` (timed from the start of the first timed
step to the end of training, ``_timing.StepClock``): with this data and seed the planted pair
oscillates from about step 222, so after the default 240 warm-up steps every search with
``every_n_steps=1`` compares group gradients and flags the pair, which is the detector's most
expensive regime. Sampled every 10 steps, the period-2 oscillation aliases away, so with
``every_n_steps=10`` few searches get as far as the gradient check: the table counts, over the
timed steps of a run, the searches, those that compared gradients, those that flagged a pair and
the reports written. It also gives the time spent inside the detector per timed step (all of
its work, amortised) and the median time of one search (a typical one, without a report).

On a machine whose cores are shared, pass ``--threads 1`` (see ``stablemax_overhead.py``; with
two threads next to a busy neighbour, a step of the baseline took 8x longer than with one).

    python benchmarks/outlier_pairs_overhead.py --steps 160 --repeats 7 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from _timing import StepClock

from lightning_dyn.callbacks import OutlierPairDetector
from lightning_dyn.recipes import OpposingSignalsDataModule, OpposingSignalsModule

NUM_CLASSES, PER_CLASS = 4, 1100  # 4400 training examples (the 1100 held out are not used)
WINDOW = 8  # the recipe's window
PROBE_SIZES = (512, 4096)
EVERY_N_STEPS = (1, 10)


class TimedDetector(OutlierPairDetector):
    """The detector, timing its hook and its searches after step ``timed_from``."""

    def __init__(self, timed_from: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timed_from = timed_from
        self.hook_seconds = 0.0
        self.search_ms: list[float] = []
        self.compared = self.flagged = self.reports = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, *args)
        if trainer.global_step > self.timed_from:
            self.hook_seconds += time.perf_counter() - start

    def _search(self, trainer: pl.Trainer, *args: Any) -> dict[str, float]:
        start, last_media = time.perf_counter(), self._last_media
        metrics = super()._search(trainer, *args)
        if trainer.global_step > self.timed_from:
            reported = self._last_media != last_media
            if not reported:
                self.search_ms.append(1e3 * (time.perf_counter() - start))
            self.reports += reported
            self.compared += "pair_grad_cos" in metrics
            self.flagged += metrics["num_flagged"] > 0
        return metrics

    def counts(self) -> tuple[int, int, int, int]:
        """Timed searches, of which compared gradients, flagged a pair, wrote a report."""
        return len(self.search_ms) + self.reports, self.compared, self.flagged, self.reports


@dataclass
class Config:
    name: str
    slug: str
    probe_size: int | None = None  # None: no detector
    every_n_steps: int = 1
    seconds_per_step: list[float] = field(default_factory=list)
    detector_ms_per_step: list[float] = field(default_factory=list)
    search_ms: list[float] = field(default_factory=list)
    counts: set[tuple[int, int, int, int]] = field(default_factory=set)


def run(config: Config, steps: int, warmup: int, root: str) -> None:
    """One ``Trainer.fit`` of ``warmup + steps`` steps; appends its timings to ``config``."""
    pl.seed_everything(0, verbose=False)
    total = warmup + steps
    clock = StepClock(warmup)
    callbacks: list[pl.Callback] = [clock]
    detector = None
    if config.probe_size is not None:
        detector = TimedDetector(
            warmup, probe_size=config.probe_size, every_n_steps=config.every_n_steps
        )
        callbacks.append(detector)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=total,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=os.path.join(root, config.slug),
    )
    data = OpposingSignalsDataModule(num_classes=NUM_CLASSES, per_class=PER_CLASS)
    trainer.fit(OpposingSignalsModule(num_classes=NUM_CLASSES), datamodule=data)
    config.seconds_per_step.append(clock.seconds_per_step(total))
    if detector is not None:
        config.detector_ms_per_step.append(1e3 * detector.hook_seconds / steps)
        config.search_ms += detector.search_ms
        config.counts.add(detector.counts())


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def table(configs: list[Config]) -> list[str]:
    base = configs[0]
    base_ms = 1e3 * statistics.median(base.seconds_per_step)
    lines = [
        "| configuration | ms / step | ratio to no detector | in detector, ms / step "
        "| ms / search (median, no report) "
        "| timed searches: gradients compared / pair flagged / reports |",
        "|---|---|---|---|---|---|",
        f"| no detector | {base_ms:.2f} | 1 | - | - | - |",
    ]
    for config in configs[1:]:
        ms = 1e3 * statistics.median(config.seconds_per_step)
        per_repeat = ", ".join(
            f"{b / a:.3f}"
            for a, b in zip(base.seconds_per_step, config.seconds_per_step, strict=True)
        )
        counts = "; ".join(f"{s}: {c} / {f} / {r}" for s, c, f, r in sorted(config.counts))
        lines.append(
            f"| {config.name} | {ms:.2f} | **{ms / base_ms:.3f}** (per repeat: {per_repeat}) "
            f"| {_median(config.detector_ms_per_step)} | {_median(config.search_ms)} "
            f"| {counts} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=240, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--root", default="outputs/benchmarks/outlier_pairs_overhead")
    args = parser.parse_args()
    if args.steps < max(EVERY_N_STEPS):
        parser.error(f"--steps must be at least {max(EVERY_N_STEPS)}: one evaluation per run")
    if args.warmup < WINDOW * max(EVERY_N_STEPS):
        parser.error(f"--warmup must be at least {WINDOW * max(EVERY_N_STEPS)}: a full window")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners

    configs = [Config("no detector", "baseline")] + [
        Config(
            f"probe {size}, every {every} step{'s' * (every > 1)}",
            f"probe{size}_every{every}",
            size,
            every,
        )
        for size in PROBE_SIZES
        for every in EVERY_N_STEPS
    ]
    for repeat in range(args.repeats):
        shift = repeat % len(configs)
        for config in configs[shift:] + configs[:shift]:
            run(config, args.steps, args.warmup, args.root)

    command = shlex.join(["python", "benchmarks/outlier_pairs_overhead.py", *sys.argv[1:]])
    print(f"\n```bash\n{command}\n```\n")
    threads = torch.get_num_threads()
    print(
        f"{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"({threads} torch thread{'s' * (threads != 1)}), torch {torch.__version__}, lightning "
        f"{pl.__version__}, python {platform.python_version()}; {NUM_CLASSES * PER_CLASS} "
        f"training examples (full batch), {args.warmup} warm-up + {args.steps} timed steps "
        f"per run, median of {args.repeats} repeat{'s' * (args.repeats != 1)}:\n"
    )
    print("\n".join(table(configs)))


if __name__ == "__main__":
    main()
