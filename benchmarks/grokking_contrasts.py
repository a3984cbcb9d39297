"""The contrasts of "Grokking at the Edge of Numerical Stability" with the `lightning-dyn` CLI.

Runs the experiments ``grok_perpgrad``, ``grok_baseline``, ``grok_stablemax`` and ``grok_wd``
(CSV logger, one process each, one after the other), then reads their metrics and prints one
JSON line per run: the optimizer steps until test accuracy passed 99%, the final and best test
accuracy, the Softmax Collapse fraction (steps until above 0, largest and final value) and the
wall time of the command.
A figure of test accuracy and SC fraction against steps is written next to the runs.

    python benchmarks/grokking_contrasts.py --out outputs/benchmarks/grokking_contrasts
    python benchmarks/grokking_contrasts.py --only grok_stablemax \\
        --extra trainer.max_steps=100000 +trainer.max_time=00:00:15:00 \\
        trainer.check_val_every_n_epoch=50 recipe.callbacks.softmax_collapse.every_n_steps=500
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXPERIMENTS = ("grok_perpgrad", "grok_baseline", "grok_stablemax", "grok_wd")


def run(experiment: str, out: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_dyn",
            f"experiment={experiment}",
            "logger=csv",
            f"hydra.run.dir={out / experiment}",
            *extra,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with metrics.open() as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def summary(run_dir: Path) -> dict[str, Any]:
    test = series(run_dir, "test/acc")
    sc = series(run_dir, "softmax_collapse/sc_fraction")
    # Logged step s is measured after s + 1 optimizer steps, the count the CLI summary prints.
    return {
        "steps": test[-1][0] + 1,
        "steps_to_test_acc_above_0.99": next((s + 1 for s, a in test if a > 0.99), None),
        "final_test_acc": test[-1][1],
        "best_test_acc": max(a for _, a in test),
        "steps_to_sc_above_0": next((s + 1 for s, f in sc if f > 0), None),
        "max_sc_fraction": max((f for _, f in sc), default=None),
        "final_sc_fraction": sc[-1][1] if sc else None,
    }


def plot(out: Path, experiments: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (acc_axis, sc_axis) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for experiment in experiments:
        steps, acc = zip(*series(out / experiment, "test/acc"), strict=True)
        acc_axis.plot(steps, acc, label=experiment)
        collapse = series(out / experiment, "softmax_collapse/sc_fraction")
        if collapse:
            steps, fraction = zip(*collapse, strict=True)
            sc_axis.plot(steps, fraction, label=experiment)
    acc_axis.set(xlabel="optimizer step", ylabel="test accuracy", xscale="log")
    sc_axis.set(xlabel="optimizer step", ylabel="Softmax Collapse fraction", xscale="log")
    for axis in (acc_axis, sc_axis):
        axis.legend()
    path = out / "grokking_contrasts.png"
    figure.savefig(path, bbox_inches="tight")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/grokking_contrasts"))
    parser.add_argument("--only", nargs="*", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--extra", nargs="*", default=[], help="hydra overrides for every run")
    parser.add_argument("--no-run", action="store_true", help="only summarise existing runs")
    args = parser.parse_args()
    for experiment in args.only:
        wall = None if args.no_run else run(experiment, args.out, args.extra)
        record = {"experiment": experiment, **summary(args.out / experiment)}
        if wall is not None:
            record["wall_s"] = round(wall, 1)
        print(json.dumps(record))
    print(json.dumps({"figure": str(plot(args.out, args.only))}))


if __name__ == "__main__":
    main()
