"""Outlier weights kept in fp16 beside the quantized ones: the built-in policies (none, keep_fp16, llm_int8),
registered as `agentqat.quant.schemes.OutlierScheme`s, and quantizing around the entries a policy keeps."""

from __future__ import annotations

import torch

from agentqat.quant.base import LayerStats, OutlierPolicy, WeightQuant
from agentqat.quant.registry import DEPLOY_TARGETS, quantize_weight
from agentqat.quant.schemes import NO_OUTLIERS, OutlierScheme, outlier_scheme, register_outliers


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


def _top_count(policy: OutlierPolicy, in_features: int, out_features: int, stats: LayerStats | None) -> int:
    return round(policy.fraction * in_features * out_features)


def _hot_count(policy: OutlierPolicy, in_features: int, out_features: int, stats: LayerStats | None) -> int:
    return int((stats.abs_max > policy.threshold).sum()) * out_features if stats is not None else 0


def _saliency(policy: OutlierPolicy) -> bool:
    return policy.criterion == "saliency"


def _fraction_problems(policy: OutlierPolicy) -> list[str]:
    return [] if 0.0 <= policy.fraction <= 1.0 else [f"outlier fraction must be in [0, 1], got {policy.fraction}"]


KEPT_ENTRIES = "outlier weights in fp16"
INDEX_BITS = 32  # an int32 position: a kept entry's (keep_fp16) or a kept column's (llm_int8)
register_outliers(OutlierScheme(
    name=NO_OUTLIERS, select=_no_mask, count=lambda policy, i, o, stats: 0, position_bits=lambda count, out: 0,
    fields=(), deploy_targets=DEPLOY_TARGETS, exports=None, kept="nothing",
))
register_outliers(OutlierScheme(
    name="keep_fp16", select=_top_entries, count=_top_count, position_bits=lambda count, out: INDEX_BITS * count,
    fields=("fraction", "criterion"), deploy_targets=frozenset({"fake-quant"}), exports=frozenset({"fake-quant"}),
    kept=KEPT_ENTRIES, needs_calibration=_saliency, problems=_fraction_problems,
))
register_outliers(OutlierScheme(
    name="llm_int8", select=_hot_columns, count=_hot_count, position_bits=lambda count, out: INDEX_BITS * (count // out),
    fields=("threshold",), deploy_targets=frozenset({"fake-quant"}), exports=frozenset({"fake-quant"}),
    kept=KEPT_ENTRIES, needs_calibration=lambda policy: True,
))  # fmt: skip


def outlier_mask(weight: torch.Tensor, policy: OutlierPolicy, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns the bool mask [out, in] of the weights the policy keeps in fp16 (its registered scheme's `select`)."""
    return outlier_scheme(policy).select(weight, policy, stats)


def quantize_with_outliers(
    weight: torch.Tensor, config: WeightQuant, policy: OutlierPolicy, stats: LayerStats | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (dequantized weight, outlier mask): outliers zeroed before quantizing so they do not stretch
    the grid, then put back with their original values."""
    weight = weight.detach().to(torch.float32)
    mask = outlier_mask(weight, policy, stats)
    dequantized = quantize_weight(weight.masked_fill(mask, 0.0), config, stats)
    return torch.where(mask, weight, dequantized), mask
