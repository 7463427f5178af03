"""A player that records every match result in a run directory and never replays a recorded match.

This is what makes runs resumable: after a crash or kill, the same requests are answered from
`results.jsonl` and only the matches that were in flight are played again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict

from agentqat.arena.request import MatchRequest, request_id
from agentqat.arena.result import MatchResult
from agentqat.rundir.paths import RESULTS_STREAM
from agentqat.rundir.store import RunStore


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

    def __call__(self, requests: Iterable[MatchRequest]) -> list[MatchResult]:
        """Returns the results of `requests` in their order, playing only those not recorded yet. The
        requests are passed on to `run` lazily, as it takes them."""
        keys: list[tuple] = []

        def unrecorded() -> Iterator[MatchRequest]:
            for request in requests:
                keys.append(match_key(request_id(request), request.stage, request.seed, request.window_set))
                if keys[-1] in self.recorded:
                    self.replayed += 1
                else:
                    yield request

        def record(result: MatchResult) -> None:
            self.store.append(RESULTS_STREAM, asdict(result))
            self.recorded[match_key(result.strategy_id, result.stage, result.seed, result.window_set)] = result
            if self.on_result:
                self.on_result(result)

        self.run(unrecorded(), record, self.on_start)
        return [self.recorded[key] for key in keys]
