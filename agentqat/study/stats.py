"""Statistics that compare stochastic search arms: pure functions of numbers (numpy, scipy), no I/O.

Per arm (one run per seed): best-so-far curves of a loss (KL, perplexity) against budget spent (tokens or
matches), put on a common grid, their normalised area under the curve, the budget a run needed to reach a
target (e.g. the best uniform baseline's KL), and the final best with a seeded bootstrap interval.
Between arms: Mann-Whitney U (exact for small samples without ties), Cliff's delta (= the rank-biserial
correlation of U) and a seeded permutation test of the difference in means, each with a sentence that says
whether the difference is significant at the chosen level, and says so in words when it is not. Against an arm
that does not depend on the seed (one run stands for every seed), the runs are tested against its single value:
Wilcoxon's signed-rank test (exact) and the exact sign-flip test of the mean difference.
Lower is better for every loss here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
PERMUTATIONS = 10_000


def best_so_far(spent: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (cumulative budget, running minimum loss) of evaluations in the order they were spent: `spent`
    is each evaluation's cost, `losses` its loss (NaN or inf for a failed one, which never lowers the minimum)."""
    spent, losses = np.asarray(spent, float), np.asarray(losses, float)
    if spent.shape != losses.shape or np.any(spent < 0):
        raise ValueError("spent and losses need one non-negative cost per loss")
    clean = np.where(np.isfinite(losses), losses, np.inf)
    return np.cumsum(spent), np.minimum.accumulate(clean) if len(clean) else clean


