"""Test-wide settings: no network, quiet W&B and Lightning. Shared helpers live in harness.py."""

from __future__ import annotations

import os

# Set before anything imports wandb or lightning: tests never touch the network.
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
