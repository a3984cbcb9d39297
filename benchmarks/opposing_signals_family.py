"""``OutlierPairDetector`` on a family of planted tasks: does the reported group match the plant?

The family was fixed before the detector's grouping was tuned: Gaussian classes in 32-256
dimensions and 8×8 images (synthetic templates, scikit-learn digits), 3-10 classes, planted on
15-40 % of two classes, MLPs and a CNN. Each member's learning rate is one at which the planted
subsets' losses oscillate while the clean examples train stably (checked on tuning seed 100 from
the losses of planted and clean examples; for ``digits_cnn`` lr 0.1 was first tried and dropped:
the clean digits oscillated too). The grouping (``join_amplitude``, ``persistence``, the label and
feature gates) was designed and set on the tuning seeds 100-102 only; evaluation seeds are 0-9.

Each seed trains the member twice, planted and control (same data and training, nothing
planted), with the documented detector settings (``k=32, window=8``, defaults otherwise). For
every tracked group the union of its two sides is scored against the planted examples; the
best-matching group (largest ``min(precision, recall)``) is reported. The control passes when
the detector tracks no group.

    python benchmarks/opposing_signals_family.py                      # evaluation seeds 0-9
    python benchmarks/opposing_signals_family.py --seeds 100 101 102  # tuning seeds
    python benchmarks/opposing_signals_family.py --members gauss64 digits_cnn --seeds 0
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _timing import bare_trainer

from lightning_dyn.callbacks import OutlierPairDetector
from lightning_dyn.recipes import OpposingSignalsDataModule, OpposingSignalsModule

MEMBERS: dict[str, dict[str, Any]] = {
    "gauss64": {
        "data": {"dataset": "gaussian", "num_classes": 4, "input_dim": 64, "per_class": 150,
                 "planted_fraction": 0.25, "planted_strength": 40.0},
        "module": {"hidden_sizes": (128, 128)},
        "lr": 0.2,
        "steps": 200,
    },
    "gauss256_c10": {
        "data": {"dataset": "gaussian", "num_classes": 10, "input_dim": 256, "per_class": 60,
                 "planted_fraction": 0.2, "planted_strength": 40.0},
        "module": {"hidden_sizes": (256,)},
        "lr": 0.2,
        "steps": 200,
    },
    "gauss32_c3": {
        "data": {"dataset": "gaussian", "num_classes": 3, "input_dim": 32, "per_class": 200,
                 "planted_fraction": 0.4, "planted_strength": 25.0},
        "module": {"hidden_sizes": (64, 64)},
        "lr": 0.2,
        "steps": 200,
    },
    "images_mlp": {
        "data": {"dataset": "synthetic", "num_classes": 4, "per_class": 125,
                 "planted_fraction": 0.25, "planted_strength": 12.0},
        "module": {"hidden_sizes": (128, 128)},
        "lr": 0.03,
        "steps": 400,
    },
    "images_cnn_c6": {
        "data": {"dataset": "synthetic", "num_classes": 6, "per_class": 100,
                 "planted_fraction": 0.15, "planted_strength": 10.0},
        "module": {"hidden_sizes": (16, 64), "architecture": "cnn"},
        "lr": 0.1,
        "steps": 300,
    },
    "digits_cnn": {
        "data": {"dataset": "digits", "num_classes": 10, "planted_fraction": 0.25,
                 "planted_strength": 12.0},
        "module": {"hidden_sizes": (16, 64), "architecture": "cnn"},
        "lr": 0.03,
        "steps": 400,
    },
}  # fmt: skip


def best_group(detector: OutlierPairDetector, planted: set[int]) -> dict[str, float]:
    """Precision and recall of the tracked group that matches ``planted`` best."""
    best = {"precision": 0.0, "recall": 0.0, "size": 0, "first_step": -1, "persistence": 0}
    for group in detector.groups:
        found = set(group["indices"][0]) | set(group["indices"][1])
        hits = len(found & planted)
        scores = {"precision": hits / len(found), "recall": hits / len(planted)}
        if min(scores.values()) > min(best["precision"], best["recall"]):
            best = {**scores, "size": len(found), "first_step": group["first_step"],
                    "persistence": group["persistence"]}  # fmt: skip
    return best


def run(name: str, seed: int, planted: bool) -> dict[str, Any]:
    member = MEMBERS[name]
    pl.seed_everything(seed, verbose=False)
    data = OpposingSignalsDataModule(planted=planted, seed=seed, **member["data"])
    data.setup()
    module = OpposingSignalsModule(
        num_classes=member["data"]["num_classes"],
        input_shape=data.input_shape,
        optimizer=functools.partial(torch.optim.SGD, lr=member["lr"]),
        **member["module"],
    )
    detector = OutlierPairDetector(k=32, window=8, max_detections=100_000)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        trainer = bare_trainer(root, member["steps"], callbacks=[detector])
        trainer.fit(module, datamodule=data)
    result = {"member": name, "seed": seed, "planted": planted, "groups": len(detector.groups)}
    result["fragments"] = detector._num_detections
    result["seconds"] = round(time.perf_counter() - start, 1)
    if planted:
        result.update(best_group(detector, set(data.planted_indices())))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", nargs="+", default=list(MEMBERS), choices=list(MEMBERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    print("```bash\npython " + shlex.join(sys.argv) + "\n```\n")
    print(f"{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}\n")
    rows = []
    print(
        "| member | seed | groups | fragments | precision | recall | size | first step "
        "| control groups | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.members:
        for seed in args.seeds:
            hit, control = run(name, seed, True), run(name, seed, False)
            rows += [hit, control]
            print(f"| {name} | {seed} | {hit['groups']} | {hit['fragments']} | "
                  f"{hit['precision']:.3f} | {hit['recall']:.3f} | {hit['size']} | "
                  f"{hit['first_step']} | {control['groups']} | "
                  f"{hit['seconds'] + control['seconds']:.0f} |", flush=True)  # fmt: skip
    print("\n| member | seeds with precision and recall >= 0.8 | clean controls |")
    print("|---|---|---|")
    for name in args.members:
        hits = [r for r in rows if r["member"] == name and r["planted"]]
        controls = [r for r in rows if r["member"] == name and not r["planted"]]
        good = sum(r["precision"] >= 0.8 and r["recall"] >= 0.8 for r in hits)
        clean = sum(r["groups"] == 0 for r in controls)
        print(f"| {name} | {good}/{len(hits)} | {clean}/{len(controls)} |")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
