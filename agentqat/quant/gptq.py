"""GPTQ (Frantar et al. 2022): column-by-column rounding with second-order error compensation.

Follows the reference implementation: dead input channels (zero Hessian diagonal) get H_ii = 1 and W[:, i] = 0,
damping adds `damp` times the mean diagonal, the upper Cholesky factor of H^-1 drives the updates, and the
columns are processed in lazy blocks. With act-order (the registered default; on SmolLM2 natural order loses
to RTN, see FACTS.md) columns go in order of decreasing Hessian diagonal and every group's grid is computed
up front from the weights ("static groups"); in natural order each group's grid is computed from the updated
weights when the loop reaches the group's first column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentqat import defaults
from agentqat.quant.base import IntCodes, LayerStats, WeightQuant
from agentqat.quant.grid import Grid, code_range, dequantize, int_grid, int_grid_method, round_to_codes, to_groups
from agentqat.quant.registry import register
from agentqat.quant.rtn import SERVED_INT_GRID


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Returns the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, computed in float64."""
    h = hessian.to(torch.float64)
    h = h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True).to(torch.float32)


def gptq_codes(
    weight: torch.Tensor,
    config: WeightQuant,
    hessian: torch.Tensor,
    act_order: bool = defaults.GPTQ_ACT_ORDER,
    damp: float = defaults.GPTQ_DAMP,
    block_size: int = defaults.GPTQ_BLOCK_SIZE,
) -> IntCodes:
    """Returns the codes and grids of `weight` quantized by GPTQ against `hessian` (X^T X / tokens of the layer's
    input); `gptq_quantize` is their dequantization."""
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match in_features {columns}")
    group_size = to_groups(weight, config.group_size).shape[1]
    qmin, qmax = code_range(config.bits, config.symmetric)
    w = weight.clone()
    h = hessian.to(torch.float32).clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(columns, device=weight.device)
    # Each group's scale and zero [rows, groups]: with act-order computed up front from the weights ("static groups")
    # and read per column in processing order; in natural order filled in as the loop reaches each group.
    if act_order:
        grid = int_grid(to_groups(w, group_size), config)
        scales, zeros = grid.scale.reshape(rows, -1), grid.zero.reshape(rows, -1)
        column_group = order // group_size
        static = Grid(scales[:, column_group], zeros[:, column_group], qmin, qmax)
    else:
        scales = torch.empty(rows, columns // group_size, device=weight.device)
        zeros = torch.empty(rows, columns // group_size, device=weight.device)
        static = None
    w = w[:, order]
    factor = inverse_hessian_factor(h[order][:, order], damp)
    # In natural order, blocks hold whole groups so that a group's grid sees all earlier updates.
    block_size = block_size if act_order else group_size * max(1, block_size // group_size)
    codes = torch.empty_like(w)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = w[:, start:end].clone()
        errors = torch.empty_like(block)
        block_factor = factor[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if static is not None:
                scale, zero = static.scale[:, column : column + 1], static.zero[:, column : column + 1]
            elif column % group_size == 0:
                scale, zero, _, _ = int_grid(block[:, i : i + group_size], config)
                scales[:, column // group_size], zeros[:, column // group_size] = scale[:, 0], zero[:, 0]
            code = round_to_codes(block[:, i : i + 1], scale, zero, qmin, qmax)
            q = scale * (code - zero)
            codes[:, column] = code[:, 0]
            error = (block[:, i] - q[:, 0]) / block_factor[i, i]
            block[:, i:].sub_(torch.outer(error, block_factor[i, i:]))
            errors[:, i] = error
        w[:, end:].sub_(errors @ factor[start:end, end:])
    return IntCodes(codes[:, torch.argsort(order)], scales.reshape(-1, 1), zeros.reshape(-1, 1), qmin, qmax)


def gptq_quantize(
    weight: torch.Tensor,
    config: WeightQuant,
    hessian: torch.Tensor,
    act_order: bool = defaults.GPTQ_ACT_ORDER,
    damp: float = defaults.GPTQ_DAMP,
    block_size: int = defaults.GPTQ_BLOCK_SIZE,
) -> torch.Tensor:
    """Returns `weight` quantized by GPTQ against `hessian` (X^T X / tokens of the layer's input)."""
    return dequantize(gptq_codes(weight, config, hessian, act_order, damp, block_size))


@dataclass(frozen=True)
class GptqSettings:
    """GPTQ's own knobs, the registered method's `settings` (`agentqat.quant.registry.configure("gptq", damp=0.02)`
    changes them for the process): damping as a share of the mean Hessian diagonal, act-order (with static
    groups) or natural order, and the lazy-update block width in columns."""

    damp: float = defaults.GPTQ_DAMP
    act_order: bool = defaults.GPTQ_ACT_ORDER
    block_size: int = defaults.GPTQ_BLOCK_SIZE

    def __post_init__(self) -> None:
        if not 0.0 < self.damp < 1.0 or self.block_size < 1:
            raise ValueError(f"GPTQ takes damp in (0, 1) and a block size of 1 or more, not {self.damp}, {self.block_size}")


def _gptq_codes(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None, settings: GptqSettings) -> IntCodes:
    return gptq_codes(weight, config, stats.hessian, settings.act_order, settings.damp, settings.block_size)


def gptq(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None, settings: GptqSettings) -> torch.Tensor:
    """Returns `weight` quantized by GPTQ against the layer's Hessian as `settings` say (by default act-order with
    static groups)."""
    return dequantize(_gptq_codes(weight, config, stats, settings))


register(int_grid_method(
    "gptq", gptq, SERVED_INT_GRID, needs_calibration=True, codes=_gptq_codes, settings=GptqSettings(),
))  # its codes are an int grid's
