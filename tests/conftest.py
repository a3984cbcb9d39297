"""Test-wide settings: no network, quiet W&B and Lightning. Shared helpers live in harness.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

# Set before anything imports wandb or lightning: tests never touch the network.
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("HYDRA_FULL_ERROR", "1")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test module, restored after.

    Small float64 tensors (solves, Hessians, sufficient statistics) ran 10-100x slower with two
    intra-op threads on the busy 2-core development machine: thread synchronisation dominates.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
