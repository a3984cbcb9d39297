"""Autocast switched off for a measurement: curvature products and reorthogonalisation run in the
working dtype, not in autocast's half precision."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast(device.type, enabled=False)``, or nothing where autocast does not exist."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        return contextlib.nullcontext()
