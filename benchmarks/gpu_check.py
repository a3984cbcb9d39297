"""The GPU path: every plugin once on a CUDA device under bf16 autocast, with a pass/fail table.

Runs each plugin of the conformance matrix (``tests/conformance.py``) on its user model (the
BatchNorm CNN; the PDE module for the hard-constraint plugins, whose experts then solve on the
GPU) for a few steps with ``precision="bf16-mixed"`` on one device, plus LANTON's Newton-Schulz in
bfloat16 on a large matrix, and prints one line per plugin: pass/fail, wall time, and the error
if any. ``--device cpu`` runs the same checks on the CPU (to try the script itself).

    python benchmarks/gpu_check.py            # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --steps 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conformance import PLUGINS, build_family, plugin_model_options
from harness import quiet_trainer

from lightning_dyn.functional import spectral_lmo


def _run_plugin(plugin, device: str, steps: int, root: Path) -> str:
    family = "pde" if plugin.family == "pde" else "cnn"
    parts = plugin.attach(family)
    module, data = build_family(family, parts, plugin_model_options(plugin), {})
    if parts.prepare is not None:
        parts.prepare(module)
    strategy = plugin.strategy() if plugin.strategy is not None else "auto"
    devices = 2 if plugin.strategy is not None else 1
    if device == "cuda" and devices > torch.cuda.device_count():
        return f"skipped: needs {devices} GPUs"
    trainer = quiet_trainer(
        root,
        steps,
        callbacks=parts.callbacks,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=devices,
        strategy=strategy,
        precision="bf16-mixed",
    )
    trainer.fit(module, datamodule=data)
    bad = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith(plugin.keys) and not torch.isfinite(v).all()
    }
    # Under a spawned strategy the workers trained; this process holds no step count.
    finished = trainer.global_step == steps or plugin.strategy is not None
    return "pass" if finished and not bad else f"FAIL {bad or 'steps'}"


def _newton_schulz(device: str) -> str:
    shape = (2048, 1024) if device == "cuda" else (256, 128)  # bf16 matmuls are slow on CPUs
    g = torch.randn(*shape, device=device)
    direction = spectral_lmo(g, dtype=torch.bfloat16, scale="none")
    singular = torch.linalg.svdvals(direction.float())
    # Muon's quintic keeps the spectrum in about [0.68, 1.21] (see functional.lmo).
    ok = bool((singular.max() < 1.3) & (singular.min() > 0.5))
    return "pass" if ok else f"FAIL singular values {singular.min():.3f}..{singular.max():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or pass --device cpu")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, bf16-mixed, {args.steps} steps")
    print(f"{'check':32} {'result':10} {'seconds':>8}")
    checks = [
        (p.name, lambda p=p, r=r: _run_plugin(p, args.device, args.steps, r))
        for p in PLUGINS
        for r in [Path(tempfile.mkdtemp())]
    ]
    checks.append(("LANTON Newton-Schulz bf16", lambda: _newton_schulz(args.device)))
    failures = 0
    for label, check in checks:
        start = time.perf_counter()
        try:
            result = check()
        except Exception as err:  # a report, not a test: show every plugin's outcome
            result = f"FAIL {type(err).__name__}: {err}".splitlines()[0][:200]
            traceback.print_exc(limit=1)
        failures += result.startswith("FAIL")
        print(f"{label:32} {result:10} {time.perf_counter() - start:8.2f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
