"""Effective bits per weight and bytes: what storing a strategy's quantized model would cost.

Per linear module with n = out x in weights and G groups (G = out x in / group_size; out for per-channel):

    code bits      bits x n                           (16 x n when bits is 16: the weight stays fp16/bf16)
    scale bits,    the method's `storage` (agentqat.quant.storage): G x 16 for fp16 scales, G x 8 for
    zero bits      power-of-two scales (an exponent byte); nf4 / fp4 store an fp32 absmax per block (G x 32),
                   llm_int8 an fp32 scale per row (out x 32); zero points on asymmetric int grids only:
                   G x bits (rtn, gptq, awq), G x 16 (hqq keeps a float zero)
    outlier bits   the policy's `OutlierScheme.stored_bits` (agentqat.quant.schemes): per kept entry 16 (its fp16
                   value) plus its positions: keep_fp16 32 per entry (an int32 position), llm_int8 32 per column
    smoothing bits each input transform's `stored_bits`: SmoothQuant 16 x in (an fp16 divisor per input channel)

Quantized codes are counted for every weight, outliers included (dense codes plus sparse corrections).
Effective bits per weight = the sum over quantizable linears / their weight count. Model bytes add every
other parameter (embeddings, norms, an untied output head) at 16 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentqat.models import LinearInfo, ModelFacts
from agentqat.quant.base import LayerStats, OutlierPolicy
from agentqat.quant.registry import storing_method
from agentqat.quant.schemes import outlier_scheme, transforms_of
from agentqat.strategy.resolve import ModuleConfig, ResolvedStrategy

UNQUANTIZED_BITS = 16


@dataclass(frozen=True)
class ModuleBits:
    """Storage of one linear module, in bits, by component."""

    name: str
    weights: int
    code_bits: int
    scale_bits: int
    zero_bits: int
    outlier_bits: int
    smoothing_bits: int

    @property
    def total(self) -> int:
        return self.code_bits + self.scale_bits + self.zero_bits + self.outlier_bits + self.smoothing_bits

    @property
    def bits_per_weight(self) -> float:
        return self.total / self.weights


@dataclass(frozen=True)
class StrategyBits:
    """Storage of a whole quantized model."""

    modules: tuple[ModuleBits, ...]
    other_parameters: int

    @property
    def linear_weights(self) -> int:
        return sum(m.weights for m in self.modules)

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per weight over the quantizable linear modules."""
        return sum(m.total for m in self.modules) / self.linear_weights

    @property
    def model_bytes(self) -> int:
        return (sum(m.total for m in self.modules) + UNQUANTIZED_BITS * self.other_parameters) // 8


def expected_outlier_count(policy: OutlierPolicy, info: LinearInfo, stats: LayerStats | None) -> int:
    """Returns how many weights the outlier policy is expected to keep in fp16 (stats None: before calibration)."""
    return outlier_scheme(policy).count(policy, info.in_features, info.out_features, stats)


def module_bits(config: ModuleConfig, info: LinearInfo, outlier_count: int) -> ModuleBits:
    """Returns the storage of one module under `config`, following the formula in this module's docstring."""
    weight = config.weight
    n = info.in_features * info.out_features
    if weight.bits == 16:
        return ModuleBits(info.name, n, UNQUANTIZED_BITS * n, 0, 0, 0, 0)
    storage = storing_method(weight).storage(weight, info)
    outlier_bits = outlier_scheme(config.outliers).stored_bits(outlier_count, info.out_features)
    smoothing_bits = sum(t.stored_bits(info.in_features) for t in transforms_of(config.activation))
    return ModuleBits(
        info.name, n, weight.bits * n, storage.scale_bits, storage.zero_bits, outlier_bits, smoothing_bits
    )


def strategy_bits(
    resolved: ResolvedStrategy,
    facts: ModelFacts,
    outlier_counts: dict[str, int] | None = None,
    stats: dict[str, LayerStats] | None = None,
) -> StrategyBits:
    """Returns the storage of the whole model; outlier counts are measured ones if given, else expected."""
    modules = []
    for info in facts.linears:
        config = resolved.modules[info.name]
        if outlier_counts is not None and info.name in outlier_counts:
            count = outlier_counts[info.name]
        else:
            count = expected_outlier_count(config.outliers, info, (stats or {}).get(info.name))
        modules.append(module_bits(config, info, count))
    linear_weights = sum(m.weights for m in modules)
    return StrategyBits(tuple(modules), facts.num_parameters - linear_weights)