def on_grid(budget: np.ndarray, best: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Returns the best-so-far step function sampled at each `grid` budget: the best reached with at most that
    much spent (inf before the first evaluation ends)."""
    index = np.searchsorted(budget, grid, side="right") - 1
    return np.where(index >= 0, best[np.clip(index, 0, None)] if len(best) else np.inf, np.inf)


def area_under_curve(grid: np.ndarray, curve: np.ndarray) -> float:
    """Returns the mean of the best-so-far `curve` over the `grid` budget (trapezoids divided by the budget's
    span): lower means a run got good early. Inf values (nothing found yet) are replaced by the curve's first
    finite value, so runs are compared on what they found; all-inf gives inf."""
    finite = np.isfinite(curve)
    if not finite.any():
        return float("inf")
    filled = np.where(finite, curve, curve[finite][0])
    span = grid[-1] - grid[0]
    if span <= 0:
        return float(filled[-1])
    return float(np.sum((filled[1:] + filled[:-1]) / 2 * np.diff(grid)) / span)


def budget_to_reach(budget: np.ndarray, best: np.ndarray, target: float) -> float:
    """Returns the budget spent when the best-so-far first reached `target` or below; inf when it never did."""
    reached = np.nonzero(best <= target)[0]
    return float(budget[reached[0]]) if len(reached) else float("inf")


@dataclass(frozen=True)
class Interval:
    """A statistic with a bootstrap confidence interval."""

    value: float
    low: float
    high: float
    level: float


def bootstrap_interval(values: Sequence[float], rng: np.random.Generator, statistic=np.mean, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES) -> Interval:
    """Returns `statistic` of `values` with its percentile bootstrap interval at `level` (resampling with
    `rng`). One value gives a zero-width interval; it is still reported, but says nothing about spread."""
    values = np.asarray(values, float)
    if len(values) == 0:
        raise ValueError("a bootstrap needs at least one value")
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    replicates = statistic(values[draws], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(statistic(values)), float(low), float(high), level)


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """Returns Cliff's delta P(a > b) - P(a < b) over all pairs, in [-1, 1]; for losses, negative means `a`
    tends lower (better). It equals the rank-biserial correlation 2U/(n_a n_b) - 1 of Mann-Whitney's U."""
    a, b = np.asarray(a, float)[:, None], np.asarray(b, float)[None, :]
    return float(np.mean(np.sign(a - b)))


def permutation_p(a: Sequence[float], b: Sequence[float], rng: np.random.Generator, alternative: str = "two-sided", permutations: int = PERMUTATIONS) -> float:
    """Returns the p-value of the difference in means mean(a) - mean(b) under random relabelling (drawn with
    `rng`; the observed labelling counted once, so p >= 1/(permutations + 1)). `alternative`: "two-sided",
    "less" (a lower than b) or "greater"."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    pooled = np.concatenate([a, b])
    observed = a.mean() - b.mean()
    shuffled = np.array([rng.permutation(pooled) for _ in range(permutations)])
    differences = shuffled[:, : len(a)].mean(axis=1) - shuffled[:, len(a) :].mean(axis=1)
    tolerance = 1e-12 * max(1.0, abs(observed))
    extreme = {
        "two-sided": np.abs(differences) >= abs(observed) - tolerance,
        "less": differences <= observed + tolerance,
        "greater": differences >= observed - tolerance,
    }[alternative]
    return float((extreme.sum() + 1) / (permutations + 1))


@dataclass(frozen=True)
class Comparison:
    """Arm `a` against arm `b` on one loss (lower is better): the samples' medians, Mann-Whitney U with its
    one-sided (a lower) and two-sided p-values, Cliff's delta, a permutation p (two-sided) and a sentence."""

    a: str
    b: str
    metric: str
    n_a: int
    n_b: int
    median_a: float
    median_b: float
    u: float
    p_less: float  # H1: a's losses tend lower than b's
    p_two_sided: float
    cliffs_delta: float
    p_permutation: float
    method: str  # "exact" or "asymptotic" (Mann-Whitney)
    sentence: str


def compare_arms(a_name: str, a: Sequence[float], b_name: str, b: Sequence[float], metric: str, rng: np.random.Generator, alpha: float = ALPHA) -> Comparison:
    """Returns the comparison of arm `a` against arm `b` on final losses of `metric` (one per seed; inf for a
    run that found nothing counts as the worst). Mann-Whitney U is exact when both samples are small and have
    no ties (scipy's rule), asymptotic otherwise."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 1 or len(b) < 1:
        raise ValueError("each arm needs at least one run")
    finite_max = np.nanmax(np.where(np.isfinite(np.r_[a, b]), np.r_[a, b], np.nan)) if np.isfinite(np.r_[a, b]).any() else 0.0
    a_ranked, b_ranked = (np.where(np.isfinite(x), x, finite_max + 1.0) for x in (a, b))
    exact = max(len(a), len(b)) <= 8 and len(np.unique(np.r_[a_ranked, b_ranked])) == len(a) + len(b)
    method = "exact" if exact else "asymptotic"
    less = scipy_stats.mannwhitneyu(a_ranked, b_ranked, alternative="less", method=method)
    two = scipy_stats.mannwhitneyu(a_ranked, b_ranked, alternative="two-sided", method=method)
    delta = cliffs_delta(a_ranked, b_ranked)
    p_perm = permutation_p(a_ranked, b_ranked, rng)
    return Comparison(
        a=a_name, b=b_name, metric=metric, n_a=len(a), n_b=len(b), median_a=float(np.median(a)), median_b=float(np.median(b)),
        u=float(two.statistic), p_less=float(less.pvalue), p_two_sided=float(two.pvalue), cliffs_delta=delta,
        p_permutation=p_perm, method=method, sentence=verdict(a_name, b_name, metric, float(two.pvalue), delta, len(a), len(b), alpha),
    )  # fmt: skip


def sign_flip_p(differences: Sequence[float]) -> float:
    """Returns the exact two-sided p-value of the mean of `differences` under every flip of their signs (2^n)."""
    d = np.asarray(differences, float)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * len(d))).reshape(len(d), -1).T
    means = np.abs((signs * d).mean(axis=1))
    return float(np.mean(means >= abs(d.mean()) - 1e-12 * max(1.0, abs(d.mean()))))


def compare_with_value(a_name: str, a: Sequence[float], b_name: str, value: float, metric: str, alpha: float = ALPHA) -> Comparison:
    """Returns the comparison of arm `a`'s runs with the single `value` of an arm that does not use the seed:
    Wilcoxon's signed-rank test of a - value (exact; zero differences dropped, p = 1 when none is left), Cliff's
    delta against the one value and the exact sign-flip p. `u` holds the signed-rank statistic."""
    a = np.asarray(a, float)
    finite = [*a[np.isfinite(a)], *([value] if math.isfinite(value) else [])]
    worst = (max(finite) if finite else 0.0) + 1.0  # a run (or value) that found nothing ranks below every finite one
    ranked = np.where(np.isfinite(a), a, worst)
    differences = ranked - (value if math.isfinite(value) else worst)
    nonzero = differences[differences != 0]
    if len(nonzero):
        less = scipy_stats.wilcoxon(nonzero, alternative="less", method="exact")
        two = scipy_stats.wilcoxon(nonzero, alternative="two-sided", method="exact")
        statistic, p_less, p_two = float(two.statistic), float(less.pvalue), float(two.pvalue)
        p_flip = sign_flip_p(nonzero)
    else:
        statistic, p_less, p_two, p_flip = 0.0, 1.0, 1.0, 1.0
    delta = float(np.mean(np.sign(differences)))
    return Comparison(
        a=a_name, b=b_name, metric=metric, n_a=len(a), n_b=1, median_a=float(np.median(a)), median_b=float(value),
        u=statistic, p_less=p_less, p_two_sided=p_two, cliffs_delta=delta, p_permutation=p_flip,
        method="signed-rank", sentence=verdict(a_name, b_name, metric, p_two, delta, len(a), 1, alpha, against_value=True),
    )  # fmt: skip


def smallest_p(n_a: int, n_b: int, against_value: bool = False) -> float:
    """Returns the smallest two-sided exact p-value two samples of these sizes can reach: Mann-Whitney's
    2 / C(n_a + n_b, n_a) (the two most extreme orderings), or with `against_value` (signed ranks of n_a
    differences from one value) 2 / 2^n_a; at most 1."""
    return min(1.0, 2 / (2**n_a if against_value else math.comb(n_a + n_b, n_a)))


def verdict(a: str, b: str, metric: str, p_two_sided: float, delta: float, n_a: int, n_b: int, alpha: float = ALPHA, against_value: bool = False) -> str:
    """Returns one sentence saying whether `a` and `b` differ on `metric` at level `alpha`, in words, and that a
    non-significant difference is not one."""
    direction = "lower (better)" if delta < 0 else "higher (worse)" if delta > 0 else "neither lower nor higher"
    size = f"Cliff's delta {delta:+.2f}, {n_a} vs {n_b} runs"
    test = f"Wilcoxon signed-rank against {b}'s one seed-independent value," if against_value else "Mann-Whitney"
    if p_two_sided < alpha:
        return f"{a} reaches a significantly {direction} {metric} than {b} (two-sided {test} p = {p_two_sided:.3g} < {alpha}; {size})."
    floor = smallest_p(n_a, n_b, against_value)
    note = f"; with these sample sizes no p below {floor:.3g} is possible" if floor >= alpha else ""
    return (
        f"{a} and {b} do not differ significantly in {metric} (two-sided {test} p = {p_two_sided:.3g} >= {alpha}; "
        f"{size}{note}): the observed difference may be chance and is not evidence that either arm is better."
    )
