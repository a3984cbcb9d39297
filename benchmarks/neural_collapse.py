"""Neural collapse on the gaussian_mixture recipe, clean vs random labels, and its cost.

Trains ``experiment=neural_collapse``'s setting (10 classes in 32 dimensions, 1000 training
points, 3x128 ReLU MLP with BatchNorm, SGD lr 0.05 momentum 0.9 weight decay 5e-4, batch 50) for
``--epochs`` epochs with ``NeuralCollapseMonitor`` every 10 epochs, once with the true labels
and once with labels shuffled once (the control). NC1 of the untrained network is computed with
the same functions (``functional.class_statistics`` + ``nc1``) before training. The figure goes
to ``benchmarks/figures/neural_collapse.png``.

Cost: step time of training with the monitor at every epoch (``nc4="second_pass"``, the Gram
figure written as a PNG) against the same training without it, whole runs side by side,
interleaved over ``--repeats``; the difference per epoch over the time of one epoch is the cost
of one measurement relative to one training epoch.

    python benchmarks/neural_collapse.py
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import statistics
import tempfile
import time

import lightning.pytorch as pl
import matplotlib
import torch
from _timing import bare_trainer
from lightning.pytorch.loggers import CSVLogger

matplotlib.use("Agg")
import csv
from pathlib import Path

import matplotlib.pyplot as plt

from lightning_dyn.callbacks import NeuralCollapseMonitor
from lightning_dyn.functional import class_statistics, nc1
from lightning_dyn.recipes import GaussianMixtureDataModule, GaussianMixtureModule

FIGURE = Path(__file__).with_name("figures") / "neural_collapse.png"
STEPS_PER_EPOCH = 20


def trainer(root: str, epochs: int, callbacks: list, logger=False) -> pl.Trainer:
    return bare_trainer(
        root,
        -1,
        max_epochs=epochs,
        logger=logger,
        log_every_n_steps=STEPS_PER_EPOCH,
        callbacks=callbacks,
    )


def initial_nc1(module: GaussianMixtureModule, data: GaussianMixtureDataModule) -> float:
    data.setup()
    x, y = data.train_set.tensors
    module.eval()  # as the monitor measures: BatchNorm on its running statistics
    with torch.no_grad():
        features = module.model.body(x)
    module.train()
    return nc1(class_statistics(features, y, data.num_classes))


def collapse_run(root: str, random_labels: bool, epochs: int) -> dict[str, list[float]]:
    pl.seed_everything(0, verbose=False)
    data = GaussianMixtureDataModule(random_labels=random_labels)
    module = GaussianMixtureModule(data.num_classes, data.input_dim, batch_norm=True)
    start = {"epoch": [0.0], "nc/nc1": [initial_nc1(module, data)]}
    logger = CSVLogger(root, name="clean" if not random_labels else "random")
    monitor = NeuralCollapseMonitor(every_n_epochs=10, figure=False)
    fitted = trainer(root, epochs, [monitor], logger)
    fitted.fit(module, datamodule=data)
    series: dict[str, list[float]] = {k: list(v) for k, v in start.items()}
    series["final_train_acc"] = [float(fitted.callback_metrics["train/acc"])]
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("nc/nc1"):
                series["epoch"].append(float(row["epoch"]) + 1)
                for key, value in row.items():
                    if key.startswith("nc/"):
                        series.setdefault(key, []).append(float(value) if value else float("nan"))
    return series


def timed_run(root: str, epochs: int, monitor: str) -> float:
    pl.seed_everything(0, verbose=False)
    callbacks = []
    if monitor != "none":
        callbacks = [NeuralCollapseMonitor(every_n_epochs=1, figure=monitor == "figure")]
    t = trainer(root, epochs, callbacks)
    start = time.perf_counter()
    t.fit(GaussianMixtureModule(batch_norm=True), datamodule=GaussianMixtureDataModule())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--cost-epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        clean = collapse_run(root, False, args.epochs)
        noisy = collapse_run(root, True, args.epochs)
        times: dict[str, list[float]] = {"none": [], "metrics": [], "figure": []}
        for repeat in range(args.repeats):
            order = list(times)[repeat % 3 :] + list(times)[: repeat % 3]
            for monitor in order:
                times[monitor].append(timed_run(root, args.cost_epochs, monitor))
    median = {k: statistics.median(v) / args.cost_epochs for k, v in times.items()}
    epoch_s = median["none"]
    extra = {k: median[k] - epoch_s for k in ("metrics", "figure")}

    print(f"```bash\npython benchmarks/neural_collapse.py --epochs {args.epochs}\n```\n")
    print(f"{datetime.date.today()}, {platform.machine()}, 2-core CPU, 1 torch thread\n")
    print("| epoch | NC1 true labels | NC1 random labels | random / true |")
    print("|---|---|---|---|")
    for i, epoch in enumerate(clean["epoch"]):
        if i in (0, 1, 2, 5) or i % 10 == 0 or i == len(clean["epoch"]) - 1:
            a, b = clean["nc/nc1"][i], noisy["nc/nc1"][i]
            print(f"| {epoch:.0f} | {a:.4g} | {b:.4g} | {b / a:.1f} |")
    curve = clean["nc/nc1"]
    print(
        f"\nFinal train accuracy: true labels {clean['final_train_acc'][0]:.3f}, random labels "
        f"{noisy['final_train_acc'][0]:.3f}. NC1 fell {curve[0] / curve[-1]:.1f}x from the "
        f"untrained network, {curve[1] / curve[-1]:.1f}x from epoch 10; its lowest value "
        f"{min(curve):.4g}."
    )
    final = {k: clean[k][-1] for k in clean if k.startswith("nc/")}
    print("\nFinal clean metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    final = {k: noisy[k][-1] for k in noisy if k.startswith("nc/")}
    print("Final random-label metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    print(
        f"\nCost: one training epoch {1e3 * epoch_s:.1f} ms ({STEPS_PER_EPOCH} steps of 50); "
        f"one measurement (two passes over the 1000 training points, second-pass NC4): "
        f"{1e3 * extra['metrics']:.1f} ms = {extra['metrics'] / epoch_s:.2f} epochs without the "
        f"Gram figure, {1e3 * extra['figure']:.1f} ms = {extra['figure'] / epoch_s:.2f} epochs "
        f"with it (a PNG); medians of {args.repeats} interleaved runs of {args.cost_epochs} "
        "epochs each."
    )

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for series, label in ((clean, "true labels"), (noisy, "random labels")):
        axes[0].semilogy(series["epoch"], series["nc/nc1"], marker=".", label=label)
        if "nc/gram_distance" in series:
            axes[1].plot(series["epoch"][1:], series["nc/gram_distance"], label=label)
    axes[0].set(xlabel="epoch", ylabel="NC1 = Tr(Σ_W Σ_B⁺)/K", title="within-class collapse")
    axes[1].set(xlabel="epoch", ylabel="distance to simplex ETF", title="NC2")
    axes[0].legend()
    figure.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    figure.savefig(FIGURE)
    print(f"\nFigure: `benchmarks/figures/{FIGURE.name}`")


if __name__ == "__main__":
    main()
