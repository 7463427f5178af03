"""The random generator: constraint-aware sampling of strategies that resolve against the model and fit the budget.

One sample (`sample_layout`), with N the number of decoder layers:

    layer groups   1-4 (uniform, at most N), contiguous spans partitioning layers 0..N-1 at uniform cut points
    per group      one config (`sample_config`), drawn for the input widths of the group's modules:
      bits         among the quantized widths within [budget - 2, budget + 1], P proportional to 2^rank (the
                   widest most likely: at budget 4.5, 3/4/5 bits with P 1/7, 2/7, 4/7); 16 is never drawn
      format       int with P 0.7, else one of the other registered formats storing `bits` (nf4/fp4/gguf_q4_*
                   at 4, gguf_q5_* at 5, fp8/llm_int8/gguf_q8_0 at 8)
      group size   uniform among per channel and the sizes >= 32 the format takes on every width (bitsandbytes
                   blocks for nf4/fp4, per channel only for llm_int8, 32 for the gguf_* block types)
      the rest     symmetric uniform; rounding uniform among the format's (int: rtn, gptq, awq, hqq); scale pow2
                   with P 0.2 where the format allows; where it takes any clip, clip 1.0 with P 0.6, else uniform
                   among the other ratios and "mse"
      outliers     keep_fp16 (fraction 0.1-1%, uniform criterion) with P 0.08, llm_int8 columns with P 0.04
      activation   quantized with P 0.1 (4 or 8 bits, fp8 only at 8, SmoothQuant with P 0.5), else 16-bit
    role variant   with P 0.35 per group, one role (attn, mlp or down_proj) of the group gets other bits
    compute dtype  fp32 with P 0.6, else bf16 or fp16

A sample over budget is repaired (`repair_layout`: the widest modules lose a bit, class by class), so every
proposal resolves and fits. Proposals are named "random-<strategy id>". Measured on SmolLM2-135M's shape, 200
proposals at budget 4.5 average 4.10 bits per weight (3.08-4.50); 62% of the weights get 4 bits, 28% 3, 10% 5.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from agentqat.generators.base import Evaluated, GeneratorRecord, register_generator
from agentqat.quant.base import INT_GRID, ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.quant.registry import find, format_method, methods_on
from agentqat.strategy.document import strategy_id
from agentqat.strategy.layout import Layout, document_of
from agentqat.strategy.repair import fix_config, repair_layout, valid_group_sizes
from agentqat.strategy.resolve import ModuleConfig, pattern_matches
from agentqat.strategy.space import SearchSpace, pick

MAX_GROUPS = 4
BITS_BELOW, BITS_ABOVE = 2, 1  # the widths drawn lie within [budget - 2, budget + 1]
MIN_SAMPLED_GROUP = 32  # smaller groups cost > 1 bit per weight in scales and zeros; mutations still reach 16
ROLE_VARIANTS = ("attn", "mlp", "down_proj")
P_ROLE_VARIANT = 0.35
P_INT_FORMAT = 0.7
P_POW2_SCALES = 0.2
P_FULL_RANGE = 0.6  # clip 1.0
P_KEEP_FP16 = 0.08
P_LLM_INT8_OUTLIERS = 0.04
P_ACTIVATION = 0.1
P_SMOOTHING = 0.5
P_FP32 = 0.6
DRAWS_PER_PROPOSAL = 20  # give up on distinct proposals after this many draws each


def affordable_bits(space: SearchSpace) -> list[int]:
    """Returns the quantized bit widths the sampler draws: budget - 2 to budget + 1, else the nearest one."""
    quantized = sorted(b for b in space.choices.bits if b != 16)
    near = [b for b in quantized if space.bits_budget - BITS_BELOW <= b <= space.bits_budget + BITS_ABOVE]
    return near or [min(quantized, key=lambda b: abs(b - space.bits_budget))]


def sample_bits(space: SearchSpace, rng: np.random.Generator) -> int:
    """Returns a bit width among the affordable ones, P proportional to 2^rank (the widest most likely)."""
    widths = affordable_bits(space)
    weights = 2.0 ** np.arange(len(widths))
    return widths[int(rng.choice(len(widths), p=weights / weights.sum()))]


def _sample_weight(space: SearchSpace, rng: np.random.Generator, widths: Collection[int]) -> WeightQuant:
    choices = space.choices
    bits = sample_bits(space, rng)
    formats = [
        f for f in choices.formats
        if f != INT_GRID and bits in format_method(f).bits and valid_group_sizes(f, widths, choices)
    ]  # fmt: skip
    weight_format = INT_GRID if not formats or rng.random() < P_INT_FORMAT else pick(rng, formats)
    method = format_method(weight_format)
    ranged = method.clips is None and rng.random() >= P_FULL_RANGE
    pow2 = "pow2" in method.scales and "pow2" in choices.scales and rng.random() < P_POW2_SCALES
    sizes = valid_group_sizes(weight_format, widths, choices)
    group_size = pick(rng, [g for g in sizes if g == 0 or g >= MIN_SAMPLED_GROUP] or sizes)
    symmetric = pick(rng, choices.symmetric)
    roundings = [r for r in choices.roundings if find(weight_format, r) is not None]
    return WeightQuant(
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        format=weight_format,
        scale="pow2" if pow2 else method.scales[0],
        rounding=pick(rng, roundings) if len(methods_on(weight_format)) > 1 else method.rounding,
        clip=pick(rng, [c for c in choices.clips if c != 1.0]) if ranged else 1.0,
    )


def _sample_outliers(space: SearchSpace, rng: np.random.Generator) -> OutlierPolicy:
    choices, draw = space.choices, rng.random()
    if draw < P_KEEP_FP16 and "keep_fp16" in choices.outlier_methods and choices.kept_fractions:
        return OutlierPolicy("keep_fp16", pick(rng, choices.kept_fractions), pick(rng, choices.outlier_criteria))
    if draw < P_KEEP_FP16 + P_LLM_INT8_OUTLIERS and "llm_int8" in choices.outlier_methods:
        return OutlierPolicy("llm_int8", threshold=pick(rng, choices.outlier_thresholds))
    return OutlierPolicy()


def _sample_activation(space: SearchSpace, rng: np.random.Generator) -> ActivationQuant:
    choices = space.choices
    quantized = [b for b in choices.activation_bits if b != 16]
    if not quantized or rng.random() >= P_ACTIVATION:
        return ActivationQuant()
    bits = pick(rng, quantized)
    return ActivationQuant(
        bits=bits,
        format=pick(rng, [f for f in choices.activation_formats if f == "int" or bits == 8]),
        granularity=pick(rng, choices.granularities),
        smooth_alpha=pick(rng, choices.smooth_alphas) if rng.random() < P_SMOOTHING else None,
    )


def sample_config(space: SearchSpace, rng: np.random.Generator, widths: Collection[int]) -> ModuleConfig:
    """Returns a random config valid for modules of every one of these input widths (see the module docstring)."""
    return ModuleConfig(
        _sample_weight(space, rng, widths), _sample_activation(space, rng), _sample_outliers(space, rng)
    )


def _role_variant(space: SearchSpace, rng: np.random.Generator, members: list[int], base: ModuleConfig) -> dict:
    """Returns {module index: config} giving one role of the group's modules other bits than `base`."""
    linears = space.facts.linears
    roles = [r for r in ROLE_VARIANTS if any(pattern_matches(r, linears[i]) for i in members)]
    other_bits = [b for b in affordable_bits(space) if b != base.weight.bits]
    if not roles or not other_bits:
        return {}
    role = pick(rng, roles)
    variant = replace(base, weight=replace(base.weight, bits=pick(rng, other_bits)))
    return {
        i: fix_config(variant, linears[i].in_features, space.choices)
        for i in members
        if pattern_matches(role, linears[i])
    }


