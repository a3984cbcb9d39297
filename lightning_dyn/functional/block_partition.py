"""The uniform block partition of a grid axis that ``HardConstraintMoE`` and its diagnostics use.

``parts`` blocks of ``n // parts`` points along an axis, the remainder going to the last block:
block ``i`` is ``[i · (n // parts), (i + 1) · (n // parts))``, the last one ending at ``n``. The
experts' blocks, their interface rows, the face jumps and the recipe's figure all read the
partition from here, so that they cannot disagree on where a face is.
"""

from __future__ import annotations

__all__ = ["block_bounds", "block_edges"]


def block_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]``, the ``parts`` blocks of ``n`` points (see the module)."""
    base = n // parts
    return [(i * base, n if i == parts - 1 else (i + 1) * base) for i in range(parts)]


def block_edges(n: int, parts: int) -> list[int]:
    """Grid indices where a block starts, the first block's 0 left out: the inner faces."""
    return [start for start, _ in block_bounds(n, parts)[1:]]
