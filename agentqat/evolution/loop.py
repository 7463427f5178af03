"""The evolution loop: generations of propose, evaluate (staged), survive. Ask/tell, no I/O of its own.

One generation g:

    proposals   the journal's recorded proposals when g finished before (a resumed run); else, in generation 0
                of a run with a shared `prior`, the prior's documents (the same for every generator, recorded as
                proposed by "prior"; the generator is not asked); else the generator's, asked with the random
                generator default_rng([seed, g]) for `population` documents (fewer when the budget cannot pay
                for each: see "budget" below); duplicates of earlier proposals by `identity` (the canonical hash,
                `agentqat.strategy.canonical`) are dropped and asked for again; each is recorded and sent to the arena as
                soon as the generator yields it
    evaluate    the arena's stages in order (successive halving, `play_tournament`), every match through
                `play`, which answers recorded matches from the run (so a resumed run replays to where it was)
    tell        the generator learns every proposal's fate: its row on the last stage it reached, failures
                and eliminations included (negative results are told and recorded, not hidden); what it
                noted is recorded once the generation is, and a replayed generation's notes are restored
                to it first
    survive     the population is the best `population` survivors of the last stage's leaderboard over every
                generation so far (elitism: a strategy leaves only when better ones arrive); while nothing has
                survived, the `population` collapsed strategies of lowest KL instead (a collapse is measured, just
                too far from the base model: as EvoPress selects on fitness alone, search can climb out of a
                region where every start collapses; crashes, NaN and overflow never become parents)

Budget: a run counts matches and evaluated tokens (per match, the stage's windows x the arena's window tokens;
a stage plays each candidate once per window set), those spent before the loop included (`prior_cost`: e.g. the
knapsack's measurements in runs recorded before they became shared preparation, charged to no run). A generation takes only as many proposals as the match and token budgets can pay for
in the worst case (every candidate promoted as far as the stages' shares allow), so the last generation is cut
to fit and no budget is overrun.

The run stops after `generations`, or before a generation when the match, token or time budget is spent,
when the best score has not improved for `patience` generations, when the generator has nothing new to offer,
or (`stop_when_clear`) when the survival boundary is clear: the population is full and the leader's KL 95%
interval lies entirely below every other member's (on a last stage with window sets for intervals).

Everything the loop decides depends on the seed and the recorded results only (the time budget aside), so a
killed run resumed from its journal ends with the same leaderboard as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from agentqat import defaults
from agentqat.arena.config import Arena
from agentqat.arena.request import MatchRequest
from agentqat.arena.result import MatchResult
from agentqat.arena.scoring import Ranked
from agentqat.arena.tournament import Player, play_tournament, rank_stage
from agentqat.generators.base import Cost, Evaluated, Generator, GeneratorRecord, ranked_parents
from agentqat.strategy.document import strategy_id

PRIOR = "prior"  # the generator name the journal records for the shared prior's documents
ASKS_PER_GENERATION = 3  # how often the generator is asked again for proposals that were all evaluated before
IMPROVEMENT = 1e-9


@dataclass(frozen=True)
class EvolveSettings:
    """How a run searches: the generator, its seed, the population (also the proposals per generation) and
    the stopping rules."""

    generator: str
    seed: int = defaults.SEED
    population: int = defaults.POPULATION
    generations: int = defaults.GENERATIONS
    patience: int = defaults.PATIENCE
    match_budget: int | None = None
    token_budget: int | None = None
    time_budget_s: float | None = None
    stop_when_clear: bool = True  # off for comparisons at an equal budget

    def __post_init__(self) -> None:
        for name in ("population", "generations", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("match_budget", "token_budget"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"the time budget must be positive, got {self.time_budget_s}")


@dataclass(frozen=True)
class GenerationSummary:
    """What one generation did: its proposals' fates, the population after it, the run's totals so far."""

    generation: int
    proposed: int
    promoted: int  # proposals that reached the last stage
    survivors: int  # proposals that survived the last stage
    failures: dict[str, int]  # outcome -> proposals that failed with it (on any stage)
    best_id: str | None
    best_name: str | None
    best_score: float | None
    improved: bool
    population: tuple[str, ...]
    matches: int  # matches in the run so far (replayed ones included)
    elapsed_s: float  # seconds of the run so far (earlier sessions included)
    tokens: int = 0  # evaluated tokens in the run so far (replayed ones included)


@dataclass(frozen=True)
class EvolveOutcome:
    """The run's end: the last stage's leaderboard over every generation, the population and why it stopped."""

    rows: tuple[Ranked, ...]
    population: tuple[Evaluated, ...]
    generations: tuple[GenerationSummary, ...]
    stop_reason: str
    matches: int
    stop_rule: str = ""  # the EvolveSettings field whose rule stopped the run ("" when the generator ran dry)
    tokens: int = 0


class Journal(Protocol):
    """The run record as the loop sees it (agentqat.rundir.journal.EvolveRun writes it to the run directory)."""

    elapsed_before: float  # seconds spent in earlier sessions of this run

    def proposals(self, generation: int) -> list[dict] | None:
        """Returns the proposals of a generation that finished in an earlier session, else None."""
        ...

    def record_proposal(self, generation: int, index: int, generator: str, document: dict) -> None: ...

    def record_generation(self, summary: GenerationSummary) -> None: ...

    def record_generator(self, generation: int, records: Sequence[GeneratorRecord]) -> None: ...

    def generator_records(self, generation: int) -> list[GeneratorRecord]:
        """Returns what the generator noted in a generation that finished in an earlier session."""
        ...

    def record_end(self, outcome: EvolveOutcome) -> None: ...


class Observer(Protocol):
    """What a live view hears from the loop (match-level events come from the player)."""

    def generation_started(self, generation: int, proposals: int) -> None: ...

    def generation_finished(self, summary: GenerationSummary, rows: Sequence[Ranked]) -> None: ...


@dataclass
class _State:
    """What the loop knows between generations."""

    documents: dict[str, dict] = field(default_factory=dict)  # every evaluated strategy id -> document
    seen: set[str] = field(default_factory=set)  # the identities of every proposal so far
    final_results: list[MatchResult] = field(default_factory=list)
    rows: list[Ranked] = field(default_factory=list)
    population: list[Evaluated] = field(default_factory=list)
    summaries: list[GenerationSummary] = field(default_factory=list)
    collapsed: list[Evaluated] = field(default_factory=list)  # every collapse so far, the parents while none survives
    best_score: float = -math.inf
    stale: int = 0
    matches: int = 0
    tokens: int = 0


def _fresh_proposals(
    generator: Generator,
    population: Sequence[Evaluated],
    count: int,
    rng: np.random.Generator,
    seen: set[str],
    identity: Callable[[dict], str],
) -> Iterator[dict]:
    """Yields up to `count` proposals whose identities are not in `seen` (which it extends), asking the
    generator a few times.

    Generators that decode slowly (the LLM) offer `iter_proposals`, which yields each proposal when it is
    ready: its first proposals are then played while it decodes the next ones."""
    given = 0
    for _ in range(ASKS_PER_GENERATION):
        stream = getattr(generator, "iter_proposals", generator.propose)(population, count - given, rng)
        for document in stream:
            if identity(document) not in seen:
                seen.add(identity(document))
                given += 1
                yield document
            if given == count:
                return


def _distinct(documents: Sequence[dict], seen: set[str], identity: Callable[[dict], str]) -> Iterator[dict]:
    """Yields the documents whose identities are not in `seen` nor earlier in `documents`."""
    given: set[str] = set()
    for document in documents:
        if identity(document) not in seen and identity(document) not in given:
            given.add(identity(document))
            yield document


def _fates(documents: Sequence[dict], stage_rows: Sequence[Sequence[Ranked]]) -> list[Evaluated]:
    """Returns each document's fate: its row on the last stage it was played on."""
    last_row: dict[str, Ranked] = {}
    for rows in stage_rows:
        last_row.update({row.strategy_id: row for row in rows})
    return [Evaluated.from_ranked(d, last_row[strategy_id(d)]) for d in documents if strategy_id(d) in last_row]


