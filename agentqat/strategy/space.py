"""The search space: the gene values a strategy may take (as the strategy schema and the method registry list them
when asked), and what generators may produce from them for one model within a bit budget. The generators draw
from it, repair and the deployment targets keep strategies inside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from agentqat.models import ModelFacts
from agentqat.quant.base import DEFAULT_ROUNDING, INT_GRID, ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.quant.registry import format_method
from agentqat.strategy.bits import module_bits
from agentqat.strategy.document import ActivationGene, Arithmetic, OutlierGene, WeightGene
from agentqat.strategy.resolve import ModuleConfig

T = TypeVar("T")


def pick(rng: np.random.Generator, values: Sequence[T]) -> T:
    """Returns one of `values` uniformly at random, as the value itself (never a numpy scalar)."""
    return values[int(rng.integers(len(values)))]


def enum_values(gene: type[BaseModel], name: str) -> tuple:
    """Returns the values the strategy schema allows for one gene field (None, "not set", left out), as the schema
    lists them now (formats and roundings are the method registry's)."""
    node = gene.model_json_schema()["properties"][name]
    values: list = []
    for arm in node.get("anyOf", [node]):
        if "enum" in arm:
            values.extend(arm["enum"])
        elif arm.get("type") == "boolean":
            values.extend((False, True))
    return tuple(values)


def _schema(gene: type[BaseModel], name: str) -> Any:
    """Returns a dataclass field whose default is `enum_values(gene, name)` when an instance is made."""
    return field(default_factory=partial(enum_values, gene, name))


def searched_formats() -> tuple[str, ...]:
    """Returns the weight formats generators draw by default: the schema's, less those whose method is not searched
    (export formats such as GGUF's block types, drawn under their deployment target)."""
    return tuple(f for f in enum_values(WeightGene, "format") if format_method(f).searched)


# What repair falls back on; every GeneChoices must allow them.
FALLBACKS = {"formats": INT_GRID, "roundings": DEFAULT_ROUNDING, "scales": "fp16", "clips": 1.0, "group_sizes": 0}
MAX_KEPT_FRACTION = 0.01  # the largest keep_fp16 fraction generators draw: 1% costs 0.48 bits per weight


@dataclass(frozen=True)
class GeneChoices:
    """The gene values generators may use; by default every value the strategy schema allows when they are made."""

    bits: tuple[int, ...] = _schema(WeightGene, "bits")
    group_sizes: tuple[int, ...] = _schema(WeightGene, "group_size")
    symmetric: tuple[bool, ...] = _schema(WeightGene, "symmetric")
    formats: tuple[str, ...] = field(default_factory=lambda: searched_formats())  # defined below, called when made
    scales: tuple[str, ...] = _schema(WeightGene, "scale")
    roundings: tuple[str, ...] = _schema(WeightGene, "rounding")
    clips: tuple[float | str, ...] = _schema(WeightGene, "clip")
    outlier_methods: tuple[str, ...] = _schema(OutlierGene, "method")
    outlier_fractions: tuple[float, ...] = _schema(OutlierGene, "fraction")
    outlier_criteria: tuple[str, ...] = _schema(OutlierGene, "criterion")
    outlier_thresholds: tuple[float, ...] = _schema(OutlierGene, "threshold")
    activation_bits: tuple[int, ...] = _schema(ActivationGene, "bits")
    activation_formats: tuple[str, ...] = _schema(ActivationGene, "format")
    granularities: tuple[str, ...] = _schema(ActivationGene, "granularity")
    smooth_alphas: tuple[float, ...] = _schema(ActivationGene, "smooth_alpha")
    compute_dtypes: tuple[str, ...] = _schema(Arithmetic, "compute_dtype")

    @property
    def kept_fractions(self) -> tuple[float, ...]:
        """Returns the keep_fp16 fractions generators draw: the nonzero ones up to MAX_KEPT_FRACTION."""
        return tuple(f for f in self.outlier_fractions if 0 < f <= MAX_KEPT_FRACTION)

    def __post_init__(self) -> None:
        missing = [f"{field} {value!r}" for field, value in FALLBACKS.items() if value not in getattr(self, field)]
        if missing:
            raise ValueError(f"gene choices must allow what repair falls back on: {', '.join(missing)}")


def cheapest_bits_per_weight(facts: ModelFacts, choices: GeneChoices) -> float:
    """Returns the bits per weight of the cheapest strategy the choices allow (what repair can always reach)."""
    weight = WeightQuant(
        bits=min(choices.bits), group_size=0, symmetric=True in choices.symmetric, format="int",
        scale="pow2" if "pow2" in choices.scales else "fp16", rounding=DEFAULT_ROUNDING,
    )  # fmt: skip
    config = ModuleConfig(weight, ActivationQuant(), OutlierPolicy())
    total = sum(module_bits(config, info, 0).total for info in facts.linears)
    return total / sum(info.in_features * info.out_features for info in facts.linears)


@dataclass(frozen=True)
class SearchSpace:
    """What generators may produce: strategies for one model, within a bit budget, from these gene choices; with
    a ladder (the arena's level database, cheapest level first), module-level allocations over its levels."""

    facts: ModelFacts
    bits_budget: float
    choices: GeneChoices = field(default_factory=GeneChoices)
    ladder: tuple[ModuleConfig, ...] = ()

    def __post_init__(self) -> None:
        floor = cheapest_bits_per_weight(self.facts, self.choices)
        if self.bits_budget < floor:
            raise ValueError(
                f"bit budget {self.bits_budget} is below the cheapest strategy's {floor:.3f} bits per weight "
                f"on {self.facts.name}"
            )
