"""HQQ (Badri & Shaji 2023): calibration-free; the zero point of each group is optimised, in float, by
half-quadratic proximal iterations that fit the weights under an lp-norm (p < 1) error.

Follows hqq's `optimize_weights_proximal`: scale fixed (here the grid's, so clip and pow2 apply), the residual
W - W_r is shrunk by the generalised soft threshold, the zero is re-fitted to the shrunk target, beta grows by
kappa each step, and the loop stops when the mean |W - W_r| stops improving. Unlike hqq, each group keeps the
zero with its lowest mean |W - W_r| seen (so a group never ends worse than its RTN start on that measure).
The zero is stored as float16. HQQ fits the zero point, so a symmetric config is plain symmetric RTN.
"""

from __future__ import annotations

import torch

from agentqat.quant.base import IntCodes, LayerStats, WeightQuant
from agentqat.quant.grid import Grid, dequantize, int_grid, int_grid_method, round_to_codes, to_groups
from agentqat.quant.registry import register
from agentqat.quant.rtn import SERVED_INT_GRID, rtn_codes
from agentqat.quant.storage import float_zeros


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Returns the proximal operator of the lp-norm (p <= 1) at `x`: sign(x) * relu(|x| - |x|^(p-1) / beta)."""
    magnitude = x.abs()
    return torch.sign(x) * torch.relu(magnitude - magnitude.pow(p - 1.0) / beta)


def optimize_zero(
    groups: torch.Tensor,
    grid: Grid,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    iterations: int = 20,
) -> torch.Tensor:
    """Returns each group's float zero point [groups, 1] after HQQ's proximal iterations from `grid.zero`."""
    zero = grid.zero
    best_zero, best_error = zero, torch.full_like(zero, float("inf"))
    previous_total = float("inf")
    for _ in range(iterations):
        codes = torch.clamp(torch.round(groups / grid.scale + zero), grid.qmin, grid.qmax)
        residual = groups - grid.scale * (codes - zero)
        error = residual.abs().mean(1, keepdim=True)
        best_zero = torch.where(error < best_error, zero, best_zero)
        best_error = torch.minimum(error, best_error)
        total = float(error.mean())
        if total >= previous_total:
            break
        previous_total = total
        target = groups - shrink_lp(residual, beta, p)
        zero = (codes - target / grid.scale).mean(1, keepdim=True)
        beta *= kappa
    return best_zero.to(torch.float16).to(torch.float32)


def hqq_codes(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> IntCodes:
    """Returns the codes of `weight` on the asymmetric grid with HQQ-optimised float zero points, with the grids
    (symmetric RTN's if asked)."""
    if config.symmetric:
        return rtn_codes(weight, config)
    groups = to_groups(weight, config.group_size)
    grid = int_grid(groups, config)
    zero = optimize_zero(groups, grid)
    codes = round_to_codes(groups, grid.scale, zero, grid.qmin, grid.qmax)
    return IntCodes(codes.reshape(weight.shape), grid.scale, zero, grid.qmin, grid.qmax)


def hqq(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` on the asymmetric grid with HQQ-optimised float zero points (symmetric RTN if asked)."""
    return dequantize(hqq_codes(weight, config))


register(int_grid_method("hqq", hqq, SERVED_INT_GRID, storage=float_zeros, codes=hqq_codes))  # symmetric HQQ is RTN: served as RTN is
