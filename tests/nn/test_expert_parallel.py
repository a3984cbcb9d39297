"""Expert parallelism in HardConstraintMoE: 2 gloo processes vs 1 process.

Every rank gets the same batch and solves its share of the K=3 experts (unequal shares: rank 0
experts 0 and 2, rank 1 expert 1); the gathered ``u``, ``ω`` and the rank-averaged basis gradient
must equal the single-process ones.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_hard_constraint import RIDGE, B, P, T, X, _problem, heat_residual

from lightning_dyn.nn import HardConstraintMoE

WORLD = 2
PARTITION = (1, 3)  # K = 3 experts on 2 ranks
OVERLAP = 1


def _moe(expert_parallel: bool | str) -> HardConstraintMoE:
    return HardConstraintMoE(
        heat_residual,
        3,
        PARTITION,
        (T, X),
        ridge=RIDGE,
        overlap=OVERLAP,
        expert_parallel=expert_parallel,
    )


def _run(expert_parallel: bool | str) -> dict[str, torch.Tensor]:
    """``u``, the result and the gradient of a fixed loss w.r.t. the basis (data built from it)."""
    basis, data = _problem(requires_grad=True)
    u, result = _moe(expert_parallel)(basis, data)
    weights = torch.randn(B, P, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = (weights * u.sin()).sum() + result.omega.square().sum()
    (grad,) = torch.autograd.grad(loss, basis)
    return {
        "u": u.detach(),
        "grad": grad,
        "omega": result.omega.detach(),
        "iterations": result.iterations,
        "residual_norm": result.residual_norm,
        "converged": result.converged,
    }


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.save(_run(True), Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _different_inputs_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        basis, data = _problem(seed=rank)  # what a data-parallel sampler would give each rank
        try:
            _moe("auto")(basis, data)
            message = "no error"
        except ValueError as error:
            message = str(error)
        (Path(out) / f"rank{rank}.txt").write_text(message)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = _run(False)
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for out in ranks:
        torch.testing.assert_close(out["u"], ref["u"], atol=1e-10, rtol=0)
        torch.testing.assert_close(out["omega"], ref["omega"], atol=1e-10, rtol=0)
        assert torch.equal(out["iterations"], ref["iterations"])
        assert torch.equal(out["converged"], ref["converged"])
        torch.testing.assert_close(out["residual_norm"], ref["residual_norm"], atol=1e-10, rtol=0)
    # All-reduce-AVERAGE semantics (DDP's default): the mean over ranks is the 1-process gradient,
    # while each rank alone holds 2x the implicit part of its own experts only.
    mean = sum(out["grad"] for out in ranks) / WORLD
    torch.testing.assert_close(mean, ref["grad"], atol=1e-10, rtol=0)
    assert not torch.allclose(ranks[0]["grad"], ref["grad"], atol=1e-6, rtol=0)


@pytest.mark.ddp
def test_different_inputs_on_the_ranks_raise_on_every_rank(tmp_path: Path) -> None:
    # Data-parallel DDP with expert_parallel='auto' would assemble experts solved on different
    # batches: every rank must refuse (and none may hang).
    mp.spawn(_different_inputs_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD)
    for r in range(WORLD):
        message = (tmp_path / f"rank{r}.txt").read_text()
        assert "SAME basis" in message and "expert_parallel=False" in message, message


def test_auto_without_process_group_is_local() -> None:
    assert not dist.is_initialized()
    auto, local = _run("auto"), _run(False)
    torch.testing.assert_close(auto["u"], local["u"], atol=0, rtol=0)
    torch.testing.assert_close(auto["grad"], local["grad"], atol=0, rtol=0)


def test_expert_parallel_true_needs_a_process_group() -> None:
    basis, data = _problem()
    with pytest.raises(ValueError, match="expert_parallel"):
        _moe(True)(basis, data)


def test_bad_expert_parallel() -> None:
    with pytest.raises(ValueError, match="expert_parallel"):
        _moe("yes")
