"""A comparison directory read back: its evolve runs, an optional baseline run and the test re-evaluations.

DIR/runs/<generator>-seed<k>/   evolve runs (agentqat.rundir.journal layout)
DIR/baseline/                   a baseline run (optional)
DIR/test/results.jsonl          re-evaluations of final winners on unseen text (agentqat.study.unseen)
DIR/confirm/results.jsonl       final winners and the shared prior confirmed on a full arena (agentqat.study.confirm)
DIR/engine.jsonl                winners and llama.cpp's stock file measured by llama.cpp (bench/gguf_winners.py)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentqat.arena.config import Arena
from agentqat.arena.result import MatchResult
from agentqat.arena.scoring import Ranked
from agentqat.rundir.journal import read_results, read_run
from agentqat.rundir.paths import BASELINE_DIR, ENGINE_FILE, MANIFEST_FILE, PLAN_FILE, PREPARATION_FILE, PRIOR_FILE
from agentqat.rundir.store import RunStore, read_json_object
from agentqat.study.confirm import read_confirmations
from agentqat.study.unseen import read_test_results, run_directories

PREPARATION_PREFIXES = ("knapsack-probe-",)  # strategies a run played as preparation (runs recorded before it was shared)


def is_preparation(result: MatchResult) -> bool:
    """Returns whether a run's match was preparation, not search: a knapsack unit probe, played inside runs recorded
    before the probes became the comparison's shared preparation (and charged to their budget there)."""
    return result.strategy_name.startswith(PREPARATION_PREFIXES)


@dataclass(frozen=True)
class RunRecord:
    """One evolve run: its arm (generator), seed, arena, every match in the order played, its documents and
    the leaderboard of its last stage."""

    name: str
    arm: str
    generator: str
    seed: int
    arena: Arena
    results: tuple[MatchResult, ...]
    documents: dict[str, dict]
    rows: tuple[Ranked, ...]

    def completions(self, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns, per match in play order: tokens spent, 1 (a match), and the `metric` ("kl" or "perplexity")
        of a surviving strategy on the match that completed its last stage (NaN on every other match)."""
        last = self.arena.stages[-1]
        by_id = {row.strategy_id: row for row in self.rows}
        seen: dict[str, int] = {}
        losses = []
        for result in self.results:
            loss = math.nan
            if result.stage == last.name:
                seen[result.strategy_id] = seen.get(result.strategy_id, 0) + 1
                row = by_id.get(result.strategy_id)
                if row is not None and row.survives and seen[result.strategy_id] == last.window_sets:
                    loss = getattr(row.aggregate, metric)
            losses.append(loss)
        tokens = np.array([result.tokens for result in self.results], float)
        return tokens, np.ones(len(tokens)), np.array(losses, float)

    @property
    def preparation(self) -> tuple[MatchResult, ...]:
        """Returns the matches the run played as preparation (none since preparation is shared)."""
        return tuple(result for result in self.results if is_preparation(result))

    def best(self, metric: str = "kl") -> Ranked | None:
        """Returns the surviving row of the last stage with the lowest `metric`, None when none survived."""
        survivors = [row for row in self.rows if row.survives]
        return min(survivors, key=lambda row: getattr(row.aggregate, metric)) if survivors else None


@dataclass(frozen=True)
class BaselineRecord:
    """A baseline run's leaderboard (uniform methods at some bits) on its one stage."""

    rows: tuple[Ranked, ...]
    bits_budget: float

    def best_within_budget(self, metric: str = "kl") -> Ranked | None:
        """Returns the baseline with the lowest `metric` among those within the bits budget, None if none is."""
        fitting = [row for row in self.rows if row.survives]
        return min(fitting, key=lambda row: getattr(row.aggregate, metric)) if fitting else None


@dataclass(frozen=True)
class ComparisonRecords:
    """Everything a report is built from."""

    directory: Path
    runs: tuple[RunRecord, ...]
    baseline: BaselineRecord | None
    tests: tuple[MatchResult, ...]
    confirms: tuple[MatchResult, ...] = ()
    prior: dict | None = None  # DIR/prior.json: a prior made for the comparison (--prior uniform+knapsack)
    preparation: dict | None = None  # DIR/preparation.json: what was measured once before the runs, charged to no arm
    plan: str | None = None  # DIR/PLAN.md: the pre-registration (agentqat.study.plan)
    engine: tuple[dict, ...] = ()  # DIR/engine.jsonl: one record per (run or stock file, text) measured by llama.cpp

    @property
    def arms(self) -> list[str]:
        """Returns the arms in a stable order: llm first, then the others alphabetically."""
        names = sorted({run.arm for run in self.runs})
        return sorted(names, key=lambda name: (name != "llm", name))

    def of_arm(self, arm: str) -> list[RunRecord]:
        """Returns the arm's runs, by seed."""
        return sorted((run for run in self.runs if run.arm == arm), key=lambda run: run.seed)


def arm_of(run_name: str, settings: dict) -> str:
    """Returns a run's arm: its directory name less "-seed<k>" (so ablations of one generator are arms of their
    own), or its generator for a directory named otherwise."""
    arm, _, seed = run_name.rpartition("-seed")
    return arm if arm and seed.isdigit() else settings["generator"]


def read_run_record(path: Path) -> RunRecord:
    """Returns the evolve run in `path` (its last-stage leaderboard empty when no strategy reached it yet)."""
    view = read_run(path)
    settings = view.manifest["settings"]
    arena = Arena.model_validate(view.manifest["arena"])
    rows = view.stages.get(arena.stages[-1].name, [])
    return RunRecord(
        name=path.name, arm=arm_of(path.name, settings), generator=settings["generator"], seed=settings["seed"], arena=arena,
        results=tuple(read_results(RunStore.open(path))), documents=view.documents, rows=tuple(rows),
    )  # fmt: skip


def read_comparison(directory: Path) -> ComparisonRecords:
    """Returns the records of the comparison in `directory` (UserError when it holds no runs)."""
    directory = Path(directory)
    runs = tuple(read_run_record(path) for path in run_directories(directory))
    baseline = None
    if (directory / BASELINE_DIR / MANIFEST_FILE).is_file():
        view = read_run(directory / BASELINE_DIR)
        rows = next(iter(view.stages.values()), [])
        baseline = BaselineRecord(tuple(rows), Arena.model_validate(view.manifest["arena"]).bits_budget)
    prior = read_json_object(directory / PRIOR_FILE) if (directory / PRIOR_FILE).is_file() else None
    preparation = read_json_object(directory / PREPARATION_FILE) if (directory / PREPARATION_FILE).is_file() else None
    plan = (directory / PLAN_FILE).read_text(encoding="utf-8") if (directory / PLAN_FILE).is_file() else None
    engine = directory / ENGINE_FILE
    measured = tuple(json.loads(line) for line in engine.read_text().splitlines() if line.strip()) if engine.is_file() else ()
    return ComparisonRecords(directory, runs, baseline, tuple(read_test_results(directory)), tuple(read_confirmations(directory)),
                             prior, preparation, plan, measured)  # fmt: skip
