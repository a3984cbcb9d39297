"""Runs ``lightning-dyn experiment=edge_of_stability`` and draws its sharpness against 2/η.

The experiment (full-batch gradient descent, lr 0.1, on scikit-learn's digits with a tanh MLP
and the square loss; ``SharpnessMonitor`` every 10 steps) runs twice through the CLI: with the
monitor's warm start (the default) and with a random start at every measurement. Training is
the same in both (the monitor does not touch it); the two λ_1 series are compared, and the
figure ``benchmarks/figures/edge_of_stability.png`` shows λ_1, 2/η and the training loss.

    python benchmarks/edge_of_stability.py
"""

from __future__ import annotations

import csv
import datetime
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FIGURE = Path(__file__).with_name("figures") / "edge_of_stability.png"


def run(root: Path, warm_start: bool) -> dict[int, dict[str, float]]:
    run_dir = root / f"warm_{warm_start}"
    command = [
        sys.executable,
        "-m",
        "lightning_dyn",
        "experiment=edge_of_stability",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        f"+recipe.callbacks.sharpness.warm_start={str(warm_start).lower()}",
        "checkpoint_every_n_steps=null",
        "trainer.enable_progress_bar=false",
    ]
    subprocess.run(command, check=True, capture_output=True)
    rows: dict[int, dict[str, float]] = {}
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if v and k != "step"}
            rows.setdefault(int(row["step"]), {}).update(values)
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        warm = run(Path(root), True)
        cold = run(Path(root), False)
    steps = sorted(s for s, r in warm.items() if "sharpness/lambda_1" in r)
    lam = [warm[s]["sharpness/lambda_1"] for s in steps]
    lam_cold = [cold[s]["sharpness/lambda_1"] for s in steps]
    threshold = warm[steps[0]]["sharpness/threshold"]
    loss_steps = sorted(s for s, r in warm.items() if "train/loss" in r)
    diffs = [abs(a - b) / abs(b) for a, b in zip(lam, lam_cold, strict=True)]
    hvps = [warm[s]["sharpness/hvps"] for s in steps]
    hvps_cold = [cold[s]["sharpness/hvps"] for s in steps]

    print("```bash\npython benchmarks/edge_of_stability.py\n```\n")
    print(
        f"{datetime.date.today()}, {platform.machine()}, 2-core CPU; threshold 2/η = {threshold}\n"
    )
    print("| step | λ_1 | λ_1 / (2/η) | train loss |")
    print("|---|---|---|---|")
    for s in steps[:: max(1, len(steps) // 15)]:
        loss = warm.get(s, {}).get("train/loss", float("nan"))
        print(
            f"| {s + 1} | {warm[s]['sharpness/lambda_1']:.2f} | {warm[s]['sharpness/ratio']:.3f} "
            f"| {loss:.4f} |"
        )
    first = next((s for s, v in zip(steps, lam, strict=True) if v >= 0.95 * threshold), None)
    after = [
        v / threshold for s, v in zip(steps, lam, strict=True) if first is not None and s > first
    ]
    print(
        f"\nλ_1 first within 5% of 2/η at step {None if first is None else first + 1}; after "
        f"that λ_1/(2/η) has median {statistics.median(after):.3f}, range "
        f"{min(after):.3f}-{max(after):.3f} ({len(after)} measurements)."
    )
    print(
        f"Warm vs random start: median |Δλ_1|/λ_1 {statistics.median(diffs):.1e}, largest "
        f"{max(diffs):.3f} ({sum(d > 1e-3 for d in diffs)} of {len(diffs)} above 1e-3); "
        f"products per measurement median {statistics.median(hvps):.0f} vs "
        f"{statistics.median(hvps_cold):.0f}, total {sum(hvps):.0f} vs {sum(hvps_cold):.0f}."
    )

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), dpi=110, sharex=True)
    top.plot([s + 1 for s in steps], lam, label="λ_1 (SharpnessMonitor)")
    top.axhline(threshold, color="black", linestyle="--", label="2/η")
    top.set(ylabel="sharpness", title="edge_of_stability: full-batch GD, lr 0.1, digits")
    top.legend()
    bottom.semilogy(
        [s + 1 for s in loss_steps], [warm[s]["train/loss"] for s in loss_steps], linewidth=0.8
    )
    bottom.set(xlabel="optimizer step", ylabel="train loss (square)")
    figure.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    figure.savefig(FIGURE)
    print(f"\nFigure: `{FIGURE.relative_to(Path(__file__).parent.parent)}`")


if __name__ == "__main__":
    main()
