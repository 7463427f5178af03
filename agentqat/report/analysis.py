"""The numbers of a report, computed from a comparison's records with agentqat.study.stats.

Per arm: best-so-far curves of KL and perplexity against tokens and matches on a common grid, each run's area
under its KL curve (up to the smallest budget any run spent, so every run is judged on an equal budget), the
tokens each run needed to reach the best uniform baseline within the bits budget, the final best KL and
perplexity, and the winners' KL and perplexity on every unseen text recorded (the test split and each
--test-corpus file, each its own quantity), on the full arena, and as llama.cpp measured their GGUF files (DIR/
engine.jsonl, each text its own quantity): per arm the mean over seeds with a seeded
bootstrap interval, and the best single run. Between arms: the reference arm (llm when present) against each
other arm on each of those per-run numbers, and the best searcher (lowest mean final KL) against every other arm
when it is not the reference; exact tests, Holm-adjusted over that family.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from agentqat.generators import uses_seed
from agentqat.report.records import ComparisonRecords, RunRecord
from agentqat.study.stats import (
    Comparison,
    Interval,
    adjust_family,
    area_under_curve,
    best_so_far,
    bootstrap_interval,
    budget_to_reach,
    compare_arms,
    compare_with_value,
    on_grid,
)
from agentqat.study.unseen import TEST_STAGE

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
    runs: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # quantity -> the run of each value

    def best(self, quantity: str) -> tuple[float, str] | None:
        """Returns the lowest finite value of `quantity` over the arm's runs with its run (the best single run on
        that quantity alone), None when no run has one."""
        found = [(v, run) for v, run in zip(self.values[quantity], self.runs.get(quantity, [])) if math.isfinite(v)]
        return min(found) if found else None


SEARCH_QUANTITIES = ("final KL", "final perplexity", "KL AUC (tokens)", "tokens to baseline KL")
CONFIRM_QUANTITIES = ("full-arena KL", "full-arena perplexity")
QUANTITIES = (*SEARCH_QUANTITIES, "test KL", "test perplexity", *CONFIRM_QUANTITIES)  # without other unseen texts


def unseen_stages(records: ComparisonRecords) -> list[str]:
    """Returns the stages of the recorded re-evaluations on unseen text: "test" (the corpus's test split) first,
    then "test:<file>" for each text file, by name."""
    stages = {result.stage for result in records.tests}
    return sorted(stages, key=lambda stage: (stage != TEST_STAGE, stage))


def unseen_label(stage: str) -> str:
    """Returns the quantity prefix of an unseen-text stage: "test" for the test split, the file name for a file."""
    return stage if stage == TEST_STAGE else stage.partition(":")[2]


def engine_texts(records: ComparisonRecords) -> list[str]:
    """Returns the texts the engine measured the winners on (DIR/engine.jsonl): "test" first, then files by name."""
    return sorted({record["text"] for record in records.engine if "run" in record}, key=lambda text: (text != TEST_STAGE, text))


def engine_label(text: str) -> str:
    """Returns the quantity prefix of an engine measurement: "engine test", or "engine <file name>"."""
    return f"engine {text if text == TEST_STAGE else text.rpartition('/')[2]}"


ENGINE_METRICS = (("mean_kl", "KL"), ("perplexity", "perplexity"))


def quantities(records: ComparisonRecords) -> list[str]:
    """Returns every quantity of the comparison: the search's, then KL and perplexity on each unseen text recorded
    (the test split, each --test-corpus file), then the full arena's, then llama.cpp's on each text it measured."""
    unseen = [f"{unseen_label(stage)} {metric}" for stage in unseen_stages(records) for metric in ("KL", "perplexity")]
    engine = [f"{engine_label(text)} {name}" for text in engine_texts(records) for _, name in ENGINE_METRICS]
    return [*SEARCH_QUANTITIES, *(unseen or ("test KL", "test perplexity")), *CONFIRM_QUANTITIES, *engine]


def winner_runs(results, records: ComparisonRecords, arm: str, stage: str | None = None) -> list[str]:
    """Returns the run of each value `winner_values` gives, in the same order."""
    return [run.name for run in records.of_arm(arm) for result in results
            if result.extra.get("run") == run.name and stage in (None, result.stage) and result.extra.get("rank") == 1]  # fmt: skip


def arm_values(records: ComparisonRecords, arm: str) -> dict[str, list[float]]:
    """Returns each quantity of `quantities(records)` per run of the arm (inf: never reached; empty: not measured)."""
    return arm_values_and_runs(records, arm)[0]


def arm_values_and_runs(records: ComparisonRecords, arm: str) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Returns (each quantity per run of the arm, the run each value is from)."""
    grid = common_grid(records, "tokens", upto="min")
    target = records.baseline.best_within_budget("kl") if records.baseline else None
    runs = records.of_arm(arm)
    names = [run.name for run in runs]
    values = {
        "final KL": [final_value(run, "kl") for run in runs],
        "final perplexity": [final_value(run, "perplexity") for run in runs],
        "KL AUC (tokens)": [area_under_curve(grid, row) for row in curves(records, arm, "kl", "tokens", grid).runs],
        "tokens to baseline KL": [budget_to_reach(*curve_of(run, "kl", "tokens"), target.aggregate.kl) for run in runs] if target else [],
    }
    of_run = {quantity: names if values[quantity] else [] for quantity in values}
    for stage in unseen_stages(records) or [TEST_STAGE]:
        for metric, name in (("kl", "KL"), ("perplexity", "perplexity")):
            values[f"{unseen_label(stage)} {name}"] = winner_values(records.tests, records, arm, metric, stage)
            of_run[f"{unseen_label(stage)} {name}"] = winner_runs(records.tests, records, arm, stage)
    for quantity, metric in zip(CONFIRM_QUANTITIES, METRICS):
        values[quantity] = winner_values(records.confirms, records, arm, metric)
        of_run[quantity] = winner_runs(records.confirms, records, arm)
    for text in engine_texts(records):
        measured = {record["run"]: record["kl"] for record in records.engine if record.get("text") == text and "run" in record}
        for key, name in ENGINE_METRICS:
            values[f"{engine_label(text)} {name}"] = [measured[run][key] for run in names if run in measured]
            of_run[f"{engine_label(text)} {name}"] = [run for run in names if run in measured]
    return values, of_run


def summarize(records: ComparisonRecords, seed: int = 0) -> list[ArmSummary]:
    """Returns every arm's summary; bootstrap intervals drawn from a Generator seeded with `seed`, first for the
    QUANTITIES of every arm (search, test split, full arena), then for every text file's, so that adding an unseen
    text moves no other interval."""
    rng = np.random.default_rng(seed)
    measured = {arm: arm_values_and_runs(records, arm) for arm in records.arms}
    intervals: dict[str, dict[str, Interval | None]] = {arm: {} for arm in records.arms}
    for standard in (True, False):
        for arm in records.arms:
            for quantity, numbers in measured[arm][0].items():
                if (quantity in QUANTITIES) == standard:
                    finite = [v for v in numbers if math.isfinite(v)]
                    intervals[arm][quantity] = bootstrap_interval(finite, rng) if finite else None
    return [
        ArmSummary(arm, tuple(run.seed for run in records.of_arm(arm)), measured[arm][0],
                   {quantity: intervals[arm][quantity] for quantity in measured[arm][0]}, measured[arm][1])
        for arm in records.arms
    ]  # fmt: skip


def reference_arm(records: ComparisonRecords) -> str:
    """Returns the arm every other is compared with: llm when present, else the first arm."""
    return records.arms[0]


def best_searcher(summaries: list[ArmSummary]) -> str | None:
    """Returns the arm with more than one run whose mean final KL is lowest (None when no such arm has one)."""
    means = [(summary.intervals["final KL"].value, summary.arm) for summary in summaries
             if len(summary.seeds) > 1 and summary.intervals.get("final KL") is not None]  # fmt: skip
    return min(means)[1] if means else None


def compared_pairs(records: ComparisonRecords, summaries: list[ArmSummary]) -> list[tuple[str, str]]:
    """Returns the (a, b) arm pairs a report tests: the reference arm against each other arm, then the best
    searcher (`best_searcher`), when it is another arm, against each arm but the reference."""
    reference = reference_arm(records)
    pairs = [(reference, s.arm) for s in summaries if s.arm != reference]
    best = best_searcher(summaries)
    if best is not None and best != reference:
        pairs += [(best, s.arm) for s in summaries if s.arm not in (reference, best)]
    return pairs


def comparisons(records: ComparisonRecords, summaries: list[ArmSummary], seed: int = 0) -> list[Comparison]:
    """Returns the tests of `compared_pairs` on each quantity both arms measured: exact rank-sum tests, or against
    an arm whose generator does not use the seed (one run stands for every seed) a one-sample signed-rank test of
    the other arm's runs against its one value; "no result" where an arm never produced a value. Holm-adjusted
    over all of them (`adjust_family`). `seed` seeds the permutation test only where splits are too many to
    enumerate."""
    rng = np.random.default_rng(seed)
    by_arm = {summary.arm: summary for summary in summaries}
    out = []
    def single(arm: str) -> bool:
        return len(by_arm[arm].seeds) == 1 and not uses_seed(records.of_arm(arm)[0].generator)

    for a_arm, b_arm in compared_pairs(records, summaries):
        if single(a_arm) and not single(b_arm):
            a_arm, b_arm = b_arm, a_arm  # the runs against the one value, whichever arm is the reference
        for quantity in quantities(records):
            a, b = by_arm[a_arm].values[quantity], by_arm[b_arm].values[quantity]
            if a and b and single(b_arm):
                out.append(compare_with_value(a_arm, a, b_arm, b[0], quantity))
            elif a and b:
                out.append(compare_arms(a_arm, a, b_arm, b, quantity, rng))
    return adjust_family(out)
