"""What a match is asked to play, and the id its results carry."""

from __future__ import annotations

from dataclasses import dataclass

from agentqat.strategy.document import strategy_id


@dataclass(frozen=True)
class MatchRequest:
    """A strategy document on a stage's window set, with the seed that picks the windows."""

    document: dict
    stage: str
    seed: int
    window_set: int = 0
    calibration_windows: int | None = None  # None: the arena's calibration budget


def request_id(request: MatchRequest) -> str:
    """Returns the id a request's results carry: the strategy's hash, plus the calibration budget if set."""
    base = strategy_id(request.document)
    return base if request.calibration_windows is None else f"{base}-c{request.calibration_windows}"
