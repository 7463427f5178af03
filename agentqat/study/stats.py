"""Statistics that compare stochastic search arms: pure functions of numbers (numpy, scipy), no I/O.

Per arm (one run per seed): best-so-far curves of a loss (KL, perplexity) against budget spent (tokens or
matches), put on a common grid, their normalised area under the curve, the budget a run needed to reach a
target (e.g. the best uniform baseline's KL), and the final best with a seeded bootstrap interval.
Between arms: the Mann-Whitney test, exact with ties (mid-ranks, and the whole permutation distribution of
the rank sum over every split of the pooled values, enumerated: no normal approximation, no sampling), Cliff's
delta (= the rank-biserial correlation of U) and the exact permutation test of the difference in means, each
with the smallest p the test could give and a sentence that says whether the difference is significant at the
chosen level, and says so in words when it is not. Against an arm that does not depend on the seed (one run
stands for every seed), the runs are tested against its single value as a one-sample question (exact Wilcoxon
signed-rank, exact sign-flip test of the mean difference), and the sentence says so. An arm with no finite value
(it never produced one) gives "no result", never a p-value. Holm's step-down adjustment covers a family of
tests. Two-sided p-values are twice the smaller one-sided tail, capped at 1 (scipy's convention for its exact
tests). Lower is better for every loss here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agentqat.study.exact import exact_permutation_p, holm, mann_whitney_exact, signed_rank_exact

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000


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


ONE_SAMPLE, TWO_SAMPLE, NO_RESULT = "one-sample", "two-sample", "no result"


@dataclass(frozen=True)
class Comparison:
    """Arm `a` against arm `b` on one loss (lower is better).

    kind "two-sample": the exact Mann-Whitney test of a's runs against b's; "one-sample": a's runs against the
    single value of an arm that does not use the seed (exact Wilcoxon signed-rank of the differences; `u` holds
    W+, `median_b` the value); "no result": one side has no finite value (the arm never produced one), so nothing
    is tested and every p is NaN. `p_floor` is the smallest two-sided p the test could give on these values;
    `p_holm` the two-sided p after Holm's adjustment over the family of tests a report prints (None until
    `adjust_family` sets it)."""

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
    p_permutation: float  # exact permutation p of the difference in means (one-sample: the exact sign-flip p)
    method: str
    sentence: str
    kind: str = TWO_SAMPLE
    p_floor: float = math.nan
    p_holm: float | None = None
    family: int = 0  # tests in the Holm family


def _worst_as_finite(*samples: np.ndarray) -> list[np.ndarray]:
    """Returns the samples with inf (a run that found nothing, or never reached a target) replaced by one more than
    the largest finite value of all of them, so it ranks below every finite result and ties with other infs."""
    pooled = np.concatenate(samples)
    worst = (pooled[np.isfinite(pooled)].max() if np.isfinite(pooled).any() else 0.0) + 1.0
    return [np.where(np.isfinite(x), x, worst) for x in samples]


def no_result(a_name: str, a: Sequence[float], b_name: str, b: Sequence[float], metric: str) -> Comparison:
    """Returns the comparison that is not made because an arm has no finite value of `metric` (it never produced a
    result, or never reached the target): "no result", never a p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    missing = " and ".join(name for name, x in ((a_name, a), (b_name, b)) if not np.isfinite(x).any())
    sentence = f"{a_name} against {b_name} on {metric}: no result ({missing} never produced a value of it), so nothing is tested."
    nan = math.nan
    return Comparison(
        a=a_name, b=b_name, metric=metric, n_a=len(a), n_b=len(b), median_a=float(np.median(a)), median_b=float(np.median(b)),
        u=nan, p_less=nan, p_two_sided=nan, cliffs_delta=nan, p_permutation=nan, method=NO_RESULT, sentence=sentence, kind=NO_RESULT,
    )  # fmt: skip


