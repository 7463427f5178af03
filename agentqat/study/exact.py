"""Exact tests for small samples, pure functions of numbers: the Mann-Whitney test with ties (mid-ranks, the
whole permutation distribution of the rank sum over every split of the pooled values), the Wilcoxon signed-rank
test (every sign pattern), the exact permutation test of the difference in means, and Holm's step-down
adjustment. Two-sided p-values are twice the smaller one-sided tail, capped at 1 (scipy's convention)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

PERMUTATIONS = 10_000  # random relabellings where splits are too many to enumerate


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


ENUMERATION_LIMIT = 200_000  # arrangements enumerated one by one; beyond it the same null distribution is counted


def _null_of_splits(doubled: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (support, counts): every value of the sum of `k` of the integers `doubled` over all C(n, k) ways to
    choose them, each way counted once. Enumerated split by split up to ENUMERATION_LIMIT splits, counted by
    dynamic programming beyond (the same exact distribution)."""
    n = len(doubled)
    if math.comb(n, k) <= ENUMERATION_LIMIT:
        chosen = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
        return np.unique(doubled[chosen].sum(axis=1), return_counts=True)
    ways: list[dict[int, int]] = [{0: 1}] + [{} for _ in range(k)]
    for i, value in enumerate(int(v) for v in doubled):
        for j in range(min(k, i + 1), 0, -1):
            for total, count in ways[j - 1].items():
                ways[j][total + value] = ways[j].get(total + value, 0) + count
    support = sorted(ways[k])
    return np.array(support, dtype=np.int64), np.array([ways[k][s] for s in support], dtype=object)


