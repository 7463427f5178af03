"""A player that records every match result in a run directory and never replays a recorded match.

This is what makes runs resumable: after a crash or kill, the same requests are answered from
`results.jsonl` and only the matches that were in flight are played again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from agentqat.arena.request import MatchRequest, request_id
from agentqat.arena.result import MatchResult
from agentqat.store import RunStore

RESULTS_STREAM = "results"


def match_key(strategy: str, stage: str, seed: int, window_set: int) -> tuple:
    """Returns the key that identifies one match."""
    return (strategy, stage, seed, window_set)


class RecordedPlayer:
    """Plays requests through `run` (a pool's run method) and appends each result to the run store."""

    def __init__(
        self,
        run: Callable,
        store: RunStore,
        on_result: Callable[[MatchResult], None] | None = None,
        on_start: Callable[[str, MatchRequest], None] | None = None,
    ):
        self.run = run
        self.store = store
        self.on_result = on_result
        self.on_start = on_start
        self.recorded: dict[tuple, MatchResult] = {}
        for record in store.read(RESULTS_STREAM):
            result = MatchResult.from_dict(record)
            self.recorded[match_key(result.strategy_id, result.stage, result.seed, result.window_set)] = result
        self.replayed = 0

    def __call__(self, requests: list[MatchRequest]) -> list[MatchResult]:
        """Returns the results of `requests`, playing only those not recorded yet."""
        keys = [match_key(request_id(r), r.stage, r.seed, r.window_set) for r in requests]
        missing = [r for r, key in zip(requests, keys) if key not in self.recorded]
        self.replayed += len(requests) - len(missing)

        def record(result: MatchResult) -> None:
            self.store.append(RESULTS_STREAM, asdict(result))
            self.recorded[match_key(result.strategy_id, result.stage, result.seed, result.window_set)] = result
            if self.on_result:
                self.on_result(result)

        if missing:
            self.run(missing, record, self.on_start)
        return [self.recorded[key] for key in keys]
