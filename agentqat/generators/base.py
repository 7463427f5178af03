"""The generator interface: what every generator (random, evo, llm) offers the evolution loop, and its registry.

Like an optuna sampler, a generator is tiny: `propose` strategy documents given the population so far, with
the random generator passed in explicitly, and `tell` it how evaluated strategies fared. It never evaluates
anything itself and writes nothing; what it wants kept (rejected proposals, reflections) it hands over through
`take_records`, and the loop owns the run directory. A resumed run hands a replayed generation's records back
through `restore`, so the generator continues as if it had never stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel

from agentqat.bits import module_bits
from agentqat.models import ModelFacts
from agentqat.quant.base import DEFAULT_ROUNDING, INT_GRID, ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.quant.registry import format_method
from agentqat.resolve import ModuleConfig
from agentqat.scoring import Ranked
from agentqat.strategy import ActivationGene, Arithmetic, OutlierGene, WeightGene

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


@dataclass(frozen=True)
class Evaluated:
    """A strategy document with its fate in the arena; kl and bits are None when the match failed."""

    document: dict
    score: float
    survives: bool
    outcome: str
    kl: float | None
    bits: float | None

    @classmethod
    def from_ranked(cls, document: dict, row: Ranked) -> Evaluated:
        """Returns the fate a leaderboard row records for `document`."""
        agg = row.aggregate
        return cls(document, row.score, row.survives, agg.outcome, agg.kl, agg.bits_per_weight)


def ranked_parents(population: Sequence[Evaluated]) -> list[Evaluated]:
    """Returns the members that may be parents, best first: the survivors by score (then strategy id), or while
    none survives the collapsed ones by KL (the evolution loop passes those when nothing has survived yet)."""
    from agentqat.strategy import strategy_id

    survivors = sorted((m for m in population if m.survives), key=lambda m: (-m.score, strategy_id(m.document)))
    collapsed = (m for m in population if m.outcome == "collapse" and m.kl is not None)
    return survivors or sorted(collapsed, key=lambda m: (m.kl, strategy_id(m.document)))


class Generator(Protocol):
    """Proposes strategy documents and learns from how evaluated ones fared."""

    name: str

    def propose(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> list[dict]:
        """Returns up to `count` new strategy documents, distinct from each other and from the population."""
        ...

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        """Learns from strategies the arena has evaluated (proposed by this generator or not)."""
        ...

    def take_records(self) -> list[GeneratorRecord]:
        """Returns what the generator noted since the last call (e.g. rejected proposals), for the run record."""
        ...

    def restore(self, records: Sequence[GeneratorRecord]) -> None:
        """Takes back what it noted in a generation that a resumed run replays from the run record (called
        before that generation's `tell`, in place of proposing it)."""
        ...


@dataclass(frozen=True)
class GeneratorRecord:
    """Something a generator noted that the run directory keeps: `data` appended to `<stream>.jsonl`."""

    stream: str
    data: dict


GeneratorFactory = Callable[..., Generator]
GENERATORS: dict[str, GeneratorFactory] = {}


def register_generator(name: str) -> Callable[[GeneratorFactory], GeneratorFactory]:
    """Returns a decorator that registers a generator factory (a class taking the search space) under `name`."""

    def decorate(factory: GeneratorFactory) -> GeneratorFactory:
        if name in GENERATORS:
            raise ValueError(f"generator {name!r} registered twice")
        GENERATORS[name] = factory
        return factory

    return decorate


def uses_seed(name: str) -> bool:
    """Returns whether the generator registered under `name` proposes differently at another search seed (False
    for one that declares `uses_seed = False`, such as the knapsack allocator: its runs repeat each other)."""
    return getattr(GENERATORS[name], "uses_seed", True)


def make_generator(name: str, space: SearchSpace, **options) -> Generator:
    """Returns the generator registered under `name`, set up for `space` (with its own keyword options)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name](space, **options)