def compare_arms(a_name: str, a: Sequence[float], b_name: str, b: Sequence[float], metric: str, rng: np.random.Generator | None = None, alpha: float = ALPHA) -> Comparison:
    """Returns the comparison of arm `a` against arm `b` on final losses of `metric` (one per seed): the exact
    Mann-Whitney test with ties (`mann_whitney_exact`), Cliff's delta and the exact permutation p of the
    difference in means. A run that found nothing (inf) counts as worse than every finite value; an arm with no
    finite value at all gives "no result" (`no_result`). `rng` only samples permutations of the means when there
    are too many splits to enumerate."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 1 or len(b) < 1:
        raise ValueError("each arm needs at least one run")
    if not np.isfinite(a).any() or not np.isfinite(b).any():
        return no_result(a_name, a, b_name, b, metric)
    a_ranked, b_ranked = _worst_as_finite(a, b)
    test = mann_whitney_exact(a_ranked, b_ranked)
    delta = cliffs_delta(a_ranked, b_ranked)
    return Comparison(
        a=a_name, b=b_name, metric=metric, n_a=len(a), n_b=len(b), median_a=float(np.median(a)), median_b=float(np.median(b)),
        u=test.statistic, p_less=test.p_less, p_two_sided=test.p_two_sided, cliffs_delta=delta,
        p_permutation=exact_permutation_p(a_ranked, b_ranked, rng), method="exact Mann-Whitney (mid-ranks)",
        sentence=verdict(a_name, b_name, metric, test.p_two_sided, delta, len(a), len(b), alpha, floor=test.p_floor),
        kind=TWO_SAMPLE, p_floor=test.p_floor,
    )  # fmt: skip


def sign_flip_p(differences: Sequence[float]) -> float:
    """Returns the exact two-sided p-value of the mean of `differences` under every flip of their signs (2^n)."""
    d = np.asarray(differences, float)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * len(d))).reshape(len(d), -1).T
    means = np.abs((signs * d).mean(axis=1))
    return float(np.mean(means >= abs(d.mean()) - 1e-12 * max(1.0, abs(d.mean()))))


def compare_with_value(a_name: str, a: Sequence[float], b_name: str, value: float, metric: str, alpha: float = ALPHA) -> Comparison:
    """Returns the one-sample comparison of arm `a`'s runs with the single `value` of an arm that does not use the
    seed (played once): the exact Wilcoxon signed-rank test of a - value (`signed_rank_exact`; zero differences
    dropped, p = 1 when none is left), Cliff's delta against the one value and the exact sign-flip p; the sentence
    says it is a one-sample question. A run of `a` that found nothing counts as worse than every finite value; a
    `value` that is not finite (the arm never produced one), or no finite run, gives "no result"."""
    a = np.asarray(a, float)
    if not math.isfinite(value) or not np.isfinite(a).any():
        return no_result(a_name, a, b_name, np.array([value]), metric)
    ranked = _worst_as_finite(a, np.array([value]))[0]
    differences = ranked - value
    test = signed_rank_exact(differences)
    nonzero = differences[differences != 0]
    p_flip = sign_flip_p(nonzero) if len(nonzero) else 1.0
    delta = float(np.mean(np.sign(differences)))
    return Comparison(
        a=a_name, b=b_name, metric=metric, n_a=len(a), n_b=1, median_a=float(np.median(a)), median_b=float(value),
        u=test.statistic, p_less=test.p_less, p_two_sided=test.p_two_sided, cliffs_delta=delta, p_permutation=p_flip,
        method="exact Wilcoxon signed-rank (one-sample)", kind=ONE_SAMPLE, p_floor=test.p_floor,
        sentence=verdict(a_name, b_name, metric, test.p_two_sided, delta, len(a), 1, alpha, against_value=value, floor=test.p_floor),
    )  # fmt: skip


def adjust_family(tests: Sequence[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Returns the comparisons with Holm-adjusted two-sided p-values over the family of all of them that were
    tested ("no result" ones stay out of it), their sentences saying what the adjustment does to the verdict."""
    adjusted = holm([c.p_two_sided if c.kind != NO_RESULT else None for c in tests])
    family = sum(1 for c in tests if c.kind != NO_RESULT)
    out = []
    for c, p in zip(tests, adjusted):
        if c.kind == NO_RESULT:
            out.append(c)
            continue
        if c.p_two_sided < alpha:
            after = "significant" if p < alpha else "not significant"
            note = f" After Holm's adjustment over the {family} tests of this report: p = {p:.3g}, {after} across the family."
        else:
            note = f" (Holm-adjusted over the {family} tests of this report: p = {p:.3g}.)"
        out.append(dataclasses.replace(c, p_holm=p, family=family, sentence=c.sentence + note))
    return out


def smallest_p(n_a: int, n_b: int, against_value: bool = False) -> float:
    """Returns the smallest two-sided exact p-value two samples of these sizes can reach without ties:
    Mann-Whitney's 2 / C(n_a + n_b, n_a) (the two most extreme splits; 5 vs 5: 2/252 = 0.0079), or with
    `against_value` (signed ranks of n_a differences from one value) 2 / 2^n_a (5 runs: 0.0625); at most 1.
    Ties can only raise it (`ExactTest.p_floor` is the floor of the values at hand)."""
    return min(1.0, 2 / (2**n_a if against_value else math.comb(n_a + n_b, n_a)))


def verdict(a: str, b: str, metric: str, p_two_sided: float, delta: float, n_a: int, n_b: int, alpha: float = ALPHA,
            against_value: float | None = None, floor: float | None = None) -> str:  # fmt: skip
    """Returns one sentence saying whether `a` and `b` differ on `metric` at level `alpha`, in words, with the
    smallest p the test could give (`floor`, the tie-free `smallest_p` when not given), and that a non-significant
    difference is not one. With `against_value` (the single value of `b`) the sentence starts by saying that it is
    a one-sample question."""
    one_sample = against_value is not None
    floor = smallest_p(n_a, n_b, one_sample) if floor is None else floor
    direction = "lower (better)" if delta < 0 else "higher (worse)" if delta > 0 else "neither lower nor higher"
    if one_sample:
        lead = f"One-sample: arm {a}'s {n_a} values against the single value {against_value:.4g} of {b} (an arm that does not use the seed, played once). "
        test, size = "exact Wilcoxon signed-rank", f"Cliff's delta {delta:+.2f} against the one value, {n_a} runs"
    else:
        lead, test, size = "", "exact Mann-Whitney", f"Cliff's delta {delta:+.2f}, {n_a} vs {n_b} runs"
    floor_note = f"with these sample sizes and ties no p below {floor:.3g} is possible" if floor >= alpha else f"smallest attainable p {floor:.3g}"
    if p_two_sided < alpha:
        return f"{lead}{a} reaches a significantly {direction} {metric} than {b} (two-sided {test} p = {p_two_sided:.3g} < {alpha}; {floor_note}; {size})."
    return (
        f"{lead}{a} and {b} do not differ significantly in {metric} (two-sided {test} p = {p_two_sided:.3g} >= {alpha}; "
        f"{floor_note}; {size}): the observed difference may be chance and is not evidence that either arm is better."
    )
