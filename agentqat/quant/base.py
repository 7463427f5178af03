"""The quantizer interface: resolved per-module configs, calibration statistics, and the registry.

A weight quantizer is a pure function `(weight, config, stats) -> dequantized weight` registered by name.
It never modifies its input and returns a new float32 tensor of the same shape whose values lie on the
quantization grid the config describes (fake quantization: the arena measures quality on these values,
and `agentqat.bits` counts what storing them would cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

WeightFormat = Literal["int", "nf4", "fp4", "fp8_e4m3", "llm_int8"]
ScaleType = Literal["fp16", "pow2"]
Rounding = Literal["rtn", "gptq", "awq", "hqq"]
Clip = float | Literal["mse"]


@dataclass(frozen=True)
class WeightQuant:
    """How one module's weight is quantized (already resolved from a strategy, already validated).

    bits: 2-8, or 16 for "leave unquantized". group_size: elements of one input row sharing a scale
    (0 = one scale per output channel). clip: fraction of each group's range kept, or "mse" to search
    the fraction that minimises the group's squared error. scale "pow2" rounds scales up to powers of two.
    """

    bits: int = 4
    group_size: int = 64
    symmetric: bool = False
    format: WeightFormat = "int"
    scale: ScaleType = "fp16"
    rounding: Rounding = "rtn"
    clip: Clip = 1.0

    @property
    def quantizer_name(self) -> str:
        """Returns the registry key: the rounding method for integer grids, the format otherwise."""
        return self.rounding if self.format == "int" else self.format


@dataclass(frozen=True)
class ActivationQuant:
    """Fake quantization of a linear module's input, with optional SmoothQuant migration.

    bits 16 means activations stay in the compute dtype. smooth_alpha (0-1) moves quantization difficulty
    from activations to weights: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); W' = W diag(s), X' = X / s.
    """

    bits: int = 16
    format: Literal["int", "fp8_e4m3"] = "int"
    granularity: Literal["per_token", "per_tensor"] = "per_token"
    smooth_alpha: float | None = None


@dataclass(frozen=True)
class OutlierPolicy:
    """Weights kept in fp16 beside the quantized ones.

    keep_fp16: the `fraction` of entries with the largest magnitude (|W|) or saliency (|W| * input norm).
    llm_int8: every input column whose calibration activations exceed `threshold` in magnitude (LLM.int8).
    """

    method: Literal["none", "keep_fp16", "llm_int8"] = "none"
    fraction: float = 0.0
    criterion: Literal["magnitude", "saliency"] = "magnitude"
    threshold: float = 6.0


@dataclass(frozen=True)
class LayerStats:
    """Calibration statistics of one linear module's input X (tokens x in_features).

    hessian: X^T X / tokens (float32, in x in), the GPTQ/AWQ proxy: output error of dW is tr(dW H dW^T).
    abs_mean / abs_max: per input channel mean and max of |X| (AWQ, SmoothQuant, saliency, LLM.int8).
    """

    hessian: torch.Tensor
    abs_mean: torch.Tensor
    abs_max: torch.Tensor
    tokens: int


WeightQuantizer = Callable[[torch.Tensor, WeightQuant, "LayerStats | None"], torch.Tensor]
WEIGHT_QUANTIZERS: dict[str, WeightQuantizer] = {}
NEEDS_CALIBRATION: set[str] = set()


def register(name: str, needs_calibration: bool = False) -> Callable[[WeightQuantizer], WeightQuantizer]:
    """Returns a decorator that registers a weight quantizer under `name`."""

    def decorate(function: WeightQuantizer) -> WeightQuantizer:
        if name in WEIGHT_QUANTIZERS:
            raise ValueError(f"quantizer {name!r} registered twice")
        WEIGHT_QUANTIZERS[name] = function
        if needs_calibration:
            NEEDS_CALIBRATION.add(name)
        return function

    return decorate


def quantize_weight(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns `weight` fake-quantized by the quantizer the config names (a copy for bits 16)."""
    if config.bits == 16:
        return weight.detach().to(torch.float32).clone()
    name = config.quantizer_name
    if name in NEEDS_CALIBRATION and stats is None:
        raise ValueError(f"quantizer {name!r} needs calibration statistics")
    return WEIGHT_QUANTIZERS[name](weight.detach().to(torch.float32), config, stats)