def _failures(fates: Sequence[Evaluated]) -> dict[str, int]:
    """Returns how many fates failed, by outcome (over budget counted as such)."""
    counts = Counter(f.outcome for f in fates if f.outcome != "ok")
    counts.update("over budget" for f in fates if f.outcome == "ok" and not f.survives)
    return dict(sorted(counts.items()))


def clear_winner(population: Sequence[Evaluated], rows: Sequence[Ranked], size: int) -> bool:
    """Returns whether the population is full (`size`, at least 2) and the leader's KL interval lies entirely
    below every other member's."""
    if len(population) < max(size, 2):
        return False
    by_id = {row.strategy_id: row.aggregate for row in rows}
    intervals = [by_id[strategy_id(member.document)].kl_ci for member in population]
    if any(interval is None for interval in intervals):
        return False
    return all(intervals[0][1] < other[0] for other in intervals[1:])


def match_tokens(arena: Arena, stage: str) -> int:
    """Returns the tokens one match on `stage` evaluates: its windows x the arena's window tokens."""
    return arena.stage(stage).windows * arena.window_tokens


def tournament_cost(arena: Arena, candidates: int) -> Cost:
    """Returns the most a tournament of `candidates` can cost: each stage plays every candidate it takes on each
    of its window sets and promotes at most ceil(share x candidates) (as `scoring.promote` rounds)."""
    matches = tokens = 0
    for stage in arena.stages:
        if candidates < 1:
            break
        matches += candidates * stage.window_sets
        tokens += candidates * stage.window_sets * match_tokens(arena, stage.name)
        candidates = math.ceil(round(stage.promote * candidates, 9))
    return Cost(matches, tokens)


