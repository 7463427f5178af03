"""The bit-width curriculum: a block whose modules ask for fewer than 4 bits trains at 4, then 3, then 2 bits (each
module down to its own width), moving on when the reconstruction loss converges."""

from __future__ import annotations

from collections.abc import Sequence

START_BITS = 4


def stages(bits: Sequence[int], curriculum: bool) -> list[int]:
    """Returns the widths a block trains at in turn: START_BITS down to its narrowest module's width with the
    curriculum (when that is below START_BITS), else the narrowest width alone."""
    narrowest = min(bits, default=START_BITS)
    if not curriculum or narrowest >= START_BITS:
        return [narrowest]
    return list(range(START_BITS, narrowest - 1, -1))


def bits_at(target: int, width: int) -> int:
    """Returns a module's width at curriculum stage `width`: never below its own target."""
    return max(target, width)


def converged(losses: Sequence[float], tolerance: float) -> bool:
    """Returns whether the last epoch improved the loss by less than `tolerance` (a share of the one before)."""
    if len(losses) < 2:
        return False
    previous, last = losses[-2], losses[-1]
    return previous <= 0 or (previous - last) / previous < tolerance
