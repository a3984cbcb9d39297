"""Relative L2 error on held-out initial conditions: soft vs hard vs mixture-of-experts arms.

Trains the ``pde`` recipe (``PDEModule`` on ``PDEDataModule``, the recipe's defaults: 64 x 33
grid, N = 16 basis functions, Adam 1e-3, batch 4, 10 Levenberg-Marquardt iterations, float64, one
thread) for ``--steps`` steps per arm and seed, then measures the relative L2 error of every
held-out trajectory (``n_val`` ICs from ``seed + 1``, never trained on). Seed ``s`` seeds the
network and the training/held-out ICs. One JSON line per run goes to ``--out`` (appended), so
runs can be split over processes; ``--report`` prints the markdown table from those lines.

    python benchmarks/hard_constraints_accuracy.py --problem burgers --arm hard --seeds 0 1 2
    python benchmarks/hard_constraints_accuracy.py --report
    python benchmarks/hard_constraints_accuracy.py --figure --arm moe_interface --seeds 0

``--figure`` trains one run and draws its first held-out IC to ``FIGURE`` (not recorded).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from _timing import bare_trainer

from lightning_dyn.recipes import PDEDataModule, PDEModule
from lightning_dyn.recipes._pde_figure import field_figure
from lightning_dyn.recipes.pde import relative_l2

OUT = Path(__file__).with_name("results") / "hard_constraints_accuracy.jsonl"
FIGURE = Path(__file__).with_name("figures") / "hard_constraints_field.png"
ARMS = {
    "soft": {"constraint": "soft"},
    "hard": {"constraint": "hard"},
    # The coupled MoE solves 4 x 16 coefficients: one hard constraint with as many unknowns.
    "hard_n64": {"constraint": "hard", "n_basis": 64},
    "moe_naive": {"constraint": "moe", "experts": 4, "partition": (1, 4)},
    "moe_overlap": {"constraint": "moe", "experts": 4, "partition": (1, 4), "overlap": 2},
    "moe_interface": {
        "constraint": "moe",
        "experts": 4,
        "partition": (1, 4),
        "interface_rows": True,
    },
}
# Chalapathi et al. (arXiv 2402.13412), 1D diffusion-sorption, relative L2 error (%).
PAPER = {"soft": "85.93 ± 5.07", "hard": "7.55 ± 8.10", "moe_naive": "3.60 ± 2.93"}


def run(
    problem: str, arm: str, seed: int, steps: int, n_val: int, weight: float, figure: bool = False
) -> dict:
    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    data = PDEDataModule(problem, n_val=n_val, seed=seed)
    options = dict(ARMS[arm], **({"interface_weight": weight} if arm == "moe_interface" else {}))
    module = PDEModule(problem, figure=False, expert_parallel=False, **options)
    with tempfile.TemporaryDirectory() as root:
        trainer = bare_trainer(root, steps, max_epochs=-1)
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        seconds = time.perf_counter() - start
    u0, u_ref = data.val_set.tensors
    module.eval()
    u, _ = module(u0)
    errors = [float(relative_l2(u[i : i + 1].detach(), u_ref[i : i + 1])) for i in range(len(u0))]
    if figure:
        partition = module.solver.partition if module.constraint == "moe" else (1, 1)
        title = f"{arm}, {steps} steps"
        figure = field_figure(u[0], u_ref[0], module.problem.t_final, partition, title)
        figure.savefig(FIGURE, dpi=120)
    return {
        "problem": problem,
        "arm": arm,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "seed": seed,
        "steps": steps,
        "errors": errors,
        "seconds_per_step": seconds / steps,
        "date": str(datetime.date.today()),
        "machine": f"{platform.machine()}, 2-core CPU, 1 torch thread",
    }


def report(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(
        "| problem | arm | steps | seeds | rel. L2 % (mean over seeds ± sd) | "
        "per-IC sd % | s/step | paper (DS) % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    keys = sorted(
        {(r["problem"], r["arm"], r["steps"]) for r in rows},
        key=lambda k: (k[0], list(ARMS).index(k[1]), k[2]),
    )
    for problem, arm, steps in keys:
        runs = [r for r in rows if (r["problem"], r["arm"], r["steps"]) == (problem, arm, steps)]
        means = [100 * statistics.fmean(r["errors"]) for r in runs]
        per_ic = [100 * e for r in runs for e in r["errors"]]
        spread = statistics.stdev(means) if len(means) > 1 else float("nan")
        paper = PAPER.get(arm, "") if problem == "diffusion_sorption" else ""
        print(
            f"| {problem} | {arm} | {steps} | {len(runs)} | {statistics.fmean(means):.2f} ± "
            f"{spread:.2f} | {statistics.stdev(per_ic):.2f} | "
            f"{statistics.fmean(r['seconds_per_step'] for r in runs):.3f} | {paper} |"
        )
    dates = sorted({r["date"] for r in rows})
    print(f"\n{', '.join(dates)}; {rows[0]['machine']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=("burgers", "diffusion_sorption"), default="burgers")
    parser.add_argument("--arm", choices=tuple(ARMS), default="hard")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--interface-weight", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--figure", action="store_true")
    args = parser.parse_args()
    if args.report:
        report(args.out)
        return
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        result = run(
            args.problem,
            args.arm,
            args.seeds[0],
            args.steps,
            args.n_val,
            args.interface_weight,
            figure=True,
        )
        print(f"{FIGURE}: mean error {100 * statistics.fmean(result['errors']):.2f}%")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        result = run(args.problem, args.arm, seed, args.steps, args.n_val, args.interface_weight)
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        mean = 100 * statistics.fmean(result["errors"])
        print(
            f"{args.problem} {args.arm} seed {seed}: {mean:.2f}% "
            f"({result['seconds_per_step']:.3f} s/step)",
            flush=True,
        )


if __name__ == "__main__":
    main()
