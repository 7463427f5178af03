"""Phases of long work (converting the model, calibration, base references, starting Ray or vLLM, probes),
reported to whoever shows them. Library code calls a `Reporter`; `ui` implements it (live view or plain
lines); nothing here prints.

    with phase(reporter, "collecting calibration statistics", total=210) as step:
        for module in modules:
            ...
            step()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Reporter(Protocol):
    """Receives phase events: a phase starts (with its step count, if it has steps), advances, finishes."""

    def phase_started(self, name: str, total: int | None = None, detail: str = "") -> None: ...

    def phase_advanced(self, steps: int = 1) -> None: ...

    def phase_finished(self, name: str, seconds: float) -> None: ...


class Silent:
    """A Reporter that shows nothing (the default for library calls)."""

    def phase_started(self, name: str, total: int | None = None, detail: str = "") -> None:
        pass

    def phase_advanced(self, steps: int = 1) -> None:
        pass

    def phase_finished(self, name: str, seconds: float) -> None:
        pass


SILENT = Silent()


@contextmanager
def phase(reporter: Reporter | None, name: str, total: int | None = None, detail: str = "") -> Iterator[Callable[[int], None]]:
    """Returns (as a context) a function that advances the phase by n steps; reports start and finish."""
    reporter = reporter or SILENT
    started = time.perf_counter()
    reporter.phase_started(name, total, detail)

    def step(steps: int = 1) -> None:
        reporter.phase_advanced(steps)

    try:
        yield step
    finally:
        reporter.phase_finished(name, time.perf_counter() - started)