def _offspring_count(arena: Arena, settings: EvolveSettings, spent: Cost, wanted: int) -> int:
    """Returns how many of `wanted` proposals the generation may evaluate: the most whose worst-case tournament
    fits what is left of the match and token budgets."""
    for count in range(wanted, 0, -1):
        cost = tournament_cost(arena, count)
        if (settings.match_budget is None or spent.matches + cost.matches <= settings.match_budget) and (
            settings.token_budget is None or spent.tokens + cost.tokens <= settings.token_budget
        ):
            return count
    return 0


def _stop_reason(arena: Arena, settings: EvolveSettings, state: _State, elapsed: float) -> tuple[str, str] | None:
    """Returns the settings field whose rule stops the run before the next generation and why, or None."""
    if len(state.summaries) >= settings.generations:
        return "generations", f"{settings.generations} generations done"
    spent = Cost(state.matches, state.tokens)
    if settings.match_budget is not None and _offspring_count(arena, replace(settings, token_budget=None), spent, 1) < 1:
        return "match_budget", f"match budget of {settings.match_budget} spent ({state.matches} played)"
    if settings.token_budget is not None and _offspring_count(arena, replace(settings, match_budget=None), spent, 1) < 1:
        return "token_budget", f"token budget of {settings.token_budget:,} spent ({state.tokens:,} evaluated)"
    if settings.time_budget_s is not None and elapsed >= settings.time_budget_s:
        return "time_budget_s", f"time budget of {settings.time_budget_s:.0f} s spent"
    if state.stale >= settings.patience:
        return "patience", f"no improvement for {settings.patience} generations"
    if settings.stop_when_clear and clear_winner(state.population, state.rows, settings.population):
        return "stop_when_clear", "clear winner: its KL interval lies below every other survivor's"
    return None


