"""Cost of a HardConstraintMoE training step vs sampled points and experts, and expert parallelism.

One step = forward solve + implicit backward of ``mean(u²)`` with respect to the basis, on a
Burgers-type row-local nonlinear residual ``r = b_t ω + (a + b ω)(a_x + b_x ω) − ν (a_xx + b_xx ω)``
(random float64 bases, ``B = 2`` problems, ``N = 16`` basis functions, a grid of ``P / 100``
rows of 100 points split into ``K`` blocks along the 100, ridge 1e-4), exactly 10
Levenberg-Marquardt iterations (``tol=0``) so that every setting does the same number of
iterations. Median of ``--repeats`` steps after one warm-up step, one torch thread per process.

Expert parallelism: the same step with the ``K`` experts split over 2 gloo processes
(``expert_parallel=True``, each rank one thread, a barrier before each step, rank 0's time),
against one process solving all ``K`` (measured in the same run, right before).

    python benchmarks/hard_constraints_timing.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_dyn.nn import HardConstraintMoE

N, B, NU = 16, 2, 0.02


def residual(omega, b, b_t, b_x, b_xx, a, a_t, a_x, a_xx):
    u = a + b @ omega
    return a_t + b_t @ omega + u * (a_x + b_x @ omega) - NU * (a_xx + b_xx @ omega)


def problem(points: int, seed: int = 0) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    bases = [torch.randn(B, points, N, dtype=torch.float64, generator=g) / N for _ in range(4)]
    fields = [0.1 * torch.randn(B, points, dtype=torch.float64, generator=g) for _ in range(4)]
    basis = bases[0].requires_grad_(True)
    return basis, (*bases[1:], *fields)


def layer(points: int, experts: int, parallel: bool) -> HardConstraintMoE:
    return HardConstraintMoE(
        residual,
        experts,
        (1, experts),
        (points // 100, 100),
        max_iter=10,
        tol=0.0,
        on_failure="ignore",
        expert_parallel=parallel,
    )


def step_seconds(moe: HardConstraintMoE, points: int, repeats: int, sync: bool = False) -> float:
    basis, data = problem(points)
    times = []
    for i in range(repeats + 1):
        if sync:
            dist.barrier()
        start = time.perf_counter()
        u, _ = moe(basis, data)
        torch.autograd.grad(u.square().mean(), basis)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rank(rank: int, port: int, points: int, experts: int, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds = step_seconds(layer(points, experts, True), points, repeats, sync=True)
        if rank == 0:
            Path(out).write_text(str(seconds))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def two_process_seconds(points: int, experts: int, repeats: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as root:
        out = str(Path(root) / "t")
        mp.spawn(_rank, args=(port, points, experts, repeats, out), nprocs=2)
        return float(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[100, 1000, 10_000, 100_000])
    parser.add_argument("--experts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--parallel-points", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--parallel-experts", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("```bash\npython benchmarks/hard_constraints_timing.py\n```\n")
    machine = f"{platform.machine()}, 2-core CPU, 1 torch thread per process"
    print(f"{datetime.date.today()}, {machine}\n")
    print("Seconds per step (forward solve + implicit backward), one process:\n")
    print("| points P | " + " | ".join(f"K={k}" for k in args.experts) + " |")
    print("|---|" + "---|" * len(args.experts))
    for points in args.points:
        cells = [step_seconds(layer(points, k, False), points, args.repeats) for k in args.experts]
        print(f"| {points} | " + " | ".join(f"{c:.4f}" for c in cells) + " |", flush=True)
    print("\nExpert parallelism, 2 processes vs 1 (same step, rank 0's median):\n")
    print("| points P | experts K | 1 process s | 2 processes s | speed-up |")
    print("|---|---|---|---|---|")
    for points in args.parallel_points:
        for k in args.parallel_experts:
            one = step_seconds(layer(points, k, False), points, args.repeats)
            two = two_process_seconds(points, k, args.repeats)
            print(f"| {points} | {k} | {one:.4f} | {two:.4f} | {one / two:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
