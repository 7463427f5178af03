"""Scoring: one strategy's match results on a stage, aggregated, scored against the base model, and ranked.

Aggregation (`aggregate`) combines one strategy's results on one stage, one result per window set:

    outcome        "ok" when every set is ok; otherwise the most severe failure among the sets, in the order
                   error > timeout > nan > overflow > collapse > invalid (a crash or a timeout hides what the
                   other sets measured, a numeric breakdown outranks a measured collapse); a failed aggregate
                   carries that set's message, and metrics only when every set is a measured collapse (too far
                   from the base, but measured: the loop breeds from the lowest-KL collapses while none survives)
    perplexity     exp(mean NLL over every window of every set), i.e. per-token perplexity of the pooled windows
    kl             mean KL(base || quantized) over every window of every set, nats per token
    top1           mean of the sets' top-1 agreement, weighted by their window counts
    cloze, qa      mean over the sets that report them; None when none does
    bits           effective bits per weight (a property of the strategy: identical across sets)
    latency        mean simulated latency per token (fake quantization on CPU: not the deployed model's)
    engine         decode ms per token and peak memory on the deploy target's engine (agentqat.arena.engine_costs;
                   a property of the strategy), None without a measured vllm-* target
    95% CIs        Student t over the per-set means, mean ± t(0.975, n-1) · s / sqrt(n); for perplexity the
                   interval of the per-set mean NLLs, exponentiated (so it is not symmetric); None for 1 set

The composite score (`composite_score`, higher is better) of an aggregate against the base model:

    score = − w_kl·KL − w_ppl·ln(ppl/ppl_base) − w_bits·(bits/bits_budget)
            − w_latency·(lat/lat_base − 1) − w_memory·(mem/mem_base − 1)
            + w_cloze·(cloze − cloze_base) + w_qa·(qa − qa_base)

lat and mem are the engine's (decode ms per token, peak resident bytes), against the unquantized model's on the
same engine. A term is dropped when its metric or its base is missing (cloze and qa run on some stages only; latency
and memory under a vllm-* deployment target with measured engine costs only). A failed aggregate scores -inf.

Survival (`survives`): no failure and bits ≤ bits_budget (+1e-9). The leaderboard puts survivors first, then
sorts by score (descending), the failed by KL where it was measured (collapses; the rest last), and strategy id
(ascending); `promote` keeps the best share of the survivors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from agentqat.arena.config import ScoreWeights
from agentqat.arena.result import MatchResult, Outcome

SEVERITY: tuple[Outcome, ...] = ("error", "timeout", "nan", "overflow", "collapse", "invalid")
BUDGET_TOLERANCE = 1e-9
# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30; larger df use the Cornish-Fisher expansion.
T_975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
    2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
    2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
    2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)  # fmt: skip
Z_975 = 1.959963984540054


@dataclass(frozen=True)
class Baseline:
    """The base model's numbers on an arena: what a quantized model's quality is measured against."""

    perplexity: float
    cloze_accuracy: float | None = None
    qa_exact_match: float | None = None
    latency_ms_per_token: float | None = None  # decode, on the deploy target's engine
    memory_bytes: int | None = None  # peak resident, on the same engine

    def __post_init__(self) -> None:
        if not self.perplexity > 0:
            raise ValueError(f"base perplexity must be positive, got {self.perplexity}")
        if self.latency_ms_per_token is not None and not self.latency_ms_per_token > 0:
            raise ValueError(f"base latency must be positive, got {self.latency_ms_per_token}")
        if self.memory_bytes is not None and not self.memory_bytes > 0:
            raise ValueError(f"base memory must be positive, got {self.memory_bytes}")


@dataclass(frozen=True)
class Aggregate:
    """One strategy on one stage, over its window sets. Metrics are None when the aggregate failed."""

    strategy_id: str
    strategy_name: str
    arena: str
    stage: str
    outcome: Outcome
    message: str
    n_sets: int
    seeds: tuple[int, ...]
    window_sets: tuple[int, ...]
    tokens: int
    perplexity: float | None = None
    perplexity_ci: tuple[float, float] | None = None
    kl: float | None = None
    kl_ci: tuple[float, float] | None = None
    top1: float | None = None
    cloze_accuracy: float | None = None
    qa_exact_match: float | None = None
    bits_per_weight: float | None = None
    simulated_latency_ms_per_token: float | None = None
    engine_ms_per_token: float | None = None
    engine_memory_bytes: int | None = None

    @property
    def failed(self) -> bool:
        return self.outcome != "ok"

    def to_dict(self) -> dict:
        """Returns the aggregate as a dict that json.dumps accepts."""
        return asdict(self)


@dataclass(frozen=True)
class Ranked:
    """One row of a leaderboard. `rank` counts from 1; `pareto_rank` from 0 (the KL-bits front), survivors only."""

    rank: int
    strategy_id: str
    score: float
    survives: bool
    reason: str
    pareto_rank: int | None
    aggregate: Aggregate


def t_quantile_975(df: int) -> float:
    """Returns the 0.975 quantile of Student's t distribution with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def confidence_interval(set_means: Sequence[float]) -> tuple[float, float] | None:
    """Returns the 95% Student t interval of the mean of `set_means`, or None for fewer than 2 values."""
    if len(set_means) < 2:
        return None
    values = np.asarray(set_means, dtype=np.float64)
    half = t_quantile_975(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def _check_same_match(results: Sequence[MatchResult]) -> None:
    """Raises ValueError unless the results are one strategy on one stage, each (seed, window set) once."""
    if not results:
        raise ValueError("cannot aggregate zero match results")
    for key in ("strategy_id", "arena", "stage"):
        values = {getattr(r, key) for r in results}
        if len(values) > 1:
            raise ValueError(f"results to aggregate must share one {key}, got {sorted(values)}")
    sets = [(r.seed, r.window_set) for r in results]
    if len(set(sets)) != len(sets):
        raise ValueError(f"results repeat a (seed, window set): {sorted(sets)}")


def _check_measured(results: Sequence[MatchResult]) -> None:
    """Raises ValueError unless every ok result carries quality, cost, windows, and one bits per weight."""
    for r in results:
        if r.quality is None or r.cost is None or not r.quality.window_nll or not r.quality.window_kl:
            raise ValueError(f"ok result for window set {r.window_set} lacks quality, cost or windows")
    bits = {r.cost.bits_per_weight for r in results}
    if len(bits) > 1:
        raise ValueError(f"bits per weight differ across window sets: {sorted(bits)}")


def _worst(results: Sequence[MatchResult]) -> MatchResult | None:
    """Returns the most severe failed result (the earliest set among equals), or None when all are ok."""
    failed = [r for r in results if r.failed]
    return min(failed, key=lambda r: SEVERITY.index(r.outcome)) if failed else None


def _mean_of_reported(values: Sequence[float | None]) -> float | None:
    """Returns the mean of the values that are not None, or None when all are."""
    reported = [v for v in values if v is not None]
    return float(np.mean(reported)) if reported else None


def _metrics(results: Sequence[MatchResult]) -> dict:
    """Returns the aggregate's metric fields for results that are all ok."""
    qualities = [r.quality for r in results]
    engine = results[0].cost.engine
    set_nll = [float(np.mean(q.window_nll)) for q in qualities]
    nll_ci = confidence_interval(set_nll)
    return dict(
        perplexity=math.exp(np.mean([x for q in qualities for x in q.window_nll])),
        perplexity_ci=None if nll_ci is None else (math.exp(nll_ci[0]), math.exp(nll_ci[1])),
        kl=float(np.mean([x for q in qualities for x in q.window_kl])),
        kl_ci=confidence_interval([float(np.mean(q.window_kl)) for q in qualities]),
        top1=float(np.average([q.top1 for q in qualities], weights=[len(q.window_kl) for q in qualities])),
        cloze_accuracy=_mean_of_reported([q.cloze_accuracy for q in qualities]),
        qa_exact_match=_mean_of_reported([q.qa_exact_match for q in qualities]),
        bits_per_weight=results[0].cost.bits_per_weight,
        simulated_latency_ms_per_token=float(np.mean([r.cost.simulated_latency_ms_per_token for r in results])),
        engine_ms_per_token=None if engine is None else engine.decode_ms_per_token,
        engine_memory_bytes=None if engine is None else engine.peak_memory_bytes,
    )


def aggregate(results: Sequence[MatchResult]) -> Aggregate:
    """Returns one strategy's results on one stage combined over its window sets (see the module docstring)."""
    _check_same_match(results)
    ordered = sorted(results, key=lambda r: (r.window_set, r.seed))
    worst = _worst(ordered)
    measured = worst is None or all(
        r.outcome in ("ok", "collapse") and r.cost is not None and r.quality is not None and r.quality.window_kl and r.quality.window_nll
        for r in ordered
    )  # fmt: skip
    if worst is None:
        _check_measured(ordered)
    first = ordered[0]
    return Aggregate(
        strategy_id=first.strategy_id,
        strategy_name=first.strategy_name,
        arena=first.arena,
        stage=first.stage,
        outcome="ok" if worst is None else worst.outcome,
        message="" if worst is None else worst.message,
        n_sets=len(ordered),
        seeds=tuple(sorted({r.seed for r in ordered})),
        window_sets=tuple(r.window_set for r in ordered),
        tokens=sum(r.tokens for r in ordered),
        **(_metrics(ordered) if measured else {}),
    )


def _optional_terms(agg: Aggregate, base: Baseline, weights: ScoreWeights) -> float:
    """Returns the sum of the score terms whose metric and base are both present (latency, memory, cloze, qa)."""
    total = 0.0
    if agg.engine_ms_per_token is not None and base.latency_ms_per_token is not None:
        total -= weights.latency * (agg.engine_ms_per_token / base.latency_ms_per_token - 1)
    if agg.engine_memory_bytes is not None and base.memory_bytes is not None:
        total -= weights.memory * (agg.engine_memory_bytes / base.memory_bytes - 1)
    if agg.cloze_accuracy is not None and base.cloze_accuracy is not None:
        total += weights.cloze * (agg.cloze_accuracy - base.cloze_accuracy)
    if agg.qa_exact_match is not None and base.qa_exact_match is not None:
        total += weights.qa * (agg.qa_exact_match - base.qa_exact_match)
    return total


def composite_score(agg: Aggregate, baseline: Baseline, weights: ScoreWeights, bits_budget: float) -> float:
    """Returns the composite score of the module docstring (higher is better; -inf for a failed aggregate)."""
    if agg.failed:
        return -math.inf
    return (
        -weights.kl * agg.kl
        - weights.perplexity * math.log(agg.perplexity / baseline.perplexity)
        - weights.bits * agg.bits_per_weight / bits_budget
        + _optional_terms(agg, baseline, weights)
    )


def survives(agg: Aggregate, bits_budget: float) -> tuple[bool, str]:
    """Returns whether the aggregate meets the arena's constraints, and why not ("" when it does)."""
    if agg.failed:
        return False, f"{agg.outcome}: {agg.message}" if agg.message else agg.outcome
    if agg.bits_per_weight > bits_budget + BUDGET_TOLERANCE:
        return False, f"over budget: {agg.bits_per_weight:.2f} > {bits_budget:.2f} bits"
    return True, ""


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Returns whether `a` is no worse than `b` in both coordinates and better in one (minimisation)."""
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def pareto_ranks(points: Sequence[tuple[float, float]]) -> list[int]:
    """Returns each point's non-dominated sorting rank (0 = the Pareto front) when minimising both coordinates."""
    order = sorted(range(len(points)), key=lambda i: points[i])  # a dominating point sorts before those it dominates
    ranks = [0] * len(points)
    for position, i in enumerate(order):
        dominators = [ranks[j] + 1 for j in order[:position] if _dominates(points[j], points[i])]
        ranks[i] = max(dominators, default=0)
    return ranks


def _unranked(
    strategy_id: str, agg: Aggregate, baseline: Baseline, weights: ScoreWeights, bits_budget: float
) -> Ranked:
    """Returns the entry's leaderboard row before ranking (rank 0, no Pareto rank)."""
    alive, reason = survives(agg, bits_budget)
    return Ranked(0, strategy_id, composite_score(agg, baseline, weights, bits_budget), alive, reason, None, agg)


def _failure_order(row: Ranked) -> float:
    """Returns where a failed row goes among the failed: a measured collapse by its KL, others last."""
    measured = row.score == -math.inf and row.aggregate.kl is not None and math.isfinite(row.aggregate.kl)
    return row.aggregate.kl if measured else math.inf


def leaderboard(
    entries: Sequence[tuple[str, Aggregate]], baseline: Baseline, weights: ScoreWeights, bits_budget: float
) -> list[Ranked]:
    """Returns the entries ranked: survivors first, then score descending, failures with a measured KL (collapses)
    by KL ascending, then strategy id ascending."""
    ids = [strategy_id for strategy_id, _ in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"leaderboard entries repeat a strategy id: {sorted(ids)}")
    rows = sorted(
        (_unranked(sid, agg, baseline, weights, bits_budget) for sid, agg in entries),
        key=lambda row: (not row.survives, -row.score, _failure_order(row), row.strategy_id),
    )
    survivors = [row for row in rows if row.survives]
    points = [(row.aggregate.kl, row.aggregate.bits_per_weight) for row in survivors]
    fronts = dict(zip((row.strategy_id for row in survivors), pareto_ranks(points)))
    return [replace(row, rank=rank, pareto_rank=fronts.get(row.strategy_id)) for rank, row in enumerate(rows, start=1)]


def promote(rows: Sequence[Ranked], fraction: float) -> list[str]:
    """Returns the ids of the best ceil(fraction × survivors) survivors (one at least, if any), best first."""
    if not 0 < fraction <= 1:
        raise ValueError(f"promote fraction must be in (0, 1], got {fraction}")
    survivors = [row.strategy_id for row in rows if row.survives]
    count = math.ceil(round(fraction * len(survivors), 9))  # round: 0.28 x 25 = 7.000000000000001
    return survivors[:count]