def evolve(
    generator: Generator,
    arena: Arena,
    play: Player,
    settings: EvolveSettings,
    journal: Journal,
    observer: Observer | None = None,
    clock: Callable[[], float] = time.monotonic,
    prior_cost: Cost = Cost(),
    identity: Callable[[dict], str] = strategy_id,
    prior: Sequence[dict] = (),
) -> EvolveOutcome:
    """Returns the run's outcome after generations of propose, evaluate, survive (see the module docstring).

    `prior_cost`: what the run spent before the loop (e.g. an "in-run" knapsack's measurements), counted against the
    budgets. `identity`: the canonical hash that finds duplicate proposals (`canonical_id` for one model). `prior`:
    the shared seed strategies, played as generation 0."""
    started = clock()
    state = _State(matches=prior_cost.matches, tokens=prior_cost.tokens)
    final_stage = arena.stages[-1].name
    stop = None
    while (stop := _stop_reason(arena, settings, state, journal.elapsed_before + clock() - started)) is None:
        generation = len(state.summaries)
        recorded = journal.proposals(generation)
        seeded = list(prior) if generation == 0 and recorded is None else []
        spent = Cost(state.matches, state.tokens)
        count = len(recorded) if recorded is not None else _offspring_count(arena, settings, spent, len(seeded) or settings.population)
        documents: list[dict] = []

        def proposals() -> Iterator[MatchRequest]:
            if recorded is not None:
                source: Iterable[dict] = recorded
            elif seeded:
                source = _distinct(seeded[:count], state.seen, identity)
            else:
                rng = np.random.default_rng([settings.seed, generation])
                source = _fresh_proposals(generator, state.population, count, rng, state.seen, identity)
            for document in source:
                state.seen.add(identity(document))
                if recorded is None:
                    journal.record_proposal(generation, len(documents), PRIOR if seeded else generator.name, document)
                documents.append(document)
                yield MatchRequest(document, arena.stages[0].name, arena.seed)

        if observer:
            observer.generation_started(generation, count)
        outcome = play_tournament(play, arena, proposals(), arena.seed)
        if not documents:
            noted = generator.take_records()  # e.g. the rejected replies, recorded once: a resumed run that ended
            if not journal.generator_records(generation):  # here proposes this generation again, to the same end
                journal.record_generator(generation, noted)
            stop = ("", "the generator proposed nothing new")
            break
        state.documents.update({strategy_id(d): d for d in documents})
        state.matches += len(outcome.results)
        state.tokens += sum(match_tokens(arena, result.stage) for result in outcome.results)
        fates = _fates(documents, [stage.rows for stage in outcome.stages])
        if recorded is not None:
            generator.restore(journal.generator_records(generation))
        generator.tell(fates)
        noted = generator.take_records()  # a replayed generation's records are in the journal already
        state.final_results.extend(r for r in outcome.results if r.stage == final_stage)
        state.rows = rank_stage(arena, state.final_results) if state.final_results else []
        state.collapsed.extend(fate for fate in fates if fate.outcome == "collapse" and fate.kl is not None and math.isfinite(fate.kl))
        state.population = [
            Evaluated.from_ranked(state.documents[row.strategy_id], row) for row in state.rows if row.survives
        ][: settings.population] or ranked_parents(state.collapsed)[: settings.population]
        best = state.rows[0] if state.rows and state.rows[0].survives else None
        improved = best is not None and best.score > state.best_score + IMPROVEMENT
        state.best_score = best.score if improved else state.best_score
        state.stale = 0 if improved else state.stale + 1
        final_ids = {row.strategy_id for row in outcome.final.rows} if outcome.final.stage == final_stage else set()
        summary = GenerationSummary(
            generation=generation,
            proposed=len(documents),
            promoted=sum(strategy_id(d) in final_ids for d in documents),
            survivors=sum(f.survives and strategy_id(f.document) in final_ids for f in fates),
            failures=_failures(fates),
            best_id=best.strategy_id if best else None,
            best_name=best.aggregate.strategy_name if best else None,
            best_score=best.score if best else None,
            improved=improved,
            population=tuple(strategy_id(member.document) for member in state.population),
            matches=state.matches,
            elapsed_s=journal.elapsed_before + clock() - started,
            tokens=state.tokens,
        )
        state.summaries.append(summary)
        journal.record_generation(summary)
        if recorded is None:  # after the generation is in: a killed generation is proposed again, noted again
            journal.record_generator(generation, noted)
        if observer:
            observer.generation_finished(summary, state.rows)
    rule, reason = stop
    result = EvolveOutcome(
        tuple(state.rows), tuple(state.population), tuple(state.summaries), reason, state.matches, rule, state.tokens
    )
    journal.record_end(result)
    return result
