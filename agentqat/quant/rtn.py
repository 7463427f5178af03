"""Round-to-nearest: every group rounded to its own min/max (or clipped) integer grid."""

from __future__ import annotations

import torch

from agentqat.quant.base import DEFAULT_ROUNDING, LayerStats, WeightQuant
from agentqat.quant.grid import fake_quantize_groups, int_grid, int_grid_method, to_groups
from agentqat.quant.registry import register

# vLLM on CPU serves 4-bit symmetric groups (WNA16) and symmetric int8 per channel (W8A8); GGUF's simple types are
# int4/5/8 blocks of 32, symmetric or with a minimum; vLLM on CUDA runs int grids through Marlin (FACTS.md).
SERVED_INT_GRID = frozenset({"fake-quant", "vllm-cpu", "vllm-cuda", "gguf"})


def rtn(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` rounded to the nearest point of each group's integer grid."""
    groups = to_groups(weight, config.group_size)
    return fake_quantize_groups(groups, int_grid(groups, config)).reshape(weight.shape)


register(int_grid_method(DEFAULT_ROUNDING, rtn, SERVED_INT_GRID))
