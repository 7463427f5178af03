"""Round-to-nearest: every group rounded to its own min/max (or clipped) integer grid."""

from __future__ import annotations

import torch

from agentqat.quant.base import DEFAULT_ROUNDING, IntCodes, LayerStats, WeightQuant
from agentqat.quant.grid import dequantize, int_grid, int_grid_method, round_to_codes, to_groups
from agentqat.quant.registry import register

# vLLM on CPU serves 4-bit symmetric groups (WNA16) and symmetric int8 per channel (W8A8); GGUF's simple types are
# int4/5/8 blocks of 32, symmetric or with a minimum; vLLM on CUDA runs int grids through Marlin (FACTS.md).
SERVED_INT_GRID = frozenset({"fake-quant", "vllm-cpu", "vllm-cuda", "gguf"})


def rtn_codes(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> IntCodes:
    """Returns the codes of `weight` rounded to the nearest point of each group's integer grid, with the grids."""
    groups = to_groups(weight, config.group_size)
    grid = int_grid(groups, config)
    codes = round_to_codes(groups, grid.scale, grid.zero, grid.qmin, grid.qmax)
    return IntCodes(codes.reshape(weight.shape), grid.scale, grid.zero, grid.qmin, grid.qmax)


def rtn(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` rounded to the nearest point of each group's integer grid."""
    return dequantize(rtn_codes(weight, config))


register(int_grid_method(DEFAULT_ROUNDING, rtn, SERVED_INT_GRID, codes=rtn_codes))
