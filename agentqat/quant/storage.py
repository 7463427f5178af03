"""What storing a method's scales and zero points costs, per module (codes cost `bits` per weight for every method).

With G the module's groups (out x in / group_size; out for one scale per output channel):

    integer_zeros   scales (16 bits each as fp16, 8 as a power-of-two exponent byte) and, asymmetric, an integer
                    zero point of `bits` bits per group (rtn, gptq, awq)
    float_zeros     the same scales and, asymmetric, an fp16 zero point per group (hqq keeps its zeros in float)
    scales_only     the same scales, no zero points (fp8_e4m3; GGUF's Q4_0, Q5_0, Q8_0)
    scale_and_min   an fp16 scale and an fp16 minimum per group, whatever `symmetric` says (GGUF's Q4_1, Q5_1)
    fp32_absmax     an fp32 absmax per block (bitsandbytes' nf4 / fp4)
    fp32_row_absmax an fp32 absmax per output row (bitsandbytes' llm_int8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from agentqat.quant.base import WeightQuant

SCALE_BITS = {"fp16": 16, "pow2": 8}
ABSMAX_BITS = 32
FLOAT_ZERO_BITS = 16


class Shape(Protocol):
    """A linear module's shape (agentqat.models.LinearInfo is one)."""

    in_features: int
    out_features: int


@dataclass(frozen=True)
class Storage:
    """Bits beside the codes: scales and zero points."""

    scale_bits: int
    zero_bits: int


StorageRule = Callable[[WeightQuant, Shape], Storage]


def group_count(config: WeightQuant, shape: Shape) -> int:
    """Returns how many groups share a scale (one per output channel for group_size 0)."""
    if not config.group_size:
        return shape.out_features
    return shape.out_features * (shape.in_features // config.group_size)


def integer_zeros(config: WeightQuant, shape: Shape) -> Storage:
    """Returns the storage of an integer grid: scales, and `bits`-bit zero points when asymmetric."""
    groups = group_count(config, shape)
    return Storage(SCALE_BITS[config.scale] * groups, 0 if config.symmetric else config.bits * groups)


def float_zeros(config: WeightQuant, shape: Shape) -> Storage:
    """Returns the storage of an integer grid with fp16 zero points when asymmetric."""
    groups = group_count(config, shape)
    return Storage(SCALE_BITS[config.scale] * groups, 0 if config.symmetric else FLOAT_ZERO_BITS * groups)


def scales_only(config: WeightQuant, shape: Shape) -> Storage:
    """Returns the storage of one scale per group and no zero point."""
    return Storage(SCALE_BITS[config.scale] * group_count(config, shape), 0)


def scale_and_min(config: WeightQuant, shape: Shape) -> Storage:
    """Returns the storage of an fp16 scale and an fp16 minimum per group."""
    groups = group_count(config, shape)
    return Storage(SCALE_BITS["fp16"] * groups, FLOAT_ZERO_BITS * groups)


def fp32_absmax(config: WeightQuant, shape: Shape) -> Storage:
    """Returns the storage of an fp32 absmax per block."""
    return Storage(ABSMAX_BITS * group_count(config, shape), 0)


def fp32_row_absmax(config: WeightQuant, shape: Shape) -> Storage:
    """Returns the storage of an fp32 absmax per output row."""
    return Storage(ABSMAX_BITS * shape.out_features, 0)
