"""On an arena with a level ladder every arm searches the same space: allocations of ladder levels to module
units (the level database holds them, so a match costs a weight swap and a forward pass). `on_ladder` puts a
proposal there: the document is snapped to the ladder (`switches.snap_to_ladder`: each fused unit takes the
costliest level that costs no more than its configs do, then units fall a level while the budget is exceeded)
and its notes say so; a ladder allocation stays as it is. `Mapped` passes any generator's proposals through
such a function (the ladder, a deployment target)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from agentqat.generators.base import Evaluated, Generator, GeneratorRecord
from agentqat.generators.switches import layout_at, snap_to_ladder
from agentqat.strategy.layout import document_of, layout_of
from agentqat.strategy.space import SearchSpace


def on_ladder(document: dict, space: SearchSpace, rng: np.random.Generator) -> dict:
    """Returns the document as a ladder allocation (the same document when it is one already)."""
    layout = layout_of(document, space.facts)
    if set(layout.configs) <= set(space.ladder):
        return document
    snapped = layout_at(snap_to_ladder(layout, space, rng), space, layout.compute_dtype)
    notes = f"{document.get('notes', '')} (snapped to the ladder)".strip()[:500]
    prefix = str(document.get("name", "")).rpartition("-")[0] or "snapped"
    return document_of(snapped, space.facts, prefix[:60], notes)


class Mapped:
    """A generator whose proposals pass through `mapping(document, rng)`; named, told and recorded like the inner one."""

    def __init__(self, inner: Generator, mapping: Callable[[dict, np.random.Generator], dict]):
        self.inner, self.mapping = inner, mapping

    @property
    def name(self) -> str:
        """Returns the inner generator's name (what the journal records beside each proposal)."""
        return self.inner.name

    def __getattr__(self, attribute: str):
        return getattr(self.inner, attribute)  # counts, reflections and the like, for the live view

    def iter_proposals(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> Iterator[dict]:
        """Yields the inner generator's proposals as it makes them, each mapped."""
        for document in getattr(self.inner, "iter_proposals", self.inner.propose)(population, count, rng):
            yield self.mapping(document, rng)

    def propose(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> list[dict]:
        """Returns the proposals `iter_proposals` yields."""
        return list(self.iter_proposals(population, count, rng))

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        """Tells the inner generator."""
        self.inner.tell(evaluated)

    def take_records(self) -> list[GeneratorRecord]:
        """Returns the inner generator's records."""
        return self.inner.take_records()

    def restore(self, records: Sequence[GeneratorRecord]) -> None:
        """Hands the records back to the inner generator."""
        self.inner.restore(records)
