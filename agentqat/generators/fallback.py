"""A generator that falls back on another for the rest of the run when the first fails with a UserError
(an LLM server down after its retries). The switch is recorded (stream "fallbacks"), never silent; the
user asks for it (`agentqat evolve --llm-fallback`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from agentqat.errors import UserError
from agentqat.generators.base import Evaluated, Generator, GeneratorRecord


class WithFallback:
    """`primary` until it raises UserError, then `fallback`; counted like `primary`, named like the active one."""

    def __init__(self, primary: Generator, fallback: Generator):
        self.primary, self.fallback = primary, fallback
        self.active = primary
        self._records: list[GeneratorRecord] = []

    @property
    def name(self) -> str:
        """Returns the active generator's name: while `iter_proposals` is suspended at a proposal, the name of
        the generator that made it (what the journal records beside each proposal)."""
        return self.active.name

    @property
    def counts(self) -> dict | None:
        """Returns the primary's proposal counts (accepted, rejected, repaired, ...) for the live view."""
        return getattr(self.primary, "counts", None)

    def iter_proposals(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> Iterator[dict]:
        """Yields the active generator's proposals; after a failure of the primary, the fallback's."""
        given = 0
        if self.active is self.primary:
            try:
                for document in getattr(self.primary, "iter_proposals", self.primary.propose)(population, count, rng):
                    given += 1
                    yield document
                return
            except UserError as error:
                self.active = self.fallback
                self._records.append(GeneratorRecord("fallbacks", {
                    "from": self.primary.name, "to": self.fallback.name, "reason": str(error), "after_proposals": given,
                }))  # fmt: skip
        yield from self.fallback.propose(population, count - given, rng)

    def propose(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> list[dict]:
        """Returns the proposals `iter_proposals` yields."""
        return list(self.iter_proposals(population, count, rng))

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        """Tells both generators."""
        self.primary.tell(evaluated)
        self.fallback.tell(evaluated)

    def take_records(self) -> list[GeneratorRecord]:
        """Returns the primary's records, then the fallback's and the switch, if any."""
        records = self.primary.take_records() + self.fallback.take_records() + self._records
        self._records = []
        return records

    def restore(self, records: Sequence[GeneratorRecord]) -> None:
        """Hands the records back to both generators; a recorded switch makes the fallback active again."""
        self.primary.restore(records)
        self.fallback.restore(records)
        if any(record.stream == "fallbacks" for record in records):
            self.active = self.fallback
