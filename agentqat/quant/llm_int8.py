"""LLM.int8's weights through bitsandbytes' own functions: row-wise absmax int8 (int8_vectorwise_quant / _dequant).
Its outlier columns are an outlier policy (`agentqat.quant.outliers`), not part of the weight method."""

from __future__ import annotations

import torch

from agentqat.quant.base import DEFAULT_ROUNDING, LayerStats, WeightQuant
from agentqat.quant.bnb import check_absmax
from agentqat.quant.registry import Method, register
from agentqat.quant.storage import fp32_row_absmax


def llm_int8(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` through bitsandbytes' row-wise absmax int8."""
    check_absmax(config, 8)
    if config.group_size != 0:
        raise ValueError(f"llm_int8 scales whole output rows: use group_size 0, got {config.group_size}")
    from bitsandbytes import functional

    codes, row_stats, _ = functional.int8_vectorwise_quant(weight.contiguous())
    return functional.int8_vectorwise_dequant(codes, row_stats).to(torch.float32)


# Symmetric int8 per output row is the weight side of vLLM's CPU INT8 W8A8 (with int8 per-token activations).
register(Method(
    name="llm_int8", format="llm_int8", rounding=DEFAULT_ROUNDING, quantize=llm_int8, storage=fp32_row_absmax,
    label="bitsandbytes' llm_int8", deploy_targets=frozenset({"fake-quant", "vllm-cpu"}), bits=(8,),
    group_sizes=(0,), scales=("fp16",), clips=(1.0,), scaling="absmax",
    baseline={"weight": {"group_size": 0}, "outliers": {"method": "llm_int8", "threshold": 6.0}},
))  # fmt: skip
