"""Phases of long work (converting the model, calibration, base references, starting Ray or vLLM, probes),
reported to whoever shows them. Library code calls a `Reporter`; `ui` implements it (live view or plain
lines); nothing here prints. Work in another process (a Ray actor) reports into a `PhaseLog` there, whose
events the driver polls and replays through a `PhaseMirror`.

    with phase(reporter, "collecting calibration statistics", total=210) as step:
        for module in modules:
            ...
            step()
"""

from __future__ import annotations

import threading
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


class PhaseLog:
    """A Reporter that keeps its events (thread-safe) for a process whose phases another one shows: a Ray actor
    reports into it, the driver polls `drain()` and replays the events through a `PhaseMirror`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple] = []

    def phase_started(self, name: str, total: int | None = None, detail: str = "") -> None:
        self._add(("start", name, total, detail))

    def phase_advanced(self, steps: int = 1) -> None:
        self._add(("step", steps))

    def phase_finished(self, name: str, seconds: float) -> None:
        self._add(("end", name, seconds))

    def _add(self, event: tuple) -> None:
        with self._lock:
            self._events.append(event)

    def drain(self) -> list[tuple]:
        """Returns the events since the last call: ("start", name, total, detail), ("step", n), ("end", name,
        seconds)."""
        with self._lock:
            events, self._events = self._events, []
        return events


class PhaseMirror:
    """Replays the phase events of other processes (drained from their PhaseLogs) on one reporter, one
    source's phase at a time: another source's events are left out while one source's phase is open."""

    def __init__(self, reporter: Reporter | None) -> None:
        self.reporter = reporter or SILENT
        self.source: object = None  # whose phase is open (e.g. a worker); None when none is
        self._open: tuple[str, float] | None = None  # its name and when it started here

    def show(self, source: object, events: list[tuple], label: str = "") -> None:
        """Replays `source`'s events, the detail of each phase it starts prefixed with `label`."""
        for kind, *fields in events:
            if kind == "start" and self.source is None:
                name, total, detail = fields
                detail = f"{label}: {detail}" if label and detail else label or detail
                self.reporter.phase_started(name, total, detail)
                self.source, self._open = source, (name, time.perf_counter())
            elif source == self.source and kind == "step":
                self.reporter.phase_advanced(fields[0])
            elif source == self.source and kind == "end":
                self.reporter.phase_finished(fields[0], fields[1])
                self.source, self._open = None, None

    def finish(self) -> None:
        """Ends the open phase, if any (its source stopped reporting)."""
        if self._open is not None:
            name, started = self._open
            self.reporter.phase_finished(name, time.perf_counter() - started)
        self.source, self._open = None, None
