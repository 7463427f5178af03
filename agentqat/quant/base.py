"""The quantizer interface: resolved per-module configs and calibration statistics.

A weight quantizer is a pure function `(weight, config, stats) -> dequantized weight`, carried by the Method
registered for it (`agentqat.quant.registry`). It never modifies its input and returns a new float32 tensor of
the same shape whose values lie on the quantization grid the config describes (fake quantization: the arena
measures quality on these values, and `agentqat.strategy.bits` counts what storing them would cost). A method on the integer
grid also has an `IntCoder`, `(weight, config, stats) -> IntCodes`: the same result before dequantization (its
codes, scales and zero points), which the level database stores packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch

ScaleType = Literal["fp16", "pow2"]
Clip = float | Literal["mse"]
INT_GRID = "int"  # the format of the integer grid that several roundings (registered methods) share
DEFAULT_ROUNDING = "rtn"  # the default config's method: round-to-nearest on the integer grid


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
    format: str = INT_GRID
    scale: ScaleType = "fp16"
    rounding: str = DEFAULT_ROUNDING
    clip: Clip = 1.0


@dataclass(frozen=True)
class ActivationQuant:
    """Fake quantization of a linear module's input, with optional SmoothQuant migration.

    bits 16 means activations stay in the compute dtype. smooth_alpha (0-1) moves quantization difficulty
    from activations to weights: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); W' = W diag(s), X' = X / s.
    """

    bits: int = 16
    format: str = "int"  # a registered `agentqat.quant.schemes.ActivationScheme`
    granularity: Literal["per_token", "per_tensor"] = "per_token"
    smooth_alpha: float | None = None


@dataclass(frozen=True)
class OutlierPolicy:
    """Weights kept in fp16 beside the quantized ones.

    method names a registered `agentqat.quant.schemes.OutlierScheme`; the built-in ones:
    keep_fp16: the `fraction` of entries with the largest magnitude (|W|) or saliency (|W| * input norm).
    llm_int8: every input column whose calibration activations exceed `threshold` in magnitude (LLM.int8).
    """

    method: str = "none"
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


class IntCodes(NamedTuple):
    """A weight on the integer grid as its quantizer found it: weight = (scale * (codes - zero)) / divisor.

    codes [out, in]: whole numbers in [qmin, qmax] as float32 (never -0.0). scale, zero [groups, 1]: per group, the
    groups `agentqat.quant.grid.to_groups` makes (row-major: a row's groups in column order). divisor [in]: a
    per-input-channel divisor applied after (AWQ's scales), or None.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    qmin: int
    qmax: int
    divisor: torch.Tensor | None = None


IntCoder = Callable[[torch.Tensor, WeightQuant, "LayerStats | None"], IntCodes]
