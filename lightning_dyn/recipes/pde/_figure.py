"""The ``pde/field`` figure: reference, prediction and error with the expert blocks drawn."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_dyn.functional.block_partition import block_edges


def field_figure(
    u: Tensor, u_ref: Tensor, t_final: float, partition: tuple[int, int], title: str
) -> Any:
    """Three panels over ``(x, t)`` of fields ``(T, X)``; dashed lines at the expert blocks' edges.

    ``partition`` counts blocks along (time rows ``1..T-1``, space), as ``HardConstraintMoE`` in
    the recipe; row 0 (the initial condition) belongs to no expert.
    """
    import matplotlib.pyplot as plt

    u, u_ref = u.detach().cpu().double(), u_ref.detach().cpu().double()
    n_t, n_x = u.shape
    dt = t_final / (n_t - 1)
    extent = (0.0, 1.0, -0.5 * dt, t_final + 0.5 * dt)
    error = (u - u_ref).abs()
    low, high = float(u_ref.min()), float(u_ref.max())
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    panels = [(u_ref, "reference", (low, high)), (u, title, (low, high)), (error, "|error|", None)]
    for ax, (field, name, limits) in zip(axes, panels, strict=True):
        vmin, vmax = limits if limits else (0.0, float(field.max()))
        image = ax.imshow(
            field.numpy(), origin="lower", aspect="auto", extent=extent, vmin=vmin, vmax=vmax
        )
        figure.colorbar(image, ax=ax)
        for edge in block_edges(n_x, partition[1]):
            ax.axvline(edge / n_x, color="white", linestyle="--", linewidth=1)
        for edge in block_edges(n_t - 1, partition[0]):
            ax.axhline((edge + 0.5) * dt, color="white", linestyle="--", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("x")
    axes[0].set_ylabel("t")
    rel = float((u - u_ref).norm() / u_ref.norm().clamp_min(1e-300))
    figure.suptitle(f"relative L2 error {rel:.3g}; blocks {partition[0]} x {partition[1]}")
    figure.tight_layout()
    return figure
