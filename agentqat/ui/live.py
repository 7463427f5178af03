"""What moves on the terminal while work runs: phases of the start (progress.Reporter), match progress, and the
live view of `agentqat evolve`. Plain lines when stdout is not a terminal."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

from rich.table import Table

from agentqat.ui.tables import _duration, _front_text, _number, console

PHASE_PLAIN_STEPS = 10  # a piped phase with steps prints a line at each tenth of them


class PhaseView:
    """progress.Reporter for phases of long work (converting the model, calibration, base references, starting
    Ray or vLLM, probes). Live (`live=True`): a live view renders `text()`. Plain: a line on stderr when a phase
    starts, at each tenth of its steps and when it ends, so stdout keeps only results."""

    def __init__(self, live: bool = False, clock=time.monotonic):
        self.live, self.clock = live, clock
        self.lock = threading.Lock()
        self.active: list[list] = []  # [name, total, done, detail, since], innermost last

    def _say(self, line: str) -> None:
        if not self.live:
            print(line, file=sys.stderr, flush=True)

    def phase_started(self, name: str, total: int | None = None, detail: str = "") -> None:
        """Shows a phase that starts (with its step count, if any)."""
        with self.lock:
            self.active.append([name, total, 0, detail, self.clock()])
        self._say(f"{name}{f' ({detail})' if detail else ''}{f': {total} steps' if total else ''} ...")

    def phase_advanced(self, steps: int = 1) -> None:
        """Advances the innermost phase."""
        with self.lock:
            if not self.active:
                return
            entry = self.active[-1]
            name, total, before = entry[0], entry[1], entry[2]
            entry[2] += steps
        if total and before * PHASE_PLAIN_STEPS // total != entry[2] * PHASE_PLAIN_STEPS // total:
            self._say(f"  {name}: {entry[2]}/{total}")

    def phase_finished(self, name: str, seconds: float) -> None:
        """Shows that a phase ended (finished, or stopped by an error that the command reports), with its duration."""
        with self.lock:
            self.active = [entry for entry in self.active if entry[0] != name]
        self._say(f"{name}: ended after {seconds:.1f} s")

    def text(self) -> str:
        """Returns the running phases as one line ("" when none runs)."""
        with self.lock:
            now = self.clock()
            return " › ".join(
                name + (f" {done}/{total}" if total else "") + (f" ({detail})" if detail else "") + f" {now - since:.0f} s"
                for name, total, done, detail, since in self.active
            )


class MatchProgress:
    """A live progress bar of matches with failure counts; plain lines when stdout is not a terminal."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total = total
        self.failures: Counter = Counter()
        self.progress = Progress(
            TextColumn("matches"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"), console=console, transient=False,
        )
        self.task = self.progress.add_task("matches", total=total, status="")

    def __enter__(self) -> "MatchProgress":
        if console.is_terminal:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if console.is_terminal:
            self.progress.stop()

    def update(self, result) -> None:
        """Counts one finished match and shows it."""
        if result.failed:
            self.failures[result.outcome] += 1
        status = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "no failures"
        self.progress.update(self.task, advance=1, status=status)
        if not console.is_terminal:
            quality = result.quality
            detail = f"ppl {quality.perplexity:.2f} KL {quality.kl:.4f}" if quality else result.message[:80]
            print(f"match {result.strategy_name} {result.stage}/set{result.window_set}: {result.outcome} {detail} ({result.seconds:.1f} s)", flush=True)


class EvolveView:
    """The live view of `agentqat evolve`: generation progress, workers, leaderboard, Pareto front, failures,
    matches per hour and, for the LLM generator, proposals accepted and rejected. Plain lines when stdout is
    not a terminal. Event handlers only update state under a lock; rich redraws from its own thread at
    REFRESH_PER_SECOND, so the view never waits on the loop nor the loop on the view."""

    REFRESH_PER_SECOND = 2
    LEADERBOARD_ROWS = 8

    def __init__(self, run: str, generator_name: str, generations: int, match_budget: int | None, clock=None):
        self.run, self.generator_name, self.generations, self.match_budget = run, generator_name, generations, match_budget
        self.generator = None  # set once made: the LLM generator's accepted and rejected counts are shown
        self.clock = clock or time.monotonic
        self.phases = PhaseView(live=console.is_terminal, clock=self.clock)
        self.started = self.clock()
        self.lock = threading.Lock()
        self.generation, self.proposals, self.played, self.done_in_generation = -1, 0, 0, 0
        self.matches_before = 0  # matches of generations finished before (replayed or played)
        self.workers: dict[str, tuple[str, str, float]] = {}  # worker -> (strategy, stage/set, since)
        self.rows: list = []
        self.failures: Counter = Counter()
        self.last_summary = None
        self.live = None

    def __enter__(self) -> "EvolveView":
        if console.is_terminal:
            from rich.live import Live

            self.live = Live(get_renderable=self._render, console=console, refresh_per_second=self.REFRESH_PER_SECOND)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.stop()

    # --- events (from the loop's thread) ---------------------------------------------------------------------

    def phase_started(self, name: str, total: int | None = None, detail: str = "") -> None:
        """Shows a phase of the start (progress.Reporter)."""
        self.phases.phase_started(name, total, detail)

    def phase_advanced(self, steps: int = 1) -> None:
        """Advances the running phase (progress.Reporter)."""
        self.phases.phase_advanced(steps)

    def phase_finished(self, name: str, seconds: float) -> None:
        """Ends a phase (progress.Reporter)."""
        self.phases.phase_finished(name, seconds)

    def generator_ready(self, generator, prior_matches: int) -> None:
        """Takes the generator (its accepted and rejected counts are shown) and the matches spent making it."""
        with self.lock:
            self.generator, self.matches_before = generator, prior_matches

    def match_started(self, worker: str, request) -> None:
        """Notes that a worker took a match."""
        with self.lock:
            name = request.document.get("name", "unnamed") if isinstance(request.document, dict) else "invalid"
            self.workers[worker] = (str(name), f"{request.stage}/set{request.window_set}", self.clock())

    def match_finished(self, result) -> None:
        """Counts a played match; frees its worker."""
        with self.lock:
            self.played += 1
            self.done_in_generation += 1
            if result.failed:
                self.failures[result.outcome] += 1
            self.workers[result.worker or "local"] = ("idle", "", self.clock())
        if not self.live:
            quality = result.quality
            detail = f"ppl {quality.perplexity:.2f} KL {quality.kl:.4f}" if quality else result.message[:100]
            print(f"  match {result.strategy_name} {result.stage}/set{result.window_set}: {result.outcome} {detail} ({result.seconds:.1f} s)", flush=True)

    def generation_started(self, generation: int, proposals: int) -> None:
        """Shows a new generation with its number of proposals."""
        with self.lock:
            self.generation, self.proposals, self.done_in_generation = generation, proposals, 0
        if not self.live:
            print(f"generation {generation + 1}/{self.generations}: {proposals} proposals", flush=True)

    def generation_finished(self, summary, rows) -> None:
        """Takes the leaderboard and totals after a generation."""
        with self.lock:
            self.rows, self.last_summary, self.matches_before = list(rows), summary, summary.matches
        if not self.live:
            best = f"best {summary.best_name} score {summary.best_score:.4f}" if summary.best_name else "no survivor yet"
            failures = ", ".join(f"{k} {v}" for k, v in summary.failures.items()) or "none"
            print(
                f"generation {summary.generation + 1} done: {summary.promoted}/{summary.proposed} reached the last stage, "
                f"{summary.survivors} survived; failures {failures}; {best}{' (improved)' if summary.improved else ''}; "
                f"{summary.matches} matches, {_duration(summary.elapsed_s)}",
                flush=True,
            )

    # --- rendering (from rich's refresh thread) --------------------------------------------------------------

    def _header(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.played / elapsed * 3600 if elapsed > 0 else 0.0
        budget = f" of {self.match_budget}" if self.match_budget else ""
        matches = self.matches_before + self.done_in_generation
        parts = [
            f"[bold]evolve[/bold] {self.run}",
            f"generator {self.generator_name}",
            f"generation {self.generation + 1}/{self.generations} ({self.done_in_generation} matches of {self.proposals} proposals)"
            if self.generation >= 0 else f"before generation 1: {self.done_in_generation} matches (sensitivity probes, replays)",
            f"matches {matches}{budget}",
            f"{rate:.0f} matches/h",
            _duration(elapsed),
        ]
        counts = getattr(self.generator, "counts", None)
        if counts:
            parts.append(f"LLM proposals accepted {counts['accepted']:.0f}, rejected {counts['rejected']:.0f}, repaired {counts['repaired']:.0f}")
        return " · ".join(parts)

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        with self.lock:
            workers = Table("worker", "playing", "match", "for", title="workers", title_justify="left")
            now = self.clock()
            for name, (strategy, match, since) in sorted(self.workers.items()):
                workers.add_row(name, strategy, match, f"{now - since:.0f} s")
            board = Table("#", "strategy", "bits/w", "ppl", "KL", "score", "front", title="leaderboard (last stage)", title_justify="left")
            for row in self.rows[: self.LEADERBOARD_ROWS]:
                agg = row.aggregate
                board.add_row(
                    str(row.rank), agg.strategy_name, _number(agg.bits_per_weight, 3), _number(agg.perplexity, 2),
                    _number(agg.kl, 4), "-" if row.score == float("-inf") else f"{row.score:.4f}",
                    "-" if row.pareto_rank is None else str(row.pareto_rank),
                )  # fmt: skip
            failures = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
            phases = self.phases.text()
            return Group(
                Text.from_markup(self._header()),
                *([Text(f"now: {phases}", style="yellow")] if phases else []),
                workers,
                board,
                Text(f"Pareto front (bits, KL): {_front_text(self.rows)}"),
                Text(f"failed matches: {failures}"),
            )
