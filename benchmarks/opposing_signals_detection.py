"""How well ``OutlierPairDetector`` finds the planted pair of the ``opposing_signals`` recipe.

For each data seed, the recipe is trained twice with the recipe's detector settings: with the
patch planted and without it (the control, identical otherwise). The detector keeps every
detection (``max_detections`` large), and its flagged examples are scored against the planted
ones: precision = planted among the flagged, recall = flagged among the planted. Also reported:
the first step at which a pair was flagged and the gradient cosines of the flagged pairs.

    python benchmarks/opposing_signals_detection.py
    python benchmarks/opposing_signals_detection.py --dataset digits --lr 0.1 --seeds 0 1
    python benchmarks/opposing_signals_detection.py --lr 0.05 --planted-strength 8
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import platform
import shlex
import sys
import tempfile

import lightning.pytorch as pl
import torch
from _timing import bare_trainer

from lightning_dyn.callbacks import OutlierPairDetector
from lightning_dyn.recipes import OpposingSignalsDataModule, OpposingSignalsModule


def run(
    dataset: str,
    planted: bool,
    seed: int,
    steps: int,
    lr: float,
    planted_strength: float,
    cos_threshold: float,
) -> dict[str, object]:
    pl.seed_everything(seed, verbose=False)
    num_classes = 10 if dataset == "digits" else 4
    data = OpposingSignalsDataModule(
        dataset=dataset,
        planted=planted,
        seed=seed,
        num_classes=num_classes,
        planted_strength=planted_strength,
    )
    module = OpposingSignalsModule(
        num_classes=num_classes, optimizer=functools.partial(torch.optim.SGD, lr=lr)
    )
    detector = OutlierPairDetector(k=32, cos_threshold=cos_threshold, max_detections=100_000)
    with tempfile.TemporaryDirectory() as root:
        trainer = bare_trainer(root, steps, callbacks=[detector])
        trainer.fit(module, datamodule=data)
    scores = data.score(detector.flagged_indices())
    cosines = [r["pair_grad_cos"] for r in detector.detections]
    return {
        "flagged pairs": detector._num_detections,
        "first step": detector.detections[0]["step"] if detector.detections else "-",
        "flagged examples": len(detector.flagged_indices()),
        "precision": scores["precision"],
        "recall": scores["recall"],
        "grad cos range": f"{min(cosines):.3f} .. {max(cosines):.3f}" if cosines else "-",
        "final train loss": float(trainer.callback_metrics["train/loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.03, help="full-batch SGD learning rate")
    parser.add_argument("--planted-strength", type=float, default=12.0)
    parser.add_argument("--cos-threshold", type=float, default=0.8)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    print("```bash\npython " + shlex.join(sys.argv) + "\n```\n")
    print(
        f"{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}; "
        f"dataset {args.dataset}, planted strength {args.planted_strength}, SGD lr {args.lr}, "
        f"{args.steps} full-batch steps, detector k=32 window=8 corr_threshold=0.5 "
        f"cos_threshold={args.cos_threshold}\n"
    )
    columns = None
    for seed in args.seeds:
        for planted in (True, False):
            result = run(
                args.dataset,
                planted,
                seed,
                args.steps,
                args.lr,
                args.planted_strength,
                args.cos_threshold,
            )
            if columns is None:
                columns = list(result)
                print("| seed | run | " + " | ".join(columns) + " |")
                print("|---" * (len(columns) + 2) + "|")
            cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in result.values()]
            label = "planted" if planted else "control"
            print(f"| {seed} | {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
