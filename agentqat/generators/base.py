"""The generator interface: what every generator (random, evo, llm) offers the evolution loop, and its registry.

Like an optuna sampler, a generator is tiny: `propose` strategy documents given the population so far, with
the random generator passed in explicitly, and `tell` it how evaluated strategies fared. It never evaluates
anything itself and writes nothing; what it wants kept (rejected proposals, reflections) it hands over through
`take_records`, and the loop owns the run directory. A resumed run hands a replayed generation's records back
through `restore`, so the generator continues as if it had never stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agentqat.arena.scoring import Ranked
from agentqat.strategy.document import strategy_id
from agentqat.strategy.space import SearchSpace


@dataclass(frozen=True)
class Cost:
    """Matches and evaluated tokens: what a search spent, or a generator's preparation (the knapsack's probes)."""

    matches: int = 0
    tokens: int = 0


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
