"""agentqat.study.stats and agentqat.study.exact on cases computed by hand."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from agentqat.study import exact
from agentqat.study.exact import holm, mann_whitney_exact, permutation_p, signed_rank_exact
from agentqat.study.stats import (
    adjust_family,
    area_under_curve,
    best_so_far,
    bootstrap_interval,
    budget_to_reach,
    cliffs_delta,
    compare_arms,
    compare_with_value,
    on_grid,
    sign_flip_p,
    smallest_p,
)


def test_best_so_far_ignores_failures_and_accumulates_budget():
    budget, best = best_so_far([100, 100, 50, 50], [3.0, math.nan, 2.0, math.inf])
    assert budget.tolist() == [100, 200, 250, 300]
    assert best.tolist() == [3.0, 3.0, 2.0, 2.0]


def test_on_grid_is_the_best_reached_with_at_most_that_budget():
    budget, best = np.array([100.0, 200.0, 300.0]), np.array([3.0, 2.0, 1.0])
    assert on_grid(budget, best, np.array([50.0, 100.0, 250.0, 400.0])).tolist() == [math.inf, 3.0, 2.0, 1.0]


def test_area_under_curve_by_trapezoids_over_the_span():
    # inf before the first result takes the first finite value: [2, 2, 1] -> (2 + 1.5) / 2
    assert area_under_curve(np.array([0.0, 1.0, 2.0]), np.array([math.inf, 2.0, 1.0])) == pytest.approx(1.75)
    assert area_under_curve(np.array([0.0, 1.0]), np.array([math.inf, math.inf])) == math.inf


def test_budget_to_reach_a_target():
    budget, best = np.array([10.0, 20.0, 30.0]), np.array([0.5, 0.3, 0.1])
    assert budget_to_reach(budget, best, 0.3) == 20.0
    assert budget_to_reach(budget, best, 0.05) == math.inf


def test_cliffs_delta_counts_pairs():
    assert cliffs_delta([1, 3], [2]) == 0.0  # one pair lower, one higher
    assert cliffs_delta([1, 2], [3, 4]) == -1.0
    assert cliffs_delta([1, 3], [2, 2]) == 0.0
    assert cliffs_delta([1, 3, 5], [2, 4]) == pytest.approx((-1 - 1 + 1 - 1 + 1 + 1) / 6)


def test_exact_mann_whitney_on_separated_samples():
    comparison = compare_arms("llm", [1.0, 2.0, 3.0], "random", [4.0, 5.0, 6.0], "KL", np.random.default_rng(0))
    assert comparison.kind == "two-sample" and comparison.method.startswith("exact") and comparison.u == 0
    assert comparison.p_less == pytest.approx(1 / 20)  # one of C(6, 3) orderings
    assert comparison.p_two_sided == pytest.approx(2 / 20)
    assert comparison.cliffs_delta == -1.0
    assert comparison.p_permutation == pytest.approx(2 / 20)  # 2 of the 20 labellings, enumerated
    assert comparison.p_floor == pytest.approx(2 / 20)
    assert "do not differ significantly" in comparison.sentence and "not evidence" in comparison.sentence


def test_two_runs_per_arm_can_never_be_significant_and_the_sentence_says_so():
    comparison = compare_arms("llm", [1.0, 2.0], "evo", [3.0, 4.0], "KL", np.random.default_rng(0))
    assert comparison.p_less == pytest.approx(1 / 6)
    assert smallest_p(2, 2) == pytest.approx(1 / 3)
    assert "no p below 0.333" in comparison.sentence


def test_a_significant_difference_is_named_with_its_direction():
    comparison = compare_arms("llm", [7.0, 8, 9, 10, 11, 12], "random", [1.0, 2, 3, 4, 5, 6], "KL", np.random.default_rng(0))
    assert comparison.p_two_sided == pytest.approx(2 / math.comb(12, 6))
    assert comparison.p_less == pytest.approx(1.0)
    assert comparison.sentence.startswith("llm reaches a significantly higher (worse) KL than random")


def test_a_run_that_found_nothing_ranks_worst():
    comparison = compare_arms("a", [1.0, 2.0, 3.0], "b", [math.inf, 5.0, 6.0], "KL", np.random.default_rng(0))
    assert comparison.cliffs_delta == -1.0 and comparison.p_less == pytest.approx(1 / 20)


def test_permutation_p_is_one_sided_when_asked():
    rng = np.random.default_rng(1)
    assert permutation_p([1, 2, 3], [4, 5, 6], rng, "less") == pytest.approx(0.05, abs=0.015)
    assert permutation_p([1, 2, 3], [4, 5, 6], rng, "greater") == pytest.approx(1.0, abs=0.01)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    first = bootstrap_interval(values, np.random.default_rng(0))
    assert first == bootstrap_interval(values, np.random.default_rng(0))
    assert first.value == 3.0 and 1.0 <= first.low < 3.0 < first.high <= 5.0
    assert bootstrap_interval([2.0, 2.0], np.random.default_rng(0)) == bootstrap_interval([2.0], np.random.default_rng(5))


def test_sign_flip_p_counts_every_flip():
    # 3 positive differences: of the 8 sign patterns, only all-plus and all-minus are as extreme
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_p([1.0, -1.0]) == 1.0


def test_runs_against_one_seed_independent_value():
    below = compare_with_value("llm", [0.50, 0.51, 0.52, 0.53, 0.54], "knapsack", 0.60, "final KL")
    assert below.p_less == pytest.approx(1 / 32) and below.p_two_sided == pytest.approx(2 / 32)
    assert below.cliffs_delta == -1.0 and below.n_b == 1 and below.median_b == 0.60
    # with 5 runs no two-sided signed-rank p can fall below 2/32: the sentence says so instead of claiming a win
    assert "do not differ significantly" in below.sentence and "no p below 0.0625" in below.sentence
    assert smallest_p(5, 1, against_value=True) == pytest.approx(2 / 32)
    six = compare_with_value("llm", [0.50, 0.51, 0.52, 0.53, 0.54, math.inf], "knapsack", 0.60, "final KL")
    # a run that found nothing counts as worse than the value by more than any other difference (rank 6):
    # W+ = 6, and 14 of the 64 sign patterns have W+ <= 6
    assert six.cliffs_delta == pytest.approx(-4 / 6) and six.p_less == pytest.approx(14 / 64)
    same = compare_with_value("llm", [0.6, 0.6], "knapsack", 0.6, "final KL")
    assert same.p_two_sided == 1.0 and same.cliffs_delta == 0.0


def test_an_arm_that_never_produced_a_value_is_no_result_never_a_p_value():
    found_nothing = compare_with_value("llm", [0.5, 0.6, math.inf], "knapsack", math.inf, "final KL")
    assert found_nothing.kind == "no result" and math.isnan(found_nothing.p_two_sided) and math.isnan(found_nothing.cliffs_delta)
    assert "no result" in found_nothing.sentence and "p =" not in found_nothing.sentence
    never = compare_arms("llm", [0.5, 0.6], "knapsack", [math.inf], "tokens to baseline KL")
    assert never.kind == "no result" and "(knapsack never produced a value of it)" in never.sentence
    # and "no result" comparisons stay out of the Holm family
    family = adjust_family([never, compare_arms("a", [1.0, 2, 3], "b", [4.0, 5, 6], "KL")])
    assert family[0].p_holm is None and family[1].family == 1 and family[1].p_holm == pytest.approx(0.1)


def test_exact_rank_sum_equals_scipy_exact_without_ties():
    rng = np.random.default_rng(3)
    for n_a, n_b in ((5, 5), (3, 5), (6, 4), (1, 4), (5, 3)):
        for _ in range(10):
            a, b = rng.normal(size=n_a), rng.normal(size=n_b) + 0.5
            test = mann_whitney_exact(a, b)
            assert test.statistic == scipy_stats.mannwhitneyu(a, b, method="exact").statistic
            for alternative, p in (("less", test.p_less), ("greater", test.p_greater), ("two-sided", test.p_two_sided)):
                assert p == pytest.approx(scipy_stats.mannwhitneyu(a, b, alternative=alternative, method="exact").pvalue, abs=1e-12)
    assert mann_whitney_exact([1.0, 2, 3, 4, 5], [6.0, 7, 8, 9, 10]).arrangements == 252


def test_exact_rank_sum_with_ties_by_hand():
    # pooled 1, 2, 3, 3, 4, 5: mid-ranks 1, 2, 3.5, 3.5, 5, 6; a = {1, 2, 3} has rank sum 6.5, U = 6.5 - 6 = 0.5.
    # Of the C(6, 3) = 20 splits, a rank sum <= 6.5 only for {1, 2, either 3.5}: 2 of 20. Two-sided: 2 * 2/20.
    test = mann_whitney_exact([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    assert test.statistic == 0.5 and test.arrangements == 20
    assert test.p_less == pytest.approx(2 / 20) and test.p_two_sided == pytest.approx(4 / 20)
    assert test.p_greater == 1.0  # every split's rank sum is at least 6.5
    # the largest rank sum, {3.5, 5, 6} = 14.5, also has 2 splits: no p below 4/20 is possible with these ties
    assert test.p_floor == pytest.approx(4 / 20)
    # 1, 2 | 2, 3: mid-ranks 1, 2.5, 2.5, 4; rank sums of the 6 splits: 3.5, 3.5, 5, 5, 6.5, 6.5
    small = mann_whitney_exact([1.0, 2.0], [2.0, 3.0])
    assert small.p_less == pytest.approx(2 / 6) and small.p_two_sided == pytest.approx(4 / 6)
    # the 3.3-bit comparison's final perplexity, llm against random (four random seeds tie on the prior's 51.13):
    # mid-ranks 1-6 and 8.5 (x4); llm holds 1, 2, 4, 5, 6 (U = 3); the rank sums 15, 16, 17, 18 (four of the 252
    # splits) are at most llm's, so p = 2 * 4/252 = 0.032, where the normal approximation had said 0.052
    llm, random = [50.9053, 50.0615, 50.5066, 50.815, 50.8948], [51.13, 51.13, 51.13, 50.5659, 51.13]
    tied = mann_whitney_exact(llm, random)
    assert tied.statistic == 3 and tied.p_less == pytest.approx(4 / 252) and tied.p_two_sided == pytest.approx(8 / 252)
    assert compare_arms("llm", llm, "random", random, "final perplexity").p_two_sided == pytest.approx(0.0317, abs=1e-4)


def test_counting_beyond_the_enumeration_limit_gives_the_same_distribution(monkeypatch):
    values = np.array([0.1, 0.2, 0.2, 0.3, 0.5, 0.5, 0.5, 0.7, 0.8, 0.9, 1.1])
    enumerated = mann_whitney_exact(values[:5], values[5:]), signed_rank_exact(values[:8] - 0.45)
    monkeypatch.setattr(exact, "ENUMERATION_LIMIT", 0)
    assert (mann_whitney_exact(values[:5], values[5:]), signed_rank_exact(values[:8] - 0.45)) == enumerated


def test_exact_signed_rank_equals_scipy_without_ties_and_counts_ties_by_hand():
    rng = np.random.default_rng(4)
    for n in (3, 5, 7):
        for _ in range(10):
            d = rng.normal(size=n) + 0.3
            test = signed_rank_exact(d)
            for alternative, p in (("less", test.p_less), ("greater", test.p_greater), ("two-sided", test.p_two_sided)):
                assert p == pytest.approx(scipy_stats.wilcoxon(d, alternative=alternative, method="exact").pvalue, abs=1e-12)
    # |d| = 1, 1, 2 (mid-ranks 1.5, 1.5, 3), all negative: W+ = 0; of the 8 sign patterns only all-minus has W+ = 0
    tied = signed_rank_exact([-1.0, -1.0, -2.0, 0.0])  # the zero is dropped
    assert tied.p_less == pytest.approx(1 / 8) and tied.p_two_sided == pytest.approx(2 / 8) and tied.arrangements == 8


def test_one_sample_comparison_says_so_in_words():
    c = compare_with_value("llm", [0.50, 0.51, 0.52, 0.53, 0.54], "knapsack", 0.60, "final KL")
    assert c.kind == "one-sample" and c.p_floor == pytest.approx(0.0625)
    assert c.sentence.startswith("One-sample: arm llm's 5 values against the single value 0.6 of knapsack")


def test_holm_adjusts_step_down():
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4 * 0.01, max(0.04, 3 * 0.03), max(0.09, 2 * 0.04), 0.5
    assert holm([0.01, 0.04, 0.03, None, 0.5]) == pytest.approx([0.04, 0.09, 0.09, None, 0.5])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # never below an adjusted p of a smaller raw p
    significant = adjust_family([compare_arms("a", [1.0, 2, 3, 4, 5, 6], "b", [7.0, 8, 9, 10, 11, 12], "KL")])
    assert significant[0].p_holm == pytest.approx(significant[0].p_two_sided) and "significant across the family" in significant[0].sentence
    two = adjust_family([compare_arms("a", [1.0, 2, 3, 4, 5], "b", [6.0, 7, 8, 9, 10], "KL")] * 10)
    assert two[0].p_holm == pytest.approx(10 * 2 / 252) and "not significant across the family" in two[0].sentence
