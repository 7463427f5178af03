"""The numbers of a report, computed from a comparison's records with agentqat.study.stats.

Per arm: best-so-far curves of KL and perplexity against tokens and matches on a common grid, each run's area
under its KL curve (up to the smallest budget any run spent, so every run is judged on an equal budget), the
tokens each run needed to reach the best uniform baseline within the bits budget, and the final best KL,
perplexity and test KL with seeded bootstrap intervals. Between arms: the reference arm (llm when present)
against each other arm on each of those per-run numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agentqat.generators import uses_seed
from agentqat.report.records import ComparisonRecords, RunRecord
from agentqat.study.stats import (
    Comparison,
    Interval,
    area_under_curve,
    best_so_far,
    bootstrap_interval,
    budget_to_reach,
    compare_arms,
    compare_with_value,
    on_grid,
)

GRID_POINTS = 200
BUDGETS = ("tokens", "matches")
METRICS = ("kl", "perplexity")


@dataclass(frozen=True)
class Curves:
    """Best-so-far curves of one arm on one metric and budget: one row per run (seed), on `grid`."""

    grid: np.ndarray
    runs: np.ndarray  # (runs, grid points), inf before a run's first survivor


def curve_of(run: RunRecord, metric: str, budget: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (budget spent, best-so-far `metric`) of a run after each match, `budget` "tokens" or "matches"."""
    tokens, matches, losses = run.completions(metric)
    return best_so_far(tokens if budget == "tokens" else matches, losses)


def curves(records: ComparisonRecords, arm: str, metric: str, budget: str, grid: np.ndarray) -> Curves:
    """Returns the arm's best-so-far curves on `grid`."""
    rows = [on_grid(*curve_of(run, metric, budget), grid) for run in records.of_arm(arm)]
    return Curves(grid, np.array(rows))


def common_grid(records: ComparisonRecords, budget: str, upto: str = "max") -> np.ndarray:
    """Returns GRID_POINTS budgets from 0 to the largest (`upto` "max") or smallest ("min") total any run spent."""
    totals = [curve_of(run, "kl", budget)[0][-1] if run.results else 0.0 for run in records.runs]
    end = max(totals) if upto == "max" else min(totals)
    return np.linspace(0.0, max(end, 1.0), GRID_POINTS)


def final_value(run: RunRecord, metric: str) -> float:
    """Returns the run's final best `metric` among last-stage survivors (inf when none survived)."""
    best = run.best(metric)
    return getattr(best.aggregate, metric) if best else math.inf


def winner_values(results, records: ComparisonRecords, arm: str, metric: str, stage: str | None = None) -> list[float]:
    """Returns the `metric` of each of the arm's runs' rank-1 winner among re-played `results` (on `stage` when
    given; runs without one left out; inf for a failed one)."""
    values = []
    for run in records.of_arm(arm):
        for result in results:
            if result.extra.get("run") == run.name and stage in (None, result.stage) and result.extra.get("rank") == 1:
                values.append(getattr(result.quality, metric) if result.quality and not result.failed else math.inf)
    return values


def test_values(records: ComparisonRecords, arm: str, metric: str, stage: str = "test") -> list[float]:
    """Returns the `metric` on unseen text of each run's rank-1 winner of the arm (runs without one left out)."""
    return winner_values(records.tests, records, arm, metric, stage)


test_values.__test__ = False  # not a pytest test


@dataclass(frozen=True)
class ArmSummary:
    """One arm's per-run numbers and their intervals."""

    arm: str
    seeds: tuple[int, ...]
    values: dict[str, list[float]]  # quantity -> one value per run
    intervals: dict[str, Interval | None]  # bootstrap interval of the mean over runs (finite values only)


QUANTITIES = ("final KL", "final perplexity", "KL AUC (tokens)", "tokens to baseline KL", "test KL", "test perplexity",
              "full-arena KL", "full-arena perplexity")  # fmt: skip


def arm_values(records: ComparisonRecords, arm: str) -> dict[str, list[float]]:
    """Returns each quantity of QUANTITIES per run of the arm (inf: never reached; empty: not measured)."""
    grid = common_grid(records, "tokens", upto="min")
    target = records.baseline.best_within_budget("kl") if records.baseline else None
    runs = records.of_arm(arm)
    return {
        "final KL": [final_value(run, "kl") for run in runs],
        "final perplexity": [final_value(run, "perplexity") for run in runs],
        "KL AUC (tokens)": [area_under_curve(grid, row) for row in curves(records, arm, "kl", "tokens", grid).runs],
        "tokens to baseline KL": [budget_to_reach(*curve_of(run, "kl", "tokens"), target.aggregate.kl) for run in runs] if target else [],
        "test KL": test_values(records, arm, "kl"),
        "test perplexity": test_values(records, arm, "perplexity"),
        "full-arena KL": winner_values(records.confirms, records, arm, "kl"),
        "full-arena perplexity": winner_values(records.confirms, records, arm, "perplexity"),
    }


def summarize(records: ComparisonRecords, seed: int = 0) -> list[ArmSummary]:
    """Returns every arm's summary; bootstrap intervals drawn from a Generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    summaries = []
    for arm in records.arms:
        values = arm_values(records, arm)
        intervals = {}
        for quantity, numbers in values.items():
            finite = [v for v in numbers if math.isfinite(v)]
            intervals[quantity] = bootstrap_interval(finite, rng) if finite else None
        summaries.append(ArmSummary(arm, tuple(run.seed for run in records.of_arm(arm)), values, intervals))
    return summaries


def reference_arm(records: ComparisonRecords) -> str:
    """Returns the arm every other is compared with: llm when present, else the first arm."""
    return records.arms[0]


def comparisons(records: ComparisonRecords, summaries: list[ArmSummary], seed: int = 0) -> list[Comparison]:
    """Returns the reference arm against each other arm on each quantity both measured: rank-sum tests, or
    against an arm whose generator does not use the seed (one run stands for every seed) a signed-rank test of
    the reference's runs against its one value."""
    rng = np.random.default_rng(seed)
    by_arm = {summary.arm: summary for summary in summaries}
    reference = by_arm[reference_arm(records)]
    out = []
    for other in summaries:
        if other.arm == reference.arm:
            continue
        single = len(other.seeds) == 1 and not uses_seed(records.of_arm(other.arm)[0].generator)
        for quantity in QUANTITIES:
            a, b = reference.values[quantity], other.values[quantity]
            if a and b and single:
                out.append(compare_with_value(reference.arm, a, other.arm, b[0], quantity))
            elif a and b:
                out.append(compare_arms(reference.arm, a, other.arm, b, quantity, rng))
    return out
