"""LANTON under FSDP2 on 2 CPU processes: bytes it sends per step and its step time vs SGD.

The model is the ``tiny_lm`` GPT, sharded with ``fully_shard`` (each block, then the model) on a
2-process gloo mesh; each rank trains on its own batch. Per step, measured side by side in one
run, alternating the optimizers one step at a time on the same gradients:

- the bytes each rank sends in LANTON's own collectives (``ShardedMatrices.bytes_sent``: the
  gather of each matrix's rows to its owner, the scatter of the update back, the broadcast of
  the noise norms). Under DDP LANTON sends nothing itself (every rank holds the whole
  gradient after DDP's all-reduce): its extra volume there is 0. For scale: the bytes of the
  spectral matrices' shards this rank holds, and what all-gathering every matrix on every rank
  would send instead (its shard of the gradient difference and of the update to each other
  rank; every rank then runs every Newton-Schulz itself);
- the time of ``optimizer.step()`` for LANTON and for SGD (momentum 0.9), and of a whole training
  step (forward, backward with FSDP's reduce-scatter, optimizer step) with each; and, on an
  unsharded copy of the model on the same process, LANTON's step time without FSDP.

    python benchmarks/lanton_fsdp.py --d-model 128 --n-layer 4 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from lightning_dyn.functional._dtensor import local
from lightning_dyn.optim import LANTON, param_groups
from lightning_dyn.recipes import TinyGPT


def _worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mesh = init_device_mesh("cpu", (2,))
    model = TinyGPT(96, args.context, args.d_model, args.n_layer, args.n_head)
    plain = copy.deepcopy(model)
    plain_lanton = LANTON(param_groups(plain, lr=0.02), ns_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    lanton = LANTON(param_groups(model, lr=0.02), ns_dtype=torch.float32)
    sgd = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randint(0, 96, (args.batch, args.context), generator=gen)
    y = torch.randint(0, 96, (args.batch, args.context), generator=gen)

    def backward(net: torch.nn.Module = model) -> None:
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x).flatten(0, 1), y.flatten()).backward()

    times: dict[str, list[float]] = {
        "lanton": [],
        "sgd": [],
        "lanton_train": [],
        "sgd_train": [],
        "lanton_unsharded": [],
    }
    sent: list[int] = []
    backward()
    lanton.step()  # warm-up: state allocated, owners chosen
    backward(plain)
    plain_lanton.step()
    for _ in range(args.steps):
        backward(plain)
        start = time.perf_counter()
        plain_lanton.step()
        times["lanton_unsharded"].append(time.perf_counter() - start)
        for name, optimizer in (("lanton", lanton), ("sgd", sgd)):
            start = time.perf_counter()
            backward()
            middle = time.perf_counter()
            before = lanton._sharding().bytes_sent
            optimizer.step()
            end = time.perf_counter()
            if name == "lanton":
                sent.append(lanton._sharding().bytes_sent - before)
            times[name].append(end - middle)
            times[f"{name}_train"].append(end - start)
    spectral = [p for g in lanton.param_groups if g["lmo"] == "spectral" for p in g["params"]]
    shard_bytes = sum(local(p).numel() * local(p).element_size() for p in spectral)
    result = {
        "rank": rank,
        "bytes_sent_per_step": statistics.mean(sent),
        "spectral_shard_bytes": shard_bytes,
        "all_gather_everything_bytes": 2 * shard_bytes,  # to the other rank, inputs and outputs
        **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()},
    }
    result["step_ratio"] = result["lanton_ms"] / result["sgd_ms"]
    result["train_step_ratio"] = result["lanton_train_ms"] / result["sgd_train_ms"]
    result["sharded_vs_unsharded_lanton"] = result["lanton_ms"] / result["lanton_unsharded_ms"]
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--port", type=int, default=29517)
    args = parser.parse_args()
    out = f"/tmp/lanton_fsdp_{os.getpid()}.json"
    mp.spawn(_worker, args=(args, args.port, out), nprocs=2)
    ranks = []
    for r in range(2):
        with open(f"{out}.{r}") as f:
            ranks.append(json.load(f))
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "args": vars(args),
                "ranks": ranks,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
