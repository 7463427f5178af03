"""Outlier weights kept in fp16 beside the quantized ones: which entries, and quantizing around them."""

from __future__ import annotations

from typing import Callable

import torch

from agentqat.quant.base import LayerStats, OutlierPolicy, WeightQuant
from agentqat.quant.registry import quantize_weight


def _required(stats: LayerStats | None, policy: OutlierPolicy) -> LayerStats:
    """Returns `stats`, or raises ValueError when the policy needs calibration statistics and has none."""
    if stats is None:
        raise ValueError(
            f"outlier policy {policy.method!r} (criterion {policy.criterion!r}) needs calibration statistics"
        )
    return stats


def _no_mask(weight: torch.Tensor, policy: OutlierPolicy, stats: LayerStats | None) -> torch.Tensor:
    """Returns an all-False mask."""
    return torch.zeros_like(weight, dtype=torch.bool)


def _top_entries(weight: torch.Tensor, policy: OutlierPolicy, stats: LayerStats | None) -> torch.Tensor:
    """Returns a mask of the round(fraction * numel) entries with the largest |W| or saliency |W| * sqrt(diag H)."""
    if not 0.0 <= policy.fraction <= 1.0:
        raise ValueError(f"outlier fraction must be in [0, 1], got {policy.fraction}")
    score = weight.abs()
    if policy.criterion == "saliency":
        score = score * _required(stats, policy).hessian.diagonal().clamp_min(0.0).sqrt()
    count = round(policy.fraction * weight.numel())
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[torch.topk(score.flatten(), count).indices] = True
    return mask.reshape(weight.shape)


def _hot_columns(weight: torch.Tensor, policy: OutlierPolicy, stats: LayerStats | None) -> torch.Tensor:
    """Returns a mask of every input column whose calibration max |X| exceeds the policy's threshold."""
    hot = _required(stats, policy).abs_max > policy.threshold
    return hot.unsqueeze(0).expand_as(weight).clone()


_MASKS: dict[str, Callable[[torch.Tensor, OutlierPolicy, LayerStats | None], torch.Tensor]] = {
    "none": _no_mask,
    "keep_fp16": _top_entries,
    "llm_int8": _hot_columns,
}


def outlier_mask(weight: torch.Tensor, policy: OutlierPolicy, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns the bool mask [out, in] of the weights the policy keeps in fp16."""
    return _MASKS[policy.method](weight, policy, stats)


def quantize_with_outliers(
    weight: torch.Tensor, config: WeightQuant, policy: OutlierPolicy, stats: LayerStats | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (dequantized weight, outlier mask): outliers zeroed before quantizing so they do not stretch
    the grid, then put back with their original values."""
    weight = weight.detach().to(torch.float32)
    mask = outlier_mask(weight, policy, stats)
    dequantized = quantize_weight(weight.masked_fill(mask, 0.0), config, stats)
    return torch.where(mask, weight, dequantized), mask
