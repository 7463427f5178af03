"""Staged evaluation (EvoPress-style successive halving): every candidate on the first stage's few tokens,
the best share of survivors on the next stage's more tokens and window sets, and so on. Every stage's
results and leaderboard are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from agentqat.arena.config import Arena, Stage
from agentqat.arena.request import MatchRequest, request_id
from agentqat.arena.result import MatchResult
from agentqat.arena.scoring import Baseline, Ranked, aggregate, leaderboard, promote

Player = Callable[[Iterable[MatchRequest]], list[MatchResult]]


@dataclass(frozen=True)
class StageOutcome:
    """One stage: its leaderboard and the ids promoted to the next stage."""

    stage: str
    rows: tuple[Ranked, ...]
    promoted: tuple[str, ...]


@dataclass(frozen=True)
class TournamentOutcome:
    """Every stage's outcome and every match result, in the order they were played."""

    stages: tuple[StageOutcome, ...]
    results: tuple[MatchResult, ...]

    @property
    def final(self) -> StageOutcome:
        return self.stages[-1]


def baseline_of(results: Sequence[MatchResult]) -> Baseline:
    """Returns the base model's numbers on a stage, read from the stage's successful results.

    All strategies of a stage play the same windows, so any ok result carries the base perplexity of its
    window set; sets have equal window counts, so the pooled base perplexity is their geometric mean.
    """
    by_set = {}
    for result in results:
        if result.quality is not None:
            by_set[(result.seed, result.window_set)] = result.quality
    if not by_set:
        return Baseline(perplexity=1.0)
    qualities = list(by_set.values())
    clozes = [q.base_cloze_accuracy for q in qualities if q.base_cloze_accuracy is not None]
    engine = next((r.cost.engine for r in results if r.cost is not None and r.cost.engine is not None), None)
    return Baseline(
        perplexity=math.exp(sum(math.log(q.base_perplexity) for q in qualities) / len(qualities)),
        cloze_accuracy=sum(clozes) / len(clozes) if clozes else None,
        qa_exact_match=1.0 if any(q.qa_exact_match is not None for q in qualities) else None,
        latency_ms_per_token=None if engine is None else engine.base_decode_ms_per_token,
        memory_bytes=None if engine is None else engine.base_peak_memory_bytes,
    )


def rank_stage(arena: Arena, results: Sequence[MatchResult]) -> list[Ranked]:
    """Returns the leaderboard of one stage's results."""
    by_strategy: dict[str, list[MatchResult]] = {}
    for result in results:
        by_strategy.setdefault(result.strategy_id, []).append(result)
    entries = [(strategy, aggregate(group)) for strategy, group in by_strategy.items()]
    return leaderboard(entries, baseline_of(results), arena.score, arena.bits_budget)


def _stage_requests(
    candidates: Iterable[MatchRequest], stage: Stage, seed: int, entered: dict[str, MatchRequest]
) -> Iterator[MatchRequest]:
    """Yields each new candidate's requests on every window set of `stage`, noting the candidate in `entered`."""
    for candidate in candidates:
        key = request_id(candidate)
        if key in entered:
            continue
        entered[key] = candidate
        for window_set in range(stage.window_sets):
            yield MatchRequest(candidate.document, stage.name, seed, window_set, candidate.calibration_windows)


def play_tournament(
    play: Player,
    arena: Arena,
    requests: Iterable[MatchRequest],
    seed: int,
    stages: Sequence[str] | None = None,
) -> TournamentOutcome:
    """Plays `requests` (one per candidate; their stage is ignored) through the arena's stages in order.

    The first stage takes the requests lazily, so candidates still being proposed overlap with matches."""
    names = list(stages) if stages else [stage.name for stage in arena.stages]
    candidates: Iterable[MatchRequest] = requests
    outcomes, all_results = [], []
    for name in names:
        stage = arena.stage(name)
        entered: dict[str, MatchRequest] = {}
        results = play(_stage_requests(candidates, stage, seed, entered))
        all_results.extend(results)
        rows = rank_stage(arena, results)
        promoted = promote(rows, stage.promote)
        outcomes.append(StageOutcome(name, tuple(rows), tuple(promoted)))
        candidates = [entered[key] for key in promoted]
        if not candidates:
            break
    return TournamentOutcome(tuple(outcomes), tuple(all_results))