def sample_layout(space: SearchSpace, rng: np.random.Generator) -> Layout:
    """Returns a random layout: layer groups, their configs and role variants (may exceed the budget)."""
    facts = space.facts
    groups = int(rng.integers(1, min(MAX_GROUPS, facts.num_layers) + 1))
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, facts.num_layers), groups - 1, replace=False))
    configs: dict[int, ModuleConfig] = {}
    for start, stop in zip([0, *cuts], [*cuts, facts.num_layers]):
        members = [i for i, info in enumerate(facts.linears) if start <= info.layer < stop]
        base = sample_config(space, rng, {facts.linears[i].in_features for i in members})
        configs.update({i: base for i in members})
        if rng.random() < P_ROLE_VARIANT:
            configs.update(_role_variant(space, rng, members, base))
    others = [d for d in space.choices.compute_dtypes if d != "fp32"]
    compute_dtype = "fp32" if not others or rng.random() < P_FP32 else pick(rng, others)
    return Layout(tuple(configs[i] for i in range(len(facts.linears))), compute_dtype)


@register_generator("random")
@dataclass(frozen=True)
class RandomGenerator:
    """Samples strategies independently of the population: constraint-aware, repaired into the budget."""

    space: SearchSpace
    name: str = field(default="random", init=False)

    def propose(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> list[dict]:
        """Returns up to `count` new documents, distinct from each other and from the population."""
        seen = {strategy_id(member.document) for member in population}
        proposals: list[dict] = []
        for _ in range(DRAWS_PER_PROPOSAL * count):
            if len(proposals) == count:
                break
            layout = repair_layout(sample_layout(self.space, rng), self.space, rng)
            document = document_of(layout, self.space.facts, "random")
            identity = strategy_id(document)
            if identity not in seen:
                seen.add(identity)
                proposals.append(document)
        return proposals

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        """Learns nothing: random sampling ignores results."""

    def take_records(self) -> list[GeneratorRecord]:
        """Returns nothing: random sampling notes nothing."""
        return []

    def restore(self, records: Sequence[GeneratorRecord]) -> None:
        """Takes nothing back: random sampling notes nothing."""
