"""Forward+backward time of ``stablemax_cross_entropy`` relative to ``F.cross_entropy``.

One call is the loss (mean reduction) of random ``(N, C)`` logits that require grad, plus its
backward pass to the logits. For every shape and logits dtype (float32, float64) the baseline
is ``F.cross_entropy`` on the same logits; StableMax is timed computing in float64 (its default)
and in float32. Timings alternate (baseline, StableMax, baseline, StableMax, ...) so that
machine noise hits both; the figure is the ratio of median seconds per call. Each timing
averages enough calls to last ``--min-seconds``. The default shapes are the grokking recipe's
training set (5107 x 113) and a language-model-sized vocabulary (1024 x 32000).

On a machine whose cores are shared, pass ``--threads 1``: with every core busy, each
multi-threaded kernel waits for a descheduled worker (about 8 ms per kernel on the project's
2-core machine), which penalises StableMax's chain of small kernels far more than the one fused
``F.cross_entropy`` kernel and measures the neighbours, not the loss.

    python benchmarks/stablemax_overhead.py --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lightning_dyn.functional.stablemax import stablemax_cross_entropy

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def _seconds_per_call(
    loss_fn: LossFn, logits: torch.Tensor, target: torch.Tensor, calls: int
) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        logits.grad = None
        loss_fn(logits, target).backward()
    return (time.perf_counter() - start) / calls


def _stablemax_in(dtype: torch.dtype) -> LossFn:
    return lambda logits, target: stablemax_cross_entropy(logits, target, dtype=dtype)


def compare(
    n: int, c: int, logits_dtype: str, stablemax_dtype: str, repeats: int, min_seconds: float
) -> dict[str, object]:
    """Median seconds per call of both losses on one ``(n, c)`` problem, alternating."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, generator=g, dtype=DTYPES[logits_dtype]).requires_grad_()
    target = torch.randint(0, c, (n,), generator=g)
    losses = {"cross_entropy": F.cross_entropy, "stablemax": _stablemax_in(DTYPES[stablemax_dtype])}
    for fn in losses.values():
        _seconds_per_call(fn, logits, target, 2)  # warm-up: allocator, thread pool
    calls = 1
    while _seconds_per_call(F.cross_entropy, logits, target, calls) * calls < min_seconds:
        calls *= 2
    times: dict[str, list[float]] = {k: [] for k in losses}
    for _ in range(repeats):
        for name, fn in losses.items():
            times[name].append(_seconds_per_call(fn, logits, target, calls))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "N": n,
        "C": c,
        "logits_dtype": logits_dtype,
        "stablemax_dtype": stablemax_dtype,
        "calls_per_timing": calls,
        "ms_cross_entropy": round(1e3 * median["cross_entropy"], 3),
        "ms_stablemax": round(1e3 * median["stablemax"], 3),
        "ratio_stablemax_over_cross_entropy": round(
            median["stablemax"] / median["cross_entropy"], 2
        ),
        "per_repeat_ratio": [
            round(a / b, 2) for a, b in zip(times["stablemax"], times["cross_entropy"], strict=True)
        ],
    }


def _shape(text: str) -> tuple[int, int]:
    n, c = text.lower().split("x")
    return int(n), int(c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", type=_shape, default=[(5107, 113), (1024, 32000)])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results = [
        compare(n, c, logits_dtype, stablemax_dtype, args.repeats, args.min_seconds)
        for n, c in args.shapes
        for logits_dtype in DTYPES
        for stablemax_dtype in ("float64", "float32")
    ]
    report = {
        "machine": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "repeats": args.repeats,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
