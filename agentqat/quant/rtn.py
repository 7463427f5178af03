"""Round-to-nearest: every group rounded to its own min/max (or clipped) integer grid."""

from __future__ import annotations

import torch

from agentqat.quant.base import LayerStats, WeightQuant, register
from agentqat.quant.grid import fake_quantize_groups, int_grid, to_groups


@register("rtn")
def rtn(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` rounded to the nearest point of each group's integer grid."""
    groups = to_groups(weight, config.group_size)
    return fake_quantize_groups(groups, int_grid(groups, config)).reshape(weight.shape)
