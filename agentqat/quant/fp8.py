"""FP8 E4M3 weights: each group divided by a scale that maps its absmax (times the clip ratio) to 448, then cast
through torch.float8_e4m3fn (values beyond +-448 saturate). Scales are stored like the integer grid's."""

from __future__ import annotations

import torch

from agentqat.quant.base import DEFAULT_ROUNDING, LayerStats, WeightQuant
from agentqat.quant.grid import clip_ratios, pick_best, store_scale, to_groups
from agentqat.quant.registry import Method, register
from agentqat.quant.storage import scales_only

FP8_E4M3_MAX = 448.0


def fp8_round(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Returns scale * e4m3(values / scale), the quotient saturated to +-448."""
    scaled = torch.clamp(values / scale, -FP8_E4M3_MAX, FP8_E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn).to(torch.float32) * scale


def fp8_scale(groups: torch.Tensor, config: WeightQuant) -> torch.Tensor:
    """Returns the scale of each group (rows of `groups`): the clip ratio's absmax over 448 with the least error."""
    absmax = groups.abs().amax(1, keepdim=True)
    candidates = [(store_scale(absmax * ratio / FP8_E4M3_MAX, config.scale),) for ratio in clip_ratios(config.clip)]
    (scale,) = pick_best(groups, candidates, fp8_round)
    return scale


def fp8_e4m3(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` rounded to FP8 E4M3 with one scale per group (per output channel for group_size 0)."""
    if config.bits != 8:
        raise ValueError(f"fp8_e4m3 stores 8-bit values, got bits={config.bits}")
    groups = to_groups(weight, config.group_size)
    return fp8_round(groups, fp8_scale(groups, config)).reshape(weight.shape)


# FP8 W8A8 is a CUDA path of vLLM, not a CPU one (FACTS.md); fp8 weights have no GGUF type.
register(Method(
    name="fp8_e4m3", format="fp8_e4m3", rounding=DEFAULT_ROUNDING, quantize=fp8_e4m3, storage=scales_only,
    label="fp8_e4m3", deploy_targets=frozenset({"fake-quant", "vllm-cuda"}), bits=(8,), scaling="absmax",
    baseline={"weight": {"group_size": 0, "symmetric": True}},
))  # fmt: skip
