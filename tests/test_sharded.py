"""FSDP2: every plugin trained on 2 CPU processes with ``fully_shard``, against one process.

Lightning's ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` with
``fully_shard`` applied in ``configure_model`` (``sharded_run.py``), gloo. Parameters and
gradients are then ``DTensor`` shards. The registry's DDP leg shows that 2-process DDP equals one
process on these full-batch entries; here the FSDP run must give the same parameters and logged
metrics as one process too, within the entry's DDP tolerances. Entries that cannot run sharded
declare the refusal (``Entry.fsdp_refused``), and the refusal is checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import (
    REGISTRY,
    Entry,
    assert_same,
    compare_entry_metrics,
    make_trainer,
    parameters_of,
    read_rank_reports,
)

SCRIPT = Path(__file__).with_name("sharded_run.py")

# One entry per plugin: the first of each name.
FIRST = {}
for _entry in REGISTRY:
    FIRST.setdefault(_entry.name, _entry)
ENTRIES = [pytest.param(entry, id=entry.id) for entry in FIRST.values()]


def _run_sharded(entry: Entry, out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), entry.id, str(out), "fsdp", str(steps), *extra]
    return subprocess.run(
        command, cwd=SCRIPT.parent, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.ddp
@pytest.mark.parametrize("entry", ENTRIES)
def test_fsdp2_matches_one_process(entry: Entry, tmp_path: Path) -> None:
    steps = 2 * entry.steps
    run = _run_sharded(entry, tmp_path / "fsdp", steps)
    if entry.fsdp_refused:
        assert run.returncode != 0 and entry.fsdp_refused in run.stderr, run.stderr[-3000:]
        return
    assert run.returncode == 0, run.stderr[-6000:]
    rank0, _ = read_rank_reports(tmp_path / "fsdp")

    module, data, callbacks = entry.build()
    single = make_trainer(entry, steps, tmp_path / "single", callbacks=callbacks)
    single.fit(module, datamodule=data)
    for name, value in parameters_of(module).items():
        torch.testing.assert_close(rank0["params"][name], value, rtol=1e-4, atol=entry.ddp_atol)
    for key in entry.expect_logged:
        assert any(k.startswith(key) for k in rank0["logged"]), f"{key!r} not logged under FSDP"
    compare_entry_metrics(entry, rank0["records"], single.logger.records, f"fsdp/{entry.id}")


@pytest.mark.ddp
@pytest.mark.parametrize("name", ["LANTON", "SharpnessMonitor"])
def test_an_fsdp2_run_resumes_to_the_uninterrupted_numbers(name: str, tmp_path: Path) -> None:
    """Sharded optimizer state (LANTON's DTensor state) and callback state through Lightning's
    distributed checkpoint: a run resumed at step ``steps`` ends where the straight run ends."""
    entry = FIRST[name]
    steps = entry.steps
    straight = _run_sharded(entry, tmp_path / "straight", 2 * steps, str(steps))
    assert straight.returncode == 0, straight.stderr[-6000:]
    checkpoint = tmp_path / "straight" / "ckpt" / f"step={steps}.ckpt"
    assert checkpoint.exists(), sorted((tmp_path / "straight").rglob("*"))[:20]
    resumed = _run_sharded(entry, tmp_path / "resumed", 2 * steps, "resume", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    expected, _ = read_rank_reports(tmp_path / "straight")
    actual, _ = read_rank_reports(tmp_path / "resumed")
    assert_same(actual["params"], expected["params"], "params")
    assert_same(actual["states"], expected["states"], "callback states")


@pytest.mark.ddp
def test_sharpness_by_double_backward_is_refused_under_fsdp2(tmp_path: Path) -> None:
    entry = next(e for e in REGISTRY if e.id == "SharpnessMonitor")  # method="double_backward"
    run = _run_sharded(entry, tmp_path, 2)
    assert run.returncode != 0
    assert "cannot run under FSDP2" in run.stderr and "method='finite_difference'" in run.stderr