def _null_of_signs(doubled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (support, counts): every value of the sum of the integers `doubled` that carry a plus sign, over all
    2^n sign patterns, each counted once (enumerated up to ENUMERATION_LIMIT patterns, counted beyond)."""
    n = len(doubled)
    if 2**n <= ENUMERATION_LIMIT:
        plus = np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int64).reshape(-1, n)
        return np.unique(plus @ doubled.astype(np.int64), return_counts=True)
    ways = {0: 1}
    for value in (int(v) for v in doubled):
        shifted = {total + value: count for total, count in ways.items()}
        ways = {total: ways.get(total, 0) + shifted.get(total, 0) for total in ways.keys() | shifted.keys()}
    support = sorted(ways)
    return np.array(support, dtype=np.int64), np.array([ways[s] for s in support], dtype=object)


@dataclass(frozen=True)
class ExactTest:
    """An exact test from the whole null distribution of a rank statistic: `statistic` (Mann-Whitney U of the
    first sample, or Wilcoxon's W+), its one-sided p-values, the two-sided p (twice the smaller tail, at most 1:
    scipy's convention for exact tests), the smallest two-sided p this null distribution can give at all
    (`p_floor`, given the sample sizes and the tie pattern) and the number of equally likely arrangements."""

    statistic: float
    p_less: float  # P(statistic <= observed): the first sample (or the differences) tends lower
    p_greater: float  # P(statistic >= observed)
    p_two_sided: float
    p_floor: float
    arrangements: int


def _exact_test(support: np.ndarray, counts: np.ndarray, observed: int, statistic: float) -> ExactTest:
    total = int(sum(int(c) for c in counts))
    at_most = int(sum(int(c) for s, c in zip(support, counts) if s <= observed))
    at_least = int(sum(int(c) for s, c in zip(support, counts) if s >= observed))
    floor = min(1.0, 2 * min(int(counts[0]), int(counts[-1])) / total)
    return ExactTest(statistic, at_most / total, at_least / total, min(1.0, 2 * min(at_most, at_least) / total), floor, total)


def _doubled_mid_ranks(values: np.ndarray) -> np.ndarray:
    """Returns twice the mid-ranks of `values` (ties share the mean of their ranks), exact integers."""
    return np.rint(2 * scipy_stats.rankdata(values, method="average")).astype(np.int64)


def mann_whitney_exact(a: Sequence[float], b: Sequence[float]) -> ExactTest:
    """Returns the exact Mann-Whitney (Wilcoxon rank-sum) test of `a` against `b`, ties included: mid-ranks of the
    pooled values, and the null distribution of a's rank sum over every one of the C(n_a + n_b, n_a) equally
    likely ways to split the pooled values into samples of these sizes (5 vs 5: 252 splits), enumerated, no
    normal approximation and no sampling. `statistic` is U of `a` (pairs where a is higher, ties counted half);
    p_less is the probability of a U at most the observed one (a tends lower). Two-sided p: twice the smaller
    one-sided p, capped at 1 (scipy's convention for its exact test, whose p-values these equal when there are no
    ties). Values must be finite (rank a run that found nothing as worse than every finite value first)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or len(a) < 1 or len(b) < 1:
        raise ValueError("an exact rank-sum test needs finite values, at least one per sample")
    doubled = _doubled_mid_ranks(np.r_[a, b])
    observed = int(doubled[: len(a)].sum())
    support, counts = _null_of_splits(doubled, len(a))
    return _exact_test(support, counts, observed, (observed - len(a) * (len(a) + 1)) / 2)


def signed_rank_exact(differences: Sequence[float]) -> ExactTest:
    """Returns the exact Wilcoxon signed-rank test of `differences` against 0, ties included: zero differences are
    dropped (Wilcoxon's rule), the others ranked by absolute value with mid-ranks, and W+ (the rank sum of the
    positive ones) compared with its distribution over all 2^n equally likely sign patterns, enumerated. p_less: the
    differences tend negative. Two-sided: twice the smaller tail, capped at 1 (scipy's convention; it equals
    scipy.stats.wilcoxon(method="exact") without ties). No difference left: every p is 1."""
    d = np.asarray(differences, float)
    if not np.isfinite(d).all():
        raise ValueError("an exact signed-rank test needs finite differences")
    d = d[d != 0]
    if len(d) == 0:
        return ExactTest(0.0, 1.0, 1.0, 1.0, 1.0, 1)
    doubled = _doubled_mid_ranks(np.abs(d))
    observed = int(doubled[d > 0].sum())
    support, counts = _null_of_signs(doubled)
    return _exact_test(support, counts, observed, observed / 2)


def exact_permutation_p(a: Sequence[float], b: Sequence[float], rng: np.random.Generator | None = None) -> float:
    """Returns the two-sided p-value of the difference in means mean(a) - mean(b) over every split of the pooled
    values into samples of these sizes (|difference| at least the observed one), enumerated; past
    ENUMERATION_LIMIT splits, `permutation_p` with `rng` samples them instead (ValueError without one)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    pooled = np.r_[a, b]
    if math.comb(len(pooled), len(a)) > ENUMERATION_LIMIT:
        if rng is None:
            raise ValueError("too many splits to enumerate: pass an rng to sample them")
        return permutation_p(a, b, rng)
    chosen = np.array(list(itertools.combinations(range(len(pooled)), len(a))), dtype=np.int64).reshape(-1, len(a))
    sums = pooled[chosen].sum(axis=1)
    differences = sums / len(a) - (pooled.sum() - sums) / len(b)
    observed = a.mean() - b.mean()
    return float(np.mean(np.abs(differences) >= abs(observed) - 1e-12 * max(1.0, abs(observed))))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Returns Holm's step-down adjustment of a family of p-values (controls the family-wise error rate): sorted
    ascending, the i-th smallest (from 0) becomes max over j <= i of min(1, (m - j) p_(j)). None or NaN entries
    (no test) stay as they are and do not count in m."""
    tested = [(p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    adjusted: list[float | None] = list(p_values)
    running = 0.0
    for j, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (len(tested) - j) * p))
        adjusted[i] = running
    return adjusted
